"""Orders over HTTP: award, replay, refunds, the return settings, and bad input that changes nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from service.domain.clock import ManualClock
from service.usecases import orders
from tests.api.orders_support import PLACED, RULES, order_body
from tests.api.support import assert_names_field, assert_problem
from tests.conftest import ProgramFixture


async def _journal_size(connection: asyncpg.Connection, program_id: str) -> tuple[int, int, int]:
    row = await connection.fetchrow(
        "SELECT (SELECT count(*) FROM entries WHERE program_id = $1) AS entries,"
        " (SELECT count(*) FROM orders WHERE program_id = $1) AS orders,"
        " (SELECT count(*) FROM refunds WHERE program_id = $1) AS refunds",
        program_id,
    )
    assert row is not None
    return row["entries"], row["orders"], row["refunds"]


async def test_an_order_is_awarded_once_and_refunded_by_its_refund_id(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str
) -> None:
    till = program.auth("checkout")
    path = f"/v1/shops/{program.shop_id}/orders"
    placed = await client.post(path, json=order_body(ann), headers=till)
    assert placed.status_code == 201, placed.text
    body = placed.json()
    # 700 coffee at x2 -> 14, 400 bakery -> 4: 18 points, explained per rule
    assert body["points"] == 18 and body["status"] == "pending" and body["net"] == 1100
    assert [(c["rule"], c["points"]) for c in body["breakdown"]] == [("base", 11), ("category:coffee", 7)]
    assert body["available_from"] == "2026-05-18T22:00:00Z"  # 19 May 00:00 in Amsterdam
    assert (await client.post(path, json=order_body(ann), headers=till)).json() == body
    other = await client.post(path, json=order_body(ann, currency="USD"), headers=till)
    assert_problem(other, 409, "idempotency-key-reused")

    balance = await client.get(f"/v1/customers/{ann}/balance", headers=till)
    assert (balance.json()["pending"], balance.json()["available"]) == (18, 0)

    refund_path = f"{path}/W-1/refunds"
    refund = await client.post(
        refund_path, json={"refund_id": "R-1", "lines": [{"line": 0, "quantity": 1}]}, headers=till
    )
    assert refund.status_code == 201, refund.text
    assert (refund.json()["points"], refund.json()["from_pending"]) == (5, 5)  # floor(18 * 350 / 1100)
    assert (
        await client.post(refund_path, json={"refund_id": "R-1", "lines": [{"line": 0, "quantity": 1}]}, headers=till)
    ).json() == refund.json()
    over = await client.post(refund_path, json={"refund_id": "R-2", "amount": 751}, headers=till)
    assert_names_field(assert_problem(over, 422, "invalid-input"), "amount")

    view = await client.get(f"{path}/W-1", headers=program.auth("finance"))
    assert view.status_code == 200
    assert (view.json()["refunded_net"], view.json()["clawed_back"]) == (350, 5)
    assert [r["refund_id"] for r in view.json()["refunds"]] == ["R-1"]
    missing = await client.get(f"{path}/W-404", headers=till)
    assert_problem(missing, 404)


async def test_return_settings_are_read_and_changed_by_admins(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    current = await client.get("/v1/program/returns", headers=program.auth("checkout"))
    assert current.json() == {"window_days": 14, "policy": "within_balance"}
    denied = await client.put(
        "/v1/program/returns", json={"window_days": 30, "policy": "allow_negative"}, headers=program.auth("checkout")
    )
    assert_problem(denied, 403)
    changed = await client.put(
        "/v1/program/returns", json={"window_days": 30, "policy": "allow_negative"}, headers=program.auth("admin")
    )
    assert changed.json() == {"window_days": 30, "policy": "allow_negative"}
    bad = await client.put(
        "/v1/program/returns", json={"window_days": 400, "policy": "allow_negative"}, headers=program.auth("admin")
    )
    assert_names_field(assert_problem(bad, 422), "window_days")


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"lines": []}, 422, "lines"),
        ({"lines": [{"sku": "x", "category": "c", "unit_price": -1, "quantity": 1}]}, 422, "lines[0].unit_price"),
        (
            {"lines": [{"sku": "x", "category": "c", "unit_price": 100, "quantity": 1, "discount": 101}]},
            422,
            "lines[0].discount",
        ),
        ({"currency": "eur"}, 422, "currency"),
        ({"currency": "USD"}, 422, "currency"),
        ({"placed_at": "2026-05-04T09:30:00"}, 422, "placed_at"),
        # named as the order's body has it (`placed_at`), not as the quote's (`order.placed_at`)
        ({"placed_at": "2099-01-01T00:00:00Z"}, 422, "placed_at"),
        ({"placed_at": "2020-01-01T00:00:00Z"}, 404, "placed_at"),  # no rules in force then
        ({"customer_id": "cus_unknown"}, 404, "customer_id"),
        ({"order_id": ""}, 422, "order_id"),
        ({"points": 5}, 422, "points"),
    ],
)
async def test_a_bad_order_names_its_field_and_changes_nothing(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    owner_connection: asyncpg.Connection,
    change: dict[str, Any],
    status: int,
    field: str,
) -> None:
    before = await _journal_size(owner_connection, program.id)
    response = await client.post(
        f"/v1/shops/{program.shop_id}/orders", json=order_body(ann) | change, headers=program.auth("checkout")
    )
    body = assert_problem(response, status)
    assert body.get("field") == field, body
    assert await _journal_size(owner_connection, program.id) == before


async def test_orders_need_a_checkout_or_admin_key_and_a_shop_of_the_program(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture, ann: str
) -> None:
    path = f"/v1/shops/{program.shop_id}/orders"
    assert_problem(await client.post(path, json=order_body(ann)), 401)
    assert_problem(await client.post(path, json=order_body(ann), headers=program.auth("finance")), 403)
    foreign = await client.post(path, json=order_body(ann), headers=other_program.auth("checkout"))
    assert assert_problem(foreign, 404)["field"] == "shop_id"


async def test_fifty_concurrent_sends_of_one_order_award_it_once(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, owner_connection: asyncpg.Connection
) -> None:
    path = f"/v1/shops/{program.shop_id}/orders"
    responses = await asyncio.gather(
        *(client.post(path, json=order_body(ann, "C-1"), headers=program.auth("checkout")) for _ in range(50))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["award_entry_id"] for r in responses}) == 1
    assert await _journal_size(owner_connection, program.id) == (1, 1, 0)


async def test_release_job_makes_points_available_in_the_program_time_zone(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, clock: ManualClock
) -> None:
    placed = await client.post(
        f"/v1/shops/{program.shop_id}/orders", json=order_body(ann), headers=program.auth("checkout")
    )
    assert placed.status_code == 201
    clock.set(datetime(2026, 5, 18, 21, 59, 59, tzinfo=UTC))
    assert await orders.release_due_orders(program.id, clock) == 0
    clock.set(datetime(2026, 5, 18, 22, 0, tzinfo=UTC))
    assert await orders.release_due_orders(program.id, clock) == 1
    balance = await client.get(f"/v1/customers/{ann}/balance", headers=program.auth("checkout"))
    assert (balance.json()["pending"], balance.json()["available"]) == (0, 18)


async def test_a_refund_before_its_order_is_not_remembered_and_ids_of_any_length_fit(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str
) -> None:
    till = program.auth("checkout")
    long_id = "L" * 200
    path = f"/v1/shops/{program.shop_id}/orders"
    early = await client.post(f"{path}/{long_id}/refunds", json={"refund_id": "R" * 200, "amount": 100}, headers=till)
    assert assert_problem(early, 404)["field"] == "order_id"
    placed = await client.post(path, json=order_body(ann, long_id), headers=till)
    assert placed.status_code == 201, placed.text
    late = await client.post(f"{path}/{long_id}/refunds", json={"refund_id": "R" * 200, "amount": 100}, headers=till)
    assert late.status_code == 201, late.text
    assert late.json()["points"] == 1  # floor(18 * 100 / 1100)


async def test_an_order_for_a_customer_enrolled_later_succeeds_when_sent_again(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str
) -> None:
    till = program.auth("checkout")
    path = f"/v1/shops/{program.shop_id}/orders"
    customer = "cus_not_yet"
    early = await client.post(path, json=order_body(customer, "E-1"), headers=till)
    assert assert_problem(early, 404)["field"] == "customer_id"
    # the same order id for the known customer is a fresh request, not a replay of the 404
    assert (await client.post(path, json=order_body(ann, "E-1"), headers=till)).status_code == 201


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"unit_price": 10**12 + 1}, "lines[0].unit_price"),
        ({"quantity": 10**6 + 1}, "lines[0].quantity"),
        ({"unit_price": 10**12, "quantity": 10**6}, "lines"),  # 10^18: more than an order may be worth
        ({"level": 10**6 + 1}, "lines[0].level"),  # stored, it once broke the program's sell-rate metric
        ({"level": -1}, "lines[0].level"),
    ],
)
async def test_amounts_beyond_the_bounds_are_refused_by_name(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, line: dict[str, int], field: str
) -> None:
    body = order_body(ann, "BIG") | {"lines": [{"sku": "x", "category": "c", "unit_price": 1, "quantity": 1} | line]}
    response = await client.post(f"/v1/shops/{program.shop_id}/orders", json=body, headers=program.auth("checkout"))
    body = assert_problem(response, 422)
    assert body["field"] == field, body


async def test_an_order_earning_more_than_the_ledger_holds_is_refused_not_a_500(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, owner_connection: asyncpg.Connection
) -> None:
    # in force from now (a minute after PLACED): 10^6 points per minor unit of 10^15, 10^21
    # points, more than a 64-bit amount holds (it was a 500)
    generous = RULES | {"points_per_unit": 1_000_000, "unit_minor": 1}
    published = await client.post(
        "/v1/earning/rules", json=generous, headers={**program.auth("admin"), "Idempotency-Key": "generous"}
    )
    assert published.status_code == 201, published.text
    before = await _journal_size(owner_connection, program.id)
    line = {"sku": "gold", "category": "bullion", "unit_price": 10**12, "quantity": 1000}
    response = await client.post(
        f"/v1/shops/{program.shop_id}/orders",
        json=order_body(ann, "BIG-1", lines=[line], placed_at=(PLACED + timedelta(minutes=1)).isoformat()),
        headers=program.auth("checkout"),
    )
    assert assert_problem(response, 422, "invalid-input")["field"] == "lines"
    assert await _journal_size(owner_connection, program.id) == before
