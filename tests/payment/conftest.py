"""Payment servers started in-process on port 0, each on a temporary DATA_DIR."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.common.v1 import money_pb2
from mesh.payment.v1 import payment_pb2, payment_pb2_grpc
from meshkit.ids import new_id
from meshkit.server import RunningServer
from payment_service.config import Settings
from payment_service.server import serve


@dataclass
class Payments:
    """A running payment server and a stub connected to it."""

    running: RunningServer
    stub: payment_pb2_grpc.PaymentServiceStub
    settings: Settings


def charge_request(**overrides: Any) -> payment_pb2.ChargeRequest:
    """A valid ChargeRequest (fresh order and request ids) with ``overrides`` applied."""
    fields: dict[str, Any] = {
        "order_id": new_id("ord"),
        "customer_id": "cust-1",
        "amount": money_pb2.Money(currency_code="USD", amount_minor=1999),
        "request_id": "charge-" + new_id("ord"),
    }
    fields.update(overrides)
    return payment_pb2.ChargeRequest(**fields)


def row_count(data_dir: Path, where: str = "1", *args: object) -> int:
    """Rows in the shared payments table, read straight from the file."""
    with sqlite3.connect(data_dir / "payment.db") as conn:
        sql = f"SELECT count(*) FROM payments WHERE {where}"  # noqa: S608  # fixed test SQL
        (count,) = conn.execute(sql, args).fetchone()
    conn.close()
    return int(count)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def base_settings(data_dir: Path, tmp_path: Path) -> Settings:
    # Its own faults dir: the default is the checkout's, where `make up`'s servers read theirs.
    return Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        data_dir=data_dir,
        faults_dir=tmp_path / "faults",
    )


@pytest.fixture
def start(base_settings: Settings) -> Iterator[Callable[..., Payments]]:
    """Starts a server with settings overrides (and serve() keywords); stops all at teardown."""
    started: list[tuple[RunningServer, grpc.Channel]] = []

    def _start(*, rng: Any = None, sleep: Any = None, **overrides: Any) -> Payments:
        settings = replace(base_settings, **overrides)
        kwargs: dict[str, Any] = {"rng": rng}
        if sleep is not None:
            kwargs["sleep"] = sleep
        running = serve(settings, **kwargs)
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        started.append((running, channel))
        return Payments(running, payment_pb2_grpc.PaymentServiceStub(channel), settings)

    yield _start
    for running, channel in started:
        channel.close()
        running.stop()


@pytest.fixture
def payments(start: Callable[..., Payments]) -> Payments:
    """A v1 server with no faults."""
    return start()
