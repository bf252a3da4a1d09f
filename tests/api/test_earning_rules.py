"""Earning rules over HTTP: versions that never change the past, and quotes by the rules in force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from service.domain.clock import ManualClock
from tests.conftest import ProgramFixture

RULES = {
    "currency": "EUR",
    "points_per_unit": 1,
    "unit_minor": 100,
    "category_multipliers": {"coffee": 20000},
    "campaigns": [
        {"name": "autumn", "starts_on": "2026-10-01", "ends_on": "2026-10-31", "bonus_points": 50},
    ],
}


def order(placed_at: datetime, *lines: tuple[str, int, int]) -> dict[str, object]:
    return {
        "currency": "EUR",
        "placed_at": placed_at.isoformat(),
        "lines": [
            {"sku": f"sku-{n}", "category": c, "unit_price": p, "quantity": q} for n, (c, p, q) in enumerate(lines)
        ],
    }


async def test_versions_apply_from_their_instant(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    admin = program.auth("admin")
    clock.set(datetime(2026, 10, 1, 8, tzinfo=UTC))
    first = await client.post("/v1/earning/rules", json=RULES, headers={**admin, "Idempotency-Key": "r1"})
    assert first.status_code == 201, first.text
    assert first.json()["rules"]["version"] == 1
    replay = await client.post("/v1/earning/rules", json=RULES, headers={**admin, "Idempotency-Key": "r1"})
    assert replay.json() == first.json()

    later = datetime(2026, 10, 31, 23, tzinfo=UTC)  # midnight starting 1 November in Amsterdam
    second = await client.post(
        "/v1/earning/rules",
        json={**RULES, "points_per_unit": 2, "effective_from": later.isoformat()},
        headers={**admin, "Idempotency-Key": "r2"},
    )
    assert second.status_code == 201, second.text
    assert second.json()["rules"]["version"] == 2
    past = await client.post(
        "/v1/earning/rules",
        json={**RULES, "effective_from": "2026-09-01T00:00:00+00:00"},
        headers={**admin, "Idempotency-Key": "r3"},
    )
    assert past.status_code == 422
    assert past.json()["field"] == "effective_from"

    checkout = program.auth("checkout")
    # 23:30 in Amsterdam on 31 October (winter time, UTC+1) is still inside the campaign and under version 1
    late_october = datetime(2026, 10, 31, 22, 30, tzinfo=UTC)
    quoted = await client.post(
        "/v1/earning/quote",
        json={"order": order(late_october, ("coffee", 1250, 2), ("tea", 399, 1))},
        headers=checkout,
    )
    assert quoted.status_code == 200, quoted.text
    body = quoted.json()
    assert body["rules_version"] == 1
    # base floor(28.99) = 28; coffee doubles its 25: +25; bonus 50
    assert body["total"] == 28 + 25 + 50
    assert sum(part["points"] for part in body["breakdown"]) == body["total"]

    november = late_october + timedelta(hours=1)  # 00:30 on 1 November locally: version 2, no campaign
    quoted = await client.post(
        "/v1/earning/quote", json={"order": order(november, ("coffee", 1250, 2), ("tea", 399, 1))}, headers=checkout
    )
    assert quoted.json()["rules_version"] == 2
    assert quoted.json()["total"] == 107  # floor(2 x 28.99 base + 2 x 25 coffee bonus = 107.98)

    versions = (await client.get("/v1/earning/rules", headers=program.auth("finance"))).json()
    assert [v["rules"]["version"] for v in versions] == [2, 1]


async def test_quote_without_rules_and_bad_orders(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    checkout = program.auth("checkout")
    none_yet = await client.post(
        "/v1/earning/quote", json={"order": order(datetime.now(UTC), ("coffee", 100, 1))}, headers=checkout
    )
    assert none_yet.status_code == 404
    assert none_yet.json()["field"] == "order.placed_at"
    bad = await client.post(
        "/v1/earning/quote",
        json={
            "order": {
                **order(datetime.now(UTC), ("coffee", 100, 1)),
                "lines": [{"sku": "x", "category": "c", "unit_price": 1, "quantity": 0}],
            }
        },
        headers=checkout,
    )
    assert bad.status_code == 422
    assert "quantity" in bad.json()["field"]
    denied = await client.post("/v1/earning/rules", json=RULES, headers={**checkout, "Idempotency-Key": "k"})
    assert denied.status_code == 403


async def test_a_quote_refused_by_the_rules_names_the_field_of_its_order(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    """The quote's body is {"order": {...}}: a currency the rules do not earn on, or a line's
    discount above its value, is a 422 naming `order.currency` or `order.lines[i].discount`
    (as a missing version names `order.placed_at`), not a field the body does not have."""
    clock.set(datetime(2026, 10, 1, 8, tzinfo=UTC))
    created = await client.post(
        "/v1/earning/rules", json=RULES, headers={**program.auth("admin"), "Idempotency-Key": "r"}
    )
    assert created.status_code == 201, created.text
    checkout = program.auth("checkout")
    placed = datetime(2026, 10, 2, 8, tzinfo=UTC)
    dollars = await client.post(
        "/v1/earning/quote", json={"order": {**order(placed, ("tea", 100, 1)), "currency": "USD"}}, headers=checkout
    )
    assert dollars.status_code == 422, dollars.text
    assert dollars.json()["field"] == "order.currency"
    line = {"sku": "x", "category": "tea", "unit_price": 100, "quantity": 1, "discount": 101}
    too_much = await client.post(
        "/v1/earning/quote", json={"order": {**order(placed), "lines": [line]}}, headers=checkout
    )
    assert too_much.status_code == 422, too_much.text
    assert too_much.json()["field"] == "order.lines[0].discount"
