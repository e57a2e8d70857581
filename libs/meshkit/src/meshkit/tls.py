"""Mutual TLS inside the mesh: each workload's certificate, and who may call a backend.

Every workload has a SPIFFE-style identity (``spiffe://mesh.local/order``) in the URI SAN of a
certificate signed by the mesh's local CA (:mod:`meshctl.pki` issues them). Backends serve only
mTLS and answer only Envoy's identity: Envoy's RBAC filter decides who may move money or stock,
so a caller that could reach a backend directly would bypass it. This is Istio's
``PeerAuthentication: STRICT`` with the authorization done at the sidecar.

``MESH_MTLS=0`` turns it off for plaintext debugging (the README says what that exposes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshkit._handlers import rewrap
from meshkit.settings import SettingsError, flag, path

TRUST_DOMAIN = "mesh.local"
#: Envoy is the one peer a backend answers (it terminates every caller's mTLS and applies RBAC).
ENVOY = "envoy"
CA_FILE = "ca.pem"

MTLS = flag(
    "MESH_MTLS",
    True,
    doc="mTLS on every hop behind the edge and RBAC on the internal listener; 0 is plaintext",
)
CERTS_DIR = path(
    "MESH_CERTS_DIR", "var/certs", doc="where a workload reads the mesh CA and its certificate"
)


def spiffe_id(workload: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{workload}"


def cert_file(workload: str) -> str:
    return f"{workload}.pem"


def key_file(workload: str) -> str:
    return f"{workload}-key.pem"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadTls:
    """One workload's certificate chain, private key and the CA it trusts (PEM bytes)."""

    workload: str
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, directory: Path, workload: str) -> WorkloadTls:
        """Reads ``ca.pem``, ``<workload>.pem`` and ``<workload>-key.pem`` from ``directory``."""
        files = {"ca": CA_FILE, "cert": cert_file(workload), "key": key_file(workload)}
        pem: dict[str, bytes] = {}
        for name, file in files.items():
            try:
                pem[name] = (directory / file).read_bytes()
            except OSError as error:
                raise SettingsError(
                    f"MESH_CERTS_DIR={directory}: cannot read {file} ({error.strerror}); "
                    "`make up` creates the mesh's certificates, MESH_MTLS=0 turns mTLS off"
                ) from None
        return cls(workload=workload, **pem)

    @property
    def identity(self) -> str:
        return spiffe_id(self.workload)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve only callers with a certificate signed by the mesh CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Call as this workload, trusting only servers the mesh CA signed."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def mtls_enabled(env: Mapping[str, str] = os.environ) -> bool:
    return MTLS.read(env)


def certs_dir(env: Mapping[str, str] = os.environ) -> Path:
    return CERTS_DIR.read(env)


def workload_tls(workload: str, env: Mapping[str, str] = os.environ) -> WorkloadTls | None:
    """This workload's mTLS material per MESH_MTLS / MESH_CERTS_DIR; None when mTLS is off."""
    if not mtls_enabled(env):
        return None
    return WorkloadTls.load(certs_dir(env), workload)


def peer_identity(context: grpc.ServicerContext) -> str:
    """The caller's SPIFFE id ("" on a plaintext connection, or a certificate without one).

    grpc-core names an mTLS peer by its subject alternative names; ``peer_identities()`` reads
    just those (``auth_context()`` copies every property, the PEM certificate included, and
    costs about 15x more per call).
    """
    for identity in context.peer_identities() or ():
        if identity.startswith(b"spiffe://"):
            return str(identity.decode(errors="replace"))
    return ""


Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


class PeerIdentityInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Answers PERMISSION_DENIED to a caller whose certificate names none of ``allowed``.

    The TLS handshake already proved the certificate is the mesh CA's; this decides which of
    the mesh's workloads may talk to this server at all.
    """

    def __init__(self, allowed: Collection[str]) -> None:
        self._allowed = frozenset(allowed)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        allowed = self._allowed

        def deny(_request: object, context: grpc.ServicerContext) -> None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "this backend answers only the mesh's Envoy (call through the edge)",
            )

        def wrap(behaviour: Callable[..., object]) -> Callable[..., object]:
            def checked(request: object, context: grpc.ServicerContext) -> object:
                if peer_identity(context) not in allowed:
                    deny(request, context)
                return behaviour(request, context)

            return checked

        return rewrap(handler, wrap)
