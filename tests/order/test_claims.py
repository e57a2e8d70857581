"""request_id claims against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from meshkit.redis_client import connect
from order_service.claims import Claim, Claims, claim_key


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return connect(redis_url)


def test_a_claim_is_won_once_and_withdrawn_only_by_its_owner(client: redis.Redis) -> None:
    claims = Claims(client)
    mine, theirs = Claim("ord_a", "f1"), Claim("ord_b", "f2")
    assert claims.claim("req-1", mine) is None
    assert claims.claim("req-1", theirs) == mine
    assert 0 < client.ttl(claim_key("req-1")) <= 86_400
    assert not claims.withdraw("req-1", theirs)
    assert claims.holder("req-1") == mine
    assert claims.withdraw("req-1", mine)
    assert claims.holder("req-1") is None
