"""Earning rules over HTTP: versions that never change the past, and quotes by the rules in force."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from service.domain.clock import ManualClock
from tests.api.orders_support import PLACED, order_body
from tests.api.orders_support import RULES as ORDER_RULES
from tests.api.support import assert_names_field, assert_problem
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


def _campaign(n: int, **changes: object) -> dict[str, object]:
    return {"name": f"c{n}", "starts_on": "2026-10-01", "ends_on": "2026-10-31", "bonus_points": 1} | changes


# (field named, a rule set at its limit, the same one over it): docs/api.md
RULE_LIMITS: list[tuple[str, dict[str, object], dict[str, object]]] = [
    ("campaigns", {"campaigns": [_campaign(n) for n in range(100)]}, {"campaigns": [_campaign(n) for n in range(101)]}),
    (
        "category_multipliers",
        {"category_multipliers": {f"k{n}": 20000 for n in range(1000)}},
        {"category_multipliers": {f"k{n}": 20000 for n in range(1001)}},
    ),
    (
        "campaigns[0].categories",
        {"campaigns": [_campaign(0, categories=[f"k{n}" for n in range(100)])]},
        {"campaigns": [_campaign(0, categories=[f"k{n}" for n in range(101)])]},
    ),
    (
        "category_multipliers[...]",  # msgspec names no key of a map
        {"category_multipliers": {"coffee": 1_000_000}},
        {"category_multipliers": {"coffee": 1_000_001}},
    ),
    (
        "campaigns[0].multiplier_bp",
        {"campaigns": [_campaign(0, bonus_points=None, multiplier_bp=1_000_000)]},
        {"campaigns": [_campaign(0, bonus_points=None, multiplier_bp=1_000_001)]},
    ),
    (
        "campaigns[0].bonus_points",
        {"campaigns": [_campaign(0, bonus_points=10**12)]},
        {"campaigns": [_campaign(0, bonus_points=10**12 + 1)]},
    ),
    (
        "campaigns[0].customer_cap",
        {"campaigns": [_campaign(0, customer_cap=10**12)]},
        {"campaigns": [_campaign(0, customer_cap=10**12 + 1)]},
    ),
    ("points_per_unit", {"points_per_unit": 10**6}, {"points_per_unit": 10**6 + 1}),
    ("unit_minor", {"unit_minor": 10**15}, {"unit_minor": 10**15 + 1}),
    ("minimum_order_minor", {"minimum_order_minor": 10**15}, {"minimum_order_minor": 10**15 + 1}),
    ("order_cap", {"order_cap": 10**12}, {"order_cap": 10**12 + 1}),
]


@pytest.mark.parametrize(("field", "at_limit", "over"), RULE_LIMITS, ids=[field for field, _, _ in RULE_LIMITS])
async def test_a_rules_version_is_bounded(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    clock: ManualClock,
    field: str,
    at_limit: dict[str, object],
    over: dict[str, object],
) -> None:
    """A version is read for every order and each campaign is a pass over its lines: its lists
    and numbers are bounded. Over a bound is a 422 naming the field, and publishes nothing."""
    clock.set(datetime(2026, 10, 1, 8, tzinfo=UTC))
    admin = program.auth("admin")
    refused = await client.post("/v1/earning/rules", json={**RULES, **over}, headers={**admin, "Idempotency-Key": "o"})
    assert_names_field(assert_problem(refused, 422, "invalid-input"), field)
    assert (await client.get("/v1/earning/rules", headers=admin)).json() == []
    accepted = await client.post(
        "/v1/earning/rules", json={**RULES, **at_limit}, headers={**admin, "Idempotency-Key": "a"}
    )
    assert accepted.status_code == 201, accepted.text
    quoted = await client.post(
        "/v1/earning/quote",
        json={"order": order(datetime(2026, 10, 2, 8, tzinfo=UTC), ("coffee", 1250, 2))},
        headers=program.auth("checkout"),
    )
    assert quoted.status_code == 200, quoted.text


async def test_a_quote_has_at_most_500_lines_as_an_order(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    """The quote's order is an order: 1 to 500 lines (docs/api.md), 422 naming `order.lines` over it."""
    clock.set(datetime(2026, 10, 1, 8, tzinfo=UTC))
    created = await client.post(
        "/v1/earning/rules", json=RULES, headers={**program.auth("admin"), "Idempotency-Key": "r"}
    )
    assert created.status_code == 201, created.text
    checkout = program.auth("checkout")
    placed = datetime(2026, 10, 2, 8, tzinfo=UTC)
    at_limit = await client.post(
        "/v1/earning/quote", json={"order": order(placed, *[("tea", 100, 1)] * 500)}, headers=checkout
    )
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["total"] == 500 + 50  # a point per euro, and the autumn bonus
    over = await client.post(
        "/v1/earning/quote", json={"order": order(placed, *[("tea", 100, 1)] * 501)}, headers=checkout
    )
    assert_names_field(assert_problem(over, 422, "invalid-input"), "order.lines")


async def test_a_version_stored_before_the_bounds_still_applies(
    client: httpx.AsyncClient, owner_connection: asyncpg.Connection, program: ProgramFixture
) -> None:
    """The bounds are the publishing request's: a version already stored past them (published
    before they existed) is read as it is, so its program's orders and quotes go on."""
    effective_from = datetime(2026, 10, 1, 8, tzinfo=UTC)
    rules = {
        **RULES,
        "version": 1,
        "effective_from": effective_from.isoformat(),
        "campaigns": [_campaign(n, categories=[f"k{i}" for i in range(101)]) for n in range(101)],
    }
    await owner_connection.execute(
        "INSERT INTO earning_rule_sets (program_id, version, effective_from, rules, published_by)"
        " VALUES ($1, 1, $2, $3, 'test')",
        program.id,
        effective_from,
        json.dumps(rules),
    )
    quoted = await client.post(
        "/v1/earning/quote",
        json={"order": order(datetime(2026, 10, 2, 8, tzinfo=UTC), ("k0", 1000, 1))},
        headers=program.auth("checkout"),
    )
    assert quoted.status_code == 200, quoted.text
    assert quoted.json()["total"] == 10 + 101  # a point per euro, and a point from each campaign
    listed = await client.get("/v1/earning/rules", headers=program.auth("admin"))
    assert len(listed.json()[0]["rules"]["campaigns"]) == 101


async def test_a_version_never_starts_before_an_order_placed_ahead_of_the_clock(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, clock: ManualClock
) -> None:
    # a till may run up to 5 minutes ahead: its order earned under the version in force when
    # it arrived, so a later version may not start at or before its placed_at (the order's
    # quote would then name another version than its award)
    till, admin = program.auth("checkout"), program.auth("admin")
    now = PLACED + timedelta(minutes=1)
    clock.set(now)
    ahead = now + timedelta(minutes=4)
    body = order_body(ann, "AHEAD-1", placed_at=ahead.isoformat())
    placed = await client.post(f"/v1/shops/{program.shop_id}/orders", json=body, headers=till)
    assert placed.status_code == 201, placed.text
    assert placed.json()["rules_version"] == 1
    for n, starts in enumerate([None, now + timedelta(minutes=1), ahead]):
        draft: dict[str, object] = {**ORDER_RULES, "points_per_unit": 5}
        if starts is not None:
            draft["effective_from"] = starts.isoformat()
        refused = await client.post("/v1/earning/rules", json=draft, headers={**admin, "Idempotency-Key": f"early-{n}"})
        assert_names_field(assert_problem(refused, 422, "invalid-input"), "effective_from")
    quoted = await client.post(
        "/v1/earning/quote", json={"order": {k: body[k] for k in ("currency", "placed_at", "lines")}}, headers=till
    )
    assert (quoted.json()["rules_version"], quoted.json()["total"]) == (1, placed.json()["points"])
    later = {**ORDER_RULES, "points_per_unit": 5, "effective_from": (ahead + timedelta(microseconds=1)).isoformat()}
    published = await client.post("/v1/earning/rules", json=later, headers={**admin, "Idempotency-Key": "later"})
    assert published.status_code == 201, published.text
