"""`make logs` for people: a JSON log line as one short line, any other line as it is.

The services write meshkit.logs' JSON lines and Envoy its JSON access log; a person reading
a tail wants the time, who, the level and the message, then the ids that lead to the trace
and the order::

    12:00:00.123 order INFO ord_1...: FAILED: payment declined trace_id=117a... order_id=ord_1...
    12:00:00.125 envoy edge POST /mesh.order.v1.OrderService/CreateOrder cluster=order
        grpc_status=0 8ms trace_id=117a...    (one line)

A server fault's stack follows its line, indented, since that is what the reader came for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from meshkit import logs

#: Shown after a service's message, in this order, when the line has them.
SERVICE_IDS = (logs.TRACE_ID, logs.ORDER_ID, logs.REQUEST_ID)
#: Envoy's access log fields (deploy/envoy/envoy.yaml), shown as ``name=value``.
ACCESS_FIELDS = {"upstream_cluster": "cluster", "grpc_status": "grpc_status"}
_NONE = (None, "", "-")


def human(line: str) -> str:
    """``line`` as a person reads it; unchanged when it is not one of the mesh's JSON lines."""
    if not line.startswith("{"):
        return line
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    if logs.MESSAGE in record:
        return _service_line(record)
    if "path" in record:
        return _access_line(record)
    return line


def human_lines(text: str) -> str:
    return "\n".join(human(line) for line in text.splitlines())


def _service_line(record: Mapping[str, Any]) -> str:
    who = str(record.get(logs.SERVICE, "-"))
    if record.get(logs.SERVICE_VERSION) not in _NONE:
        who += f"/{record[logs.SERVICE_VERSION]}"
    words = [_time(record), who, str(record.get(logs.LEVEL, "-")), str(record[logs.MESSAGE])]
    words += _ids(record, {name: name for name in SERVICE_IDS})
    error = record.get(logs.EXCEPTION)
    if not isinstance(error, dict):
        return " ".join(words)
    words.append(f"exception={error.get('type')}: {error.get('message')}")
    stack = str(error.get("stack", "")).splitlines()
    return "\n".join([" ".join(words), *(f"    {frame}" for frame in stack)])


def _access_line(record: Mapping[str, Any]) -> str:
    words = [
        _time(record),
        str(record.get(logs.SERVICE, "envoy")),
        str(record.get("listener", "-")),
        f"{record.get('method', '-')} {record['path']}",
    ]
    words += _ids(record, ACCESS_FIELDS)
    if record.get("response_flags") not in _NONE:
        words.append(f"flags={record['response_flags']}")
    if record.get("duration_ms") not in _NONE:
        words.append(f"{record['duration_ms']}ms")
    words += _ids(record, {logs.TRACE_ID: logs.TRACE_ID})
    return " ".join(words)


def _time(record: Mapping[str, Any]) -> str:
    """The time of day (``12:00:00.123``): a tail spans minutes (LOGS_FORMAT=json has it all)."""
    stamp = str(record.get(logs.TIMESTAMP, "-"))
    return stamp.partition("T")[2].removesuffix("Z") or stamp


def _ids(record: Mapping[str, Any], shown: Mapping[str, str]) -> Iterable[str]:
    return (
        f"{label}={record[name]}" for name, label in shown.items() if record.get(name) not in _NONE
    )
