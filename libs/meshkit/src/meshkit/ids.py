"""Identifier formats shared by the services and their validators."""

from __future__ import annotations

import re
import uuid

#: AIP-155 request ids and customer ids: printable, no spaces, bounded.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CUSTOMER_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SKU_RE = re.compile(r"^[A-Z0-9-]{1,32}$")


def new_id(prefix: str) -> str:
    """``<prefix>_<32 hex>``: unique without coordination, safe in URLs and logs."""
    return f"{prefix}_{uuid.uuid4().hex}"


def id_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{prefix}_[0-9a-f]{{32}}$")
