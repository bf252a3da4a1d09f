"""A customer's history over HTTP: every kind of entry in words, newest first, paged."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.domain.clock import ManualClock
from service.usecases import ledger_jobs, orders
from tests.api.support import assert_names_field, assert_problem, enrol_customer
from tests.conftest import ProgramFixture

# 23:30 in Amsterdam on 31 March: the return window's days count from the local date, and
# the release date in words is the local one (15 April), not the UTC one (14 April).
PLACED = datetime(2026, 3, 31, 21, 30, tzinfo=UTC)


async def _post(client: httpx.AsyncClient, program: ProgramFixture, scope: str, path: str, key: str, body: Any) -> Any:
    response = await client.post(path, json=body, headers={**program.auth(scope), "Idempotency-Key": key})
    assert response.status_code in (200, 201), response.text
    return response.json()


async def _token(client: httpx.AsyncClient, program: ProgramFixture, customer_id: str) -> dict[str, str]:
    response = await client.post(f"/v1/customers/{customer_id}/tokens", headers=program.auth("checkout"))
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def _history(client: httpx.AsyncClient, path: str, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_an_orders_life_told_in_words_newest_first(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    clock.set(PLACED - timedelta(days=30))
    rules = {"currency": "EUR", "points_per_unit": 10, "unit_minor": 100}
    await _post(client, program, "admin", "/v1/earning/rules", "rules-1", rules)
    clock.set(PLACED)
    ann = await enrol_customer(client, program, "ann")
    bob = await enrol_customer(client, program, "bob")
    await _post(
        client, program, "admin", "/v1/ledger/adjustments", "bob", {"customer_id": bob, "amount": 9, "reason": "x"}
    )
    grant = {"customer_id": ann, "amount": 500, "reason": "welcome"}
    await _post(client, program, "admin", "/v1/ledger/adjustments", "welcome", grant)  # never expires
    policy = await client.put(
        "/v1/ledger/expiry-policy", json={"policy": "days", "period": 180}, headers=program.auth("admin")
    )
    assert policy.status_code == 200, policy.text
    order = {
        "order_id": "A-1001",
        "customer_id": ann,
        "currency": "EUR",
        "placed_at": PLACED.isoformat(),
        "lines": [
            {"sku": "espresso", "category": "coffee", "unit_price": 450, "quantity": 2},
            {"sku": "mug", "category": "homeware", "unit_price": 1600, "quantity": 1},
        ],
    }
    placed = await _post(client, program, "checkout", f"/v1/shops/{program.shop_id}/orders", "unused", order)
    assert placed["points"] == 250

    clock.set(datetime.fromisoformat(placed["available_from"]))
    assert await orders.release_due_orders(program.id, clock) == 1
    hold = await _post(client, program, "checkout", "/v1/holds", "h-1", {"customer_id": ann, "amount": 200})
    await _post(client, program, "checkout", f"/v1/holds/{hold['id']}/capture", "c-1", {"amount": 120})
    refund = {"refund_id": "R-1", "lines": [{"line": 0, "quantity": 1}]}
    await _post(client, program, "checkout", f"/v1/shops/{program.shop_id}/orders/A-1001/refunds", "unused", refund)
    second = {"customer_id": ann, "amount": 200, "reference": "basket 7"}
    voided = await _post(client, program, "checkout", "/v1/holds", "h-2", second)
    await _post(client, program, "checkout", f"/v1/holds/{voided['id']}/void", "v-2", None)
    deduct = {"customer_id": ann, "amount": -40, "reason": "correction"}
    deducted = await _post(client, program, "admin", "/v1/ledger/adjustments", "deduct", deduct)
    await _post(
        client,
        program,
        "admin",
        f"/v1/ledger/entries/{deducted['id']}/reversal",
        "undo",
        {"reason": "deducted by mistake"},
    )
    clock.set(datetime(2026, 10, 12, 22, 0, tzinfo=UTC))  # the order's lot expires (180 local days after release)
    assert await ledger_jobs.expire_points(program.id, clock) == 1

    page = await _history(client, f"/v1/customers/{ann}/history", program.auth("checkout"))
    assert page["next_cursor"] is None
    told = [(item["kind"], item["description"], item["changes"]) for item in page["items"]]
    assert told == [
        ("expiry", "85 points expired", {"available": -85}),
        ("reversal", "Correction of an earlier entry: deducted by mistake", {"available": 40}),
        ("adjustment.deduct", "40 points deducted: correction", {"available": -40}),
        ("hold.void", "Reservation released: 200 points back", {"available": 200, "held": -200}),
        ("hold.authorize", "200 points reserved for a redemption (basket 7)", {"available": -200, "held": 200}),
        ("order.refund", "45 points taken back: refund R-1 of order A-1001", {"available": -45}),
        (
            "hold.capture",
            "Redeemed 120 points, 80 points back from the reservation",
            {"available": 80, "held": -200},
        ),
        ("hold.authorize", "200 points reserved for a redemption", {"available": -200, "held": 200}),
        ("order.release", "250 points from order A-1001 are now available", {"available": 250, "pending": -250}),
        (
            "order.award",
            "Earned 250 points for order A-1001 at Test shop (available from 15 April 2026)",
            {"pending": 250},
        ),
        ("adjustment.grant", "Received 500 points: welcome", {"available": 500}),
    ]
    assert page["items"][-1]["posted_at"] == PLACED.isoformat().replace("+00:00", "Z")
    assert page["items"][-2]["entry_id"] == placed["award_entry_id"]
    balance = (await client.get(f"/v1/customers/{ann}/balance", headers=program.auth("checkout"))).json()
    assert sum(item["changes"].get("available", 0) for item in page["items"]) == balance["available"] == 500

    # the customer's app sees the same history, and only its own
    mine = await _history(client, "/v1/me/history", await _token(client, program, ann))
    assert mine == page
    theirs = await _history(client, "/v1/me/history", await _token(client, program, bob))
    assert [item["description"] for item in theirs["items"]] == ["Received 9 points: x"]
    for scope in ("admin", "finance"):
        assert await _history(client, f"/v1/customers/{ann}/history", program.auth(scope)) == page


async def test_pages_follow_each_other_without_gaps_or_repeats(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    ann = await enrol_customer(client, program, "ann")
    # the clock stands still: every entry has the same posted_at, so the cursor's entry id
    # is what separates the pages
    for n in range(7):
        grant = {"customer_id": ann, "amount": n + 1, "reason": f"gift {n}"}
        await _post(client, program, "admin", "/v1/ledger/adjustments", f"g-{n}", grant)
    hold = await _post(client, program, "checkout", "/v1/holds", "h", {"customer_id": ann, "amount": 3})
    await _post(client, program, "checkout", f"/v1/holds/{hold['id']}/void", "v", None)
    headers = program.auth("finance")
    whole = await _history(client, f"/v1/customers/{ann}/history", headers, limit=200)
    assert len(whole["items"]) == 9 and whole["next_cursor"] is None
    ids = [item["entry_id"] for item in whole["items"]]
    assert ids == sorted(ids, reverse=True)
    assert len({item["posted_at"] for item in whole["items"]}) == 1

    seen: list[dict[str, Any]] = []
    sizes = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = await _history(client, f"/v1/customers/{ann}/history", headers, **params)
        seen.extend(page["items"])
        sizes.append(len(page["items"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [4, 4, 1]
    assert seen == whole["items"]

    exact = await _history(client, f"/v1/customers/{ann}/history", headers, limit=9)
    assert exact["next_cursor"] is None  # no empty last page
    default = await _history(client, f"/v1/customers/{ann}/history", headers)
    assert default == whole


async def test_bad_paging_and_unknown_customers_are_problems(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    ann = await enrol_customer(client, program, "ann")
    stranger = await enrol_customer(client, other_program, "stranger")
    path = f"/v1/customers/{ann}/history"
    headers = program.auth("checkout")
    for params, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "c" * 201}, "cursor"),
        ({"cursor": ""}, "cursor"),
    ):
        problem = assert_problem(await client.get(path, params=params, headers=headers), 422, "invalid-input")
        assert_names_field(problem, field)
    statement_cursor = base64.urlsafe_b64encode(b"2026-03-10T11:00:00+00:00|7|1").decode()
    for cursor in ("not-a-cursor", statement_cursor, "\x00"):
        problem = assert_problem(
            await client.get(path, params={"cursor": cursor}, headers=headers), 422, "invalid-input"
        )
        assert_names_field(problem, "cursor")
    me = await _token(client, program, ann)
    assert_names_field(assert_problem(await client.get("/v1/me/history?limit=0", headers=me), 422), "limit")
    assert_names_field(assert_problem(await client.get("/v1/me/history?cursor=x", headers=me), 422), "cursor")

    for unknown in ("cus_nope", stranger):
        problem = assert_problem(
            await client.get(f"/v1/customers/{unknown}/history", headers=headers), 404, "not-found"
        )
        assert problem["field"] == "customer_id"


@pytest.mark.parametrize(("scope", "status"), [("checkout", 200), ("admin", 200), ("finance", 200), ("token", 403)])
async def test_who_may_read_a_customers_history(
    client: httpx.AsyncClient, program: ProgramFixture, scope: str, status: int
) -> None:
    ann = await enrol_customer(client, program, "ann")
    headers = await _token(client, program, ann) if scope == "token" else program.auth(scope)
    assert (await client.get(f"/v1/customers/{ann}/history", headers=headers)).status_code == status
    mine = await client.get("/v1/me/history", headers=headers)
    assert mine.status_code == (200 if scope == "token" else 403), mine.text
    assert (await client.get("/v1/me/history")).status_code == 401
