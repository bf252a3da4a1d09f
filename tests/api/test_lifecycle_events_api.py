"""Lifecycle events over HTTP: every write that tells a CRM something emits its events exactly
once, however often the request is retried, with the payload docs/events.md documents."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

from service.domain.clock import ManualClock
from service.usecases.dispatch import publish_events
from tests.api.orders_support import order_body
from tests.api.test_tiers_api import LADDER
from tests.conftest import ProgramFixture


async def _feed(client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock) -> list[dict[str, Any]]:
    await publish_events(program.id, clock)
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500} | ({"after": cursor} if cursor else {})
        page = await client.get("/v1/events", params=params, headers=program.auth("admin"))
        assert page.status_code == 200, page.text
        events += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if not page.json()["items"]:
            return events


async def test_retried_writes_emit_their_events_once(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, clock: ManualClock
) -> None:
    admin, till = program.auth("admin"), program.auth("checkout")
    assert (await client.post("/v1/customers", json={"external_id": "ann"}, headers=till)).status_code == 200
    ladder = await client.put("/v1/tiers", json=LADDER, headers={**admin, "Idempotency-Key": "ladder"})
    assert ladder.status_code == 200, ladder.text
    orders = f"/v1/shops/{program.shop_id}/orders"
    for order_id in ("W-1", "W-1", "W-2", "W-2"):
        placed = await client.post(orders, json=order_body(ann, order_id), headers=till)
        assert placed.status_code == 201, placed.text
    grant = {"customer_id": ann, "amount": 500, "reason": "welcome"}
    for _ in range(2):
        granted = await client.post("/v1/ledger/adjustments", json=grant, headers={**admin, "Idempotency-Key": "g"})
        assert granted.status_code == 201, granted.text
    bulk = {"items": [{"type": "grant", "key": "g", **grant}]}
    assert (await client.post("/v1/bulk/awards", json=bulk, headers=admin)).json()["succeeded"] == 1
    hold = await client.post(
        "/v1/holds", json={"customer_id": ann, "amount": 100}, headers={**till, "Idempotency-Key": "h"}
    )
    assert hold.status_code == 201, hold.text
    for _ in range(2):
        captured = await client.post(
            f"/v1/holds/{hold.json()['id']}/capture", json={"amount": 60}, headers={**till, "Idempotency-Key": "c"}
        )
        assert captured.status_code == 200, captured.text
    for _ in range(2):
        granted_tier = await client.post(
            f"/v1/customers/{ann}/tier/grants",
            json={"tier_code": "insider", "days": 5, "reason": "vip"},
            headers={**admin, "Idempotency-Key": "tg"},
        )
        assert granted_tier.status_code == 201, granted_tier.text

    events = await _feed(client, program, clock)
    counts = Counter(event["type"] for event in events)
    assert counts == {
        "customer.enrolled": 1,
        "purchase.first": 1,
        "purchase.repeat": 1,
        "points.earned": 3,
        "points.redeemed": 1,
        "tier.upgraded": 1,
    }, counts
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    redeemed = next(event for event in events if event["type"] == "points.redeemed")
    assert redeemed["data"] == {
        "customer_id": ann,
        "points": 60,
        "hold_id": hold.json()["id"],
        "entry_id": captured.json()["resolve_entry_id"],
        "reference": None,
    }
