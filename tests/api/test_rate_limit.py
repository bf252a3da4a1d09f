"""Rate limits per credential: 429 with Retry-After past the burst, other credentials unaffected."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from service.app import create_app
from service.config import Settings
from service.domain.clock import ManualClock
from service.domain.rate_limit import RateLimited, RateLimiter, TokenBucket
from tests.api.support import assert_problem
from tests.conftest import ProgramFixture


async def test_past_the_burst_a_key_gets_429_and_others_do_not(
    settings: Settings, database: str, clock: ManualClock, program: ProgramFixture
) -> None:
    limited = create_app(msgspec.structs.replace(settings, rate_limit_per_s=0.5, rate_limit_burst=3), database, clock)
    transport = httpx.ASGITransport(app=limited)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            assert (await client.get("/v1/program", headers=program.auth("checkout"))).status_code == 200
        refused = await client.get("/v1/program", headers=program.auth("checkout"))
        assert_problem(refused, 429, "rate-limited")
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["retry_after_s"] == int(refused.headers["Retry-After"])
        assert (await client.get("/v1/program", headers=program.auth("admin"))).status_code == 200
        assert (await client.get("/health/live")).status_code == 200  # public routes are not limited


def test_a_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2, burst=2, now=0.0)
    assert bucket.take(0.0) == 0.0 and bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # one token back after half a second
    assert bucket.take(0.5) > 0


def test_the_limiter_forgets_the_least_recently_used_credentials() -> None:
    limiter = RateLimiter(rate=1, burst=1, capacity=2)
    limiter.check("a", 0.0)
    limiter.check("b", 0.0)
    limiter.check("c", 0.0)  # "a" is forgotten
    limiter.check("a", 0.0)
    with pytest.raises(RateLimited):
        limiter.check("c", 0.0)
