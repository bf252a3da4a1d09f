"""Fixtures of the HTTP tests."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from service.domain.clock import ManualClock
from tests.api.orders_support import PLACED, RULES
from tests.api.support import enrol_customer
from tests.conftest import ProgramFixture


@pytest.fixture
async def ann(client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock) -> str:
    """A customer, in a program whose rules are in force from a month before PLACED."""
    clock.set(PLACED - timedelta(days=30))
    published = await client.post(
        "/v1/earning/rules", json=RULES, headers={**program.auth("admin"), "Idempotency-Key": "rules"}
    )
    assert published.status_code == 201, published.text
    clock.set(PLACED + timedelta(minutes=1))
    return await enrol_customer(client, program)
