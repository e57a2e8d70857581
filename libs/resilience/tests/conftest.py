"""Compiles the test proto once per session and serves FaultService on port 0."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
PROTOS = HERE / "protos"


@pytest.fixture(scope="session")
def proto_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}",
            f"--grpc_python_out={out}", str(PROTOS / "resiliencetest/v1/fault.proto"),
        ],
        check=True,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    return out


@pytest.fixture(scope="session")
def pb(proto_dir: Path) -> ModuleType:
    return importlib.import_module("resiliencetest.v1.fault_pb2")


@pytest.fixture(scope="session")
def pb_grpc(proto_dir: Path) -> ModuleType:
    return importlib.import_module("resiliencetest.v1.fault_pb2_grpc")


@pytest.fixture
def fault_server(proto_dir: Path) -> Iterator[Any]:
    """A sync FaultService on 127.0.0.1:0; `.attempts[key]` counts what reached it."""
    from fault_service import FaultServicer, add_to_server

    servicer = FaultServicer()
    server = grpc.server(
        __import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=16)
    )
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    try:
        yield servicer
    finally:
        servicer.release_all()
        server.stop(None)
