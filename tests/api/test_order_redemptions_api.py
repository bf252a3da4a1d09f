"""Orders paid with a captured hold: linking the hold, refunds giving back the redeemed points
in proportion (with the dates of the points the capture spent), retries, and refusals that
name `redemption_hold_id` and change nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec

from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine
from service.usecases import orders
from service.usecases.orders import OrderPlacement
from tests.api.orders_support import PLACED, order_body
from tests.api.support import assert_names_field, assert_problem, enrol_customer
from tests.api.test_lifecycle_events_api import _feed
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import ledger_invariants

NET = 1100  # of order_body's basket, which earns 18 points


async def _grant(client: httpx.AsyncClient, program: ProgramFixture, customer: str, amount: int, key: str) -> int:
    """Points (or, with a `credit-` key, store credit) granted now; the grant's entry id."""
    unit = "CREDIT" if key.startswith("credit-") else "POINTS"
    body = {"customer_id": customer, "amount": amount, "reason": "test", "unit": unit}
    granted = await client.post(
        "/v1/ledger/adjustments", json=body, headers={**program.auth("admin"), "Idempotency-Key": key}
    )
    assert granted.status_code == 201, granted.text
    entry_id: int = granted.json()["id"]
    return entry_id


async def _hold(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    customer: str,
    amount: int,
    key: str,
    capture: int | None = None,
    unit: str = "POINTS",
) -> dict[str, Any]:
    """A hold of the customer, captured for `capture` (all of it with 0, left open with None)."""
    till = program.auth("checkout")
    held = await client.post(
        "/v1/holds",
        json={"customer_id": customer, "amount": amount, "unit": unit},
        headers={**till, "Idempotency-Key": key},
    )
    assert held.status_code == 201, held.text
    hold: dict[str, Any] = held.json()
    if capture is None:
        return hold
    captured = await client.post(
        f"/v1/holds/{hold['id']}/capture",
        json={"amount": capture} if capture else {},
        headers={**till, "Idempotency-Key": f"{key}-capture"},
    )
    assert captured.status_code == 200, captured.text
    result: dict[str, Any] = captured.json()
    return result


async def _paid_order(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    customer: str,
    order_id: str,
    *,
    granted: int,
    held: int,
    captured: int = 0,
    unit: str = "POINTS",
    **order: Any,
) -> dict[str, Any]:
    """An order paid with a hold of `held` captured for `captured` (all of it with 0), after a
    grant of `granted` in the hold's unit; the order's answer."""
    await _grant(client, program, customer, granted, "credit-1" if unit == "CREDIT" else "g-1")
    hold = await _hold(client, program, customer, held, "h-1", capture=captured, unit=unit)
    body = order_body(customer, order_id, redemption_hold_id=hold["id"], **order)
    placed = await client.post(f"/v1/shops/{program.shop_id}/orders", json=body, headers=program.auth("checkout"))
    assert placed.status_code == 201, placed.text
    result: dict[str, Any] = placed.json()
    return result


async def _lots(connection: asyncpg.Connection, program_id: str, entry_id: int) -> list[tuple[datetime | None, int]]:
    """The lots an entry created: (expires_at, amount), latest-expiring first."""
    rows = await connection.fetch(
        "SELECT expires_at, amount FROM lots WHERE program_id = $1 AND entry_id = $2 ORDER BY expires_at DESC, id",
        program_id,
        entry_id,
    )
    return [(row["expires_at"], row["amount"]) for row in rows]


async def _expiry_of(connection: asyncpg.Connection, program_id: str, entry_id: int) -> datetime | None:
    [(expires_at, _)] = await _lots(connection, program_id, entry_id)
    return expires_at


async def _state(connection: asyncpg.Connection, program_id: str) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    row = await connection.fetchrow(
        "SELECT (SELECT count(*) FROM entries WHERE program_id = $1) AS entries,"
        " (SELECT count(*) FROM event_outbox WHERE program_id = $1) AS events,"
        " (SELECT array_agg(ROW(shop_id, id, redemption_hold_id, points_redeemed, points_returned)::text ORDER BY id)"
        "  FROM orders WHERE program_id = $1) AS orders,"
        " (SELECT count(*) FROM refunds WHERE program_id = $1) AS refunds,"
        " (SELECT array_agg(ROW(id, status, captured)::text ORDER BY id) FROM holds WHERE program_id = $1) AS holds,"
        " (SELECT array_agg(ROW(code, balance)::text ORDER BY code) FROM accounts"
        "  WHERE program_id = $1 AND customer_id IS NOT NULL) AS balances",
        program_id,
    )
    assert row is not None
    return tuple(row.values())


async def _balance(client: httpx.AsyncClient, program: ProgramFixture, customer: str) -> dict[str, Any]:
    response = await client.get(f"/v1/customers/{customer}/balance", headers=program.auth("checkout"))
    assert response.status_code == 200, response.text
    balance: dict[str, Any] = response.json()
    return balance


async def _books_balance(client: httpx.AsyncClient, program: ProgramFixture, connection: asyncpg.Connection) -> None:
    """The ledger invariants hold and the trial balance balances in every unit."""
    await ledger_invariants(connection, program.id)
    trial = await client.get("/v1/finance/trial-balance", headers=program.auth("finance"))
    assert trial.status_code == 200, trial.text
    assert all(total["balanced"] for total in trial.json()["totals"]), trial.json()


async def _system_balance(connection: asyncpg.Connection, program_id: str, kind: str) -> int:
    total: int = await connection.fetchval(
        "SELECT coalesce(sum(p.amount), 0)::bigint FROM postings p JOIN accounts a"
        " ON a.program_id = p.program_id AND a.id = p.account_id WHERE p.program_id = $1 AND a.code = $2",
        program_id,
        f"system:{kind}",
    )
    return total


async def test_refunds_give_back_the_redeemed_points_in_proportion_with_their_dates(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    admin, till = program.auth("admin"), program.auth("checkout")
    policy = await client.put("/v1/ledger/expiry-policy", json={"policy": "days", "period": 30}, headers=admin)
    assert policy.status_code == 200, policy.text
    # two lots of different dates: 100 earned ten days before the order, 200 five days before
    clock.set(PLACED - timedelta(days=10))
    early = await _expiry_of(owner_connection, program.id, await _grant(client, program, ann, 100, "g-early"))
    clock.set(PLACED - timedelta(days=5))
    late = await _expiry_of(owner_connection, program.id, await _grant(client, program, ann, 200, "g-late"))
    assert early is not None and late is not None and early < late
    clock.set(PLACED + timedelta(minutes=1))
    # the capture spends the soonest-expiring 250: all 100 early and 150 of the late ones
    hold = await _hold(client, program, ann, 250, "h-1", capture=0)
    assert (hold["status"], hold["captured"]) == ("captured", 250)

    path = f"/v1/shops/{program.shop_id}/orders"
    body = order_body(ann, redemption_hold_id=hold["id"])
    placed = await client.post(path, json=body, headers=till)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert (order["redemption_hold_id"], order["redemption_unit"]) == (hold["id"], "POINTS")
    assert (order["points_redeemed"], order["points_returned"], order["points"]) == (250, 0, 18)
    before = await _state(owner_connection, program.id)
    assert (await client.post(path, json=body, headers=till)).json() == order  # a retry: the same answer
    assert await _state(owner_connection, program.id) == before

    refunds = f"{path}/W-1/refunds"
    half = await client.post(refunds, json={"refund_id": "R-1", "amount": NET // 2}, headers=till)
    assert half.status_code == 201, half.text
    first = half.json()
    # floor(250 * 550 / 1100) back, floor(18 * 550 / 1100) taken: one rule for both
    assert (first["points_returned"], first["points"], first["from_pending"]) == (125, 9, 9)
    assert first["return_entry_id"] is not None and first["entry_id"] is not None
    assert first["return_entry_id"] != first["entry_id"]
    # the latest-expiring of the spent points come back first, with their own date
    assert await _lots(owner_connection, program.id, first["return_entry_id"]) == [(late, 125)]
    assert (await _balance(client, program, ann))["available"] == 50 + 125
    before = await _state(owner_connection, program.id)
    again = await client.post(refunds, json={"refund_id": "R-1", "amount": NET // 2}, headers=till)
    assert again.json() == first  # the same answer, nothing given back twice
    assert await _state(owner_connection, program.id) == before

    # a refund whose share rounds to nothing writes no entry at all
    tiny = await client.post(refunds, json={"refund_id": "R-2", "amount": 1}, headers=till)
    assert tiny.status_code == 201, tiny.text
    assert (tiny.json()["points_returned"], tiny.json()["return_entry_id"], tiny.json()["entry_id"]) == (0, None, None)
    assert (await _state(owner_connection, program.id))[0] == before[0]

    rest = await client.post(refunds, json={"refund_id": "R-3", "amount": NET // 2 - 1}, headers=till)
    assert rest.status_code == 201, rest.text
    last = rest.json()
    assert (last["points_returned"], last["points"]) == (125, 9)  # the rest: exactly the captured amount
    assert await _lots(owner_connection, program.id, last["return_entry_id"]) == [(late, 25), (early, 100)]

    view = (await client.get(f"{path}/W-1", headers=program.auth("finance"))).json()
    assert (view["points_redeemed"], view["points_returned"], view["clawed_back"]) == (250, 250, 18)
    assert [(r["refund_id"], r["points_returned"]) for r in view["refunds"]] == [("R-1", 125), ("R-2", 0), ("R-3", 125)]
    balance = await _balance(client, program, ann)
    assert (balance["available"], balance["pending"], balance["held"]) == (300, 0, 0)
    lots = await owner_connection.fetch(
        "SELECT l.expires_at, sum(l.remaining)::bigint AS points FROM lots l JOIN accounts a"
        " ON a.program_id = l.program_id AND a.id = l.account_id"
        " WHERE l.program_id = $1 AND a.code = $2 AND l.remaining > 0 GROUP BY l.expires_at ORDER BY l.expires_at",
        program.id,
        f"customer:{ann}:available",
    )
    assert [(row["expires_at"], row["points"]) for row in lots] == [(early, 100), (late, 200)]  # as before the hold
    assert await _system_balance(owner_connection, program.id, "redeemed") == 0
    await _books_balance(client, program, owner_connection)

    history = await client.get(f"/v1/customers/{ann}/history", headers=till)
    returned = [item for item in history.json()["items"] if item["kind"] == "order.redemption_return"]
    assert [item["description"] for item in returned] == [
        "125 points spent on order W-1 given back: refund R-3",
        "125 points spent on order W-1 given back: refund R-1",
    ]
    events = [event for event in await _feed(client, program, clock) if event["type"] == "points.returned"]
    assert [event["data"] for event in events] == [
        {
            "customer_id": ann,
            "points": 125,
            "shop_id": program.shop_id,
            "order_id": "W-1",
            "refund_id": refund["refund_id"],
            "hold_id": hold["id"],
            "entry_id": refund["return_entry_id"],
            "owed_settled": 0,
        }
        for refund in (first, last)
    ]


async def test_a_full_refund_by_lines_returns_exactly_what_a_partial_capture_spent(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, owner_connection: asyncpg.Connection
) -> None:
    till = program.auth("checkout")
    placed = await _paid_order(client, program, ann, "W-7", granted=333, held=300, captured=217)
    assert placed["points_redeemed"] == 217, placed
    path = f"/v1/shops/{program.shop_id}/orders"
    first = await client.post(
        f"{path}/W-7/refunds", json={"refund_id": "R-1", "lines": [{"line": 0, "quantity": 1}]}, headers=till
    )
    assert first.json()["points_returned"] == 217 * 350 // NET, first.text
    second = await client.post(
        f"{path}/W-7/refunds",
        json={"refund_id": "R-2", "lines": [{"line": 0, "quantity": 1}, {"line": 1, "quantity": 1}]},
        headers=till,
    )
    assert first.json()["points_returned"] + second.json()["points_returned"] == 217, second.text
    assert (await _balance(client, program, ann))["available"] == 333
    await _books_balance(client, program, owner_connection)


async def test_the_redeemed_points_pay_a_clawback_the_customer_could_not_otherwise_pay(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    """Given back first: a refund of a released order whose points were spent takes them from
    the redeemed points coming back rather than forgiving them (within_balance)."""
    till = program.auth("checkout")
    placed = await _paid_order(client, program, ann, "W-1", granted=400, held=400)
    path = f"/v1/shops/{program.shop_id}/orders"
    clock.set(datetime.fromisoformat(placed["available_from"]))
    assert await orders.release_due_orders(program.id, clock) == 1
    await _hold(client, program, ann, 18, "h-2", capture=0)  # the earned points are spent too
    refund = await client.post(f"{path}/W-1/refunds", json={"refund_id": "R-1", "amount": NET}, headers=till)
    assert refund.status_code == 201, refund.text
    body = refund.json()
    assert (body["points_returned"], body["from_available"], body["forgiven"], body["owed"]) == (400, 18, 0, 0)
    assert (await _balance(client, program, ann))["available"] == 400 - 18
    await _books_balance(client, program, owner_connection)


async def test_a_credit_hold_gives_back_store_credit(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    till = program.auth("checkout")
    placed = await _paid_order(client, program, ann, "C-1", granted=1000, held=600, captured=400, unit="CREDIT")
    assert (placed["redemption_unit"], placed["points_redeemed"]) == ("CREDIT", 400)
    path = f"/v1/shops/{program.shop_id}/orders"
    refund = await client.post(f"{path}/C-1/refunds", json={"refund_id": "R-1", "amount": NET}, headers=till)
    assert refund.status_code == 201, refund.text
    assert (refund.json()["points_returned"], refund.json()["points"]) == (400, 18)
    lots = await _lots(owner_connection, program.id, refund.json()["return_entry_id"])
    assert lots == [(None, 400)]  # store credit never expires
    balance = await _balance(client, program, ann)
    assert (balance["credit_available"], balance["credit_held"], balance["pending"]) == (1000, 0, 0)
    assert await _system_balance(owner_connection, program.id, "credit_redeemed") == 0
    await _books_balance(client, program, owner_connection)
    # points.returned tells of points; store credit coming back is not that
    assert "points.returned" not in Counter(event["type"] for event in await _feed(client, program, clock))


async def test_a_hold_that_may_not_pay_for_the_order_is_refused_by_name_and_changes_nothing(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    other_program: ProgramFixture,
    ann: str,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    till = program.auth("checkout")
    path = f"/v1/shops/{program.shop_id}/orders"
    bob = await enrol_customer(client, program, "bob")
    await _grant(client, program, ann, 1000, "g-ann")
    await _grant(client, program, bob, 1000, "g-bob")
    bobs = await _hold(client, program, bob, 100, "h-bob", capture=0)
    voided = await _hold(client, program, ann, 100, "h-void")
    void = await client.post(f"/v1/holds/{voided['id']}/void", headers={**till, "Idempotency-Key": "v"})
    assert void.status_code == 200, void.text
    lapsing = await _hold(client, program, ann, 100, "h-lapsing")
    open_hold = await _hold(client, program, ann, 100, "h-open")
    paid = await _hold(client, program, ann, 100, "h-paid", capture=0)
    first = await client.post(path, json=order_body(ann, "P-1", redemption_hold_id=paid["id"]), headers=till)
    assert first.status_code == 201, first.text
    await _grant(client, program, ann, 10, "g-foreign")
    foreign = await _hold(client, program, ann, 10, "h-foreign", capture=0)  # ann's hold ids mean nothing elsewhere
    foreign_customer = await enrol_customer(client, other_program, "ann")

    cases: list[tuple[str, dict[str, Any], int, str, str | None]] = [
        (program.shop_id, order_body(ann, "X-1", redemption_hold_id="hld_unknown"), 404, "not-found", None),
        (program.shop_id, order_body(ann, "X-2", redemption_hold_id=bobs["id"]), 404, "not-found", None),
        (program.shop_id, order_body(ann, "X-3", redemption_hold_id=voided["id"]), 409, "hold-not-captured", "voided"),
        (program.shop_id, order_body(ann, "X-4", redemption_hold_id=paid["id"]), 409, "conflict", None),
        (program.shop_id, order_body(ann, "X-5", redemption_hold_id=open_hold["id"]), 409, "hold-not-captured", "open"),
    ]
    clock.advance(timedelta(seconds=899))  # the holds are open until 900 s after they were made
    for shop, body, status, problem, hold_status in cases:
        before = await _state(owner_connection, program.id)
        refused = await client.post(f"/v1/shops/{shop}/orders", json=body, headers=till)
        problem_body = assert_problem(refused, status, problem)
        assert problem_body["field"] == "redemption_hold_id", problem_body
        assert problem_body.get("hold_status") == hold_status, problem_body
        assert await _state(owner_connection, program.id) == before
        again = await client.post(f"/v1/shops/{shop}/orders", json=body, headers=till)
        assert again.json() == refused.json()  # refused the same way again
    elsewhere = await client.post(
        f"/v1/shops/{other_program.shop_id}/orders",
        json=order_body(foreign_customer, "X-6", redemption_hold_id=foreign["id"]),
        headers=other_program.auth("checkout"),
    )
    assert assert_problem(elsewhere, 404)["field"] == "redemption_hold_id"  # another program's hold: unknown
    clock.advance(timedelta(seconds=2))  # past expires_at, before the expiry job reaches it
    before = await _state(owner_connection, program.id)
    expired = await client.post(path, json=order_body(ann, "X-7", redemption_hold_id=lapsing["id"]), headers=till)
    assert assert_problem(expired, 409, "hold-not-captured")["hold_status"] == "expired"
    assert await _state(owner_connection, program.id) == before
    bad = await client.post(path, json=order_body(ann, "X-8", redemption_hold_id=""), headers=till)
    assert_names_field(assert_problem(bad, 422, "invalid-input"), "redemption_hold_id")

    # the same order id with another hold is another request
    other = await client.post(path, json=order_body(ann, "P-1", redemption_hold_id=bobs["id"]), headers=till)
    assert_problem(other, 409, "idempotency-key-reused")
    # refused while open, the same order succeeds once its hold is captured (not remembered)
    clock.advance(timedelta(seconds=-2))
    captured = await client.post(
        f"/v1/holds/{open_hold['id']}/capture", json={}, headers={**till, "Idempotency-Key": "capture-open"}
    )
    assert captured.status_code == 200, captured.text
    late = await client.post(path, json=order_body(ann, "X-5", redemption_hold_id=open_hold["id"]), headers=till)
    assert late.status_code == 201, late.text
    assert late.json()["points_redeemed"] == 100
    # a voided hold's refusal is remembered like any other
    assert_problem(
        await client.post(path, json=order_body(ann, "X-3", redemption_hold_id=voided["id"]), headers=till), 409
    )
    await _books_balance(client, program, owner_connection)


async def test_two_orders_naming_one_hold_at_once_link_it_once(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, owner_connection: asyncpg.Connection
) -> None:
    till = program.auth("checkout")
    await _grant(client, program, ann, 100, "g-1")
    hold = await _hold(client, program, ann, 100, "h-1", capture=0)
    path = f"/v1/shops/{program.shop_id}/orders"
    answers = await asyncio.gather(
        *(
            client.post(path, json=order_body(ann, f"R-{n}", redemption_hold_id=hold["id"]), headers=till)
            for n in range(6)
        )
    )
    assert sorted(answer.status_code for answer in answers) == [201] + [409] * 5, [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert assert_problem(answer, 409, "conflict")["field"] == "redemption_hold_id"
    linked = await owner_connection.fetchval(
        "SELECT count(*) FROM orders WHERE program_id = $1 AND redemption_hold_id = $2", program.id, hold["id"]
    )
    assert linked == 1


def test_an_order_without_a_hold_keeps_the_fingerprint_it_had_before_holds_could_pay() -> None:
    """Retries of orders placed before `redemption_hold_id` existed still match their record."""
    order = Order(currency="EUR", placed_at=PLACED, lines=(OrderLine(sku="a", category="c", unit_price=1, quantity=1),))
    placement = OrderPlacement(order_id="W-1", customer_id="cus_ann", order=order)
    encoded = msgspec.json.encode(placement)
    assert encoded == msgspec.json.encode({"order_id": "W-1", "customer_id": "cus_ann", "order": order})
    paid = msgspec.structs.replace(placement, redemption_hold_id="hld_1")
    assert msgspec.json.decode(msgspec.json.encode(paid))["redemption_hold_id"] == "hld_1"


async def _waits_for_a_lock(connection: asyncpg.Connection) -> None:
    """Until another session of this database waits for a row lock."""
    for _ in range(500):
        waiting = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the refund never waited for the lock")


async def test_a_store_credit_refund_locks_the_customer_accounts_in_id_order(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, owner_connection: asyncpg.Connection
) -> None:
    """A writer that locks the customer's credit_available and then owed (in id order, as a
    referral's clawback of store credit does) does not deadlock with the refund's return."""
    till = program.auth("checkout")
    await _paid_order(client, program, ann, "C-1", granted=1000, held=600, captured=400, unit="CREDIT")
    path = f"/v1/shops/{program.shop_id}/orders"
    lock = "SELECT id FROM accounts WHERE program_id = $1 AND code = $2 FOR NO KEY UPDATE"
    async with owner_connection.transaction():
        await owner_connection.execute("SET LOCAL deadlock_timeout = '50ms'")  # this side detects it first
        await owner_connection.execute(lock, program.id, f"customer:{ann}:credit_available")
        refund = asyncio.create_task(
            client.post(f"{path}/C-1/refunds", json={"refund_id": "R-1", "amount": NET}, headers=till)
        )
        await _waits_for_a_lock(owner_connection)
        await owner_connection.execute(lock, program.id, f"customer:{ann}:owed")
    answer = await refund
    assert answer.status_code == 201, answer.text
    assert answer.json()["points_returned"] == 400
    await _books_balance(client, program, owner_connection)


async def test_concurrent_partial_refunds_of_one_order_give_back_each_point_once(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, owner_connection: asyncpg.Connection
) -> None:
    till = program.auth("checkout")
    await _paid_order(client, program, ann, "P-1", granted=1000, held=700)
    path = f"/v1/shops/{program.shop_id}/orders"
    amounts = [100, 250, 1, 333, 416]  # NET in all
    answers = await asyncio.gather(
        *(
            client.post(f"{path}/P-1/refunds", json={"refund_id": f"R-{n}", "amount": amount}, headers=till)
            for n, amount in enumerate(amounts)
        )
    )
    assert all(answer.status_code == 201 for answer in answers), [answer.text for answer in answers]
    assert sum(answer.json()["points_returned"] for answer in answers) == 700
    assert sum(answer.json()["points"] for answer in answers) == 18
    order = await client.get(f"{path}/P-1", headers=till)
    assert (order.json()["points_returned"], order.json()["clawed_back"]) == (700, 18)
    assert await _system_balance(owner_connection, program.id, "redeemed") == 0
    await _books_balance(client, program, owner_connection)


async def test_a_free_item_paid_with_points_gives_them_back_when_returned(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, owner_connection: asyncpg.Connection
) -> None:
    """A reward from the catalogue: an order of net value 0 paid with 500 points. Refunds
    share by the items returned (nothing to measure in value): one of two mugs gives back
    250, the other the rest."""
    till = program.auth("checkout")
    free = [{"sku": "mug", "category": "rewards", "unit_price": 1200, "quantity": 2, "discount": 2400}]
    placed = await _paid_order(client, program, ann, "FREE-1", granted=500, held=500, lines=free)
    assert (placed["net"], placed["points"], placed["points_redeemed"]) == (0, 0, 500)
    path = f"/v1/shops/{program.shop_id}/orders"
    returned = []
    for refund_id in ("R-1", "R-2"):
        refund = {"refund_id": refund_id, "lines": [{"line": 0, "quantity": 1}]}
        answer = await client.post(f"{path}/FREE-1/refunds", json=refund, headers=till)
        assert answer.status_code == 201, answer.text
        returned.append(answer.json()["points_returned"])
    assert returned == [250, 250]
    balance = (await client.get(f"/v1/customers/{ann}/balance", headers=till)).json()
    assert balance["available"] == 500
    await ledger_invariants(owner_connection, program.id)


async def _entry_postings(connection: asyncpg.Connection, program_id: str, entry_id: int) -> dict[str, int]:
    """An entry's postings: account code -> amount."""
    rows = await connection.fetch(
        "SELECT a.code, p.amount FROM postings p JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
        " WHERE p.program_id = $1 AND p.entry_id = $2 ORDER BY p.line",
        program_id,
        entry_id,
    )
    return {row["code"]: row["amount"] for row in rows}


async def _owe_18(
    client: httpx.AsyncClient, program: ProgramFixture, customer: str, clock: ManualClock, grant: int
) -> None:
    """Under `allow_negative`: an order's 18 points released at once (window 0) and spent, then
    the order refunded in full: the customer owes 18. `grant` points are granted (and kept
    available) first; the window is 14 days again afterwards."""
    admin, till = program.auth("admin"), program.auth("checkout")
    returns = {"window_days": 0, "policy": "allow_negative"}
    assert (await client.put("/v1/program/returns", json=returns, headers=admin)).status_code == 200
    if grant:
        await _grant(client, program, customer, grant, "g-0")
    path = f"/v1/shops/{program.shop_id}/orders"
    placed = await client.post(path, json=order_body(customer, "D-1"), headers=till)
    assert placed.status_code == 201, placed.text
    assert await orders.release_due_orders(program.id, clock) == 1
    await _hold(client, program, customer, 18 + grant, "h-spend", capture=0)  # everything spent
    refund = await client.post(f"{path}/D-1/refunds", json={"refund_id": "R-D", "amount": NET}, headers=till)
    assert refund.status_code == 201, refund.text
    assert refund.json()["owed"] == 18, refund.text
    again = await client.put("/v1/program/returns", json=returns | {"window_days": 14}, headers=admin)
    assert again.status_code == 200, again.text
    balance = await _balance(client, program, customer)
    assert (balance["available"], balance["owed"]) == (0, -18)


async def test_redeemed_points_given_back_settle_a_debt_first(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    """A customer who owes points gets redeemed points back: they pay off the debt first, as
    released points do, and only the rest becomes available (never owing and spending at once)."""
    till = program.auth("checkout")
    await _owe_18(client, program, ann, clock, grant=0)
    placed = await _paid_order(client, program, ann, "W-1", granted=400, held=400)
    assert (placed["points_redeemed"], placed["points"]) == (400, 18)
    path = f"/v1/shops/{program.shop_id}/orders"

    half = await client.post(f"{path}/W-1/refunds", json={"refund_id": "R-1", "amount": NET // 2}, headers=till)
    assert half.status_code == 201, half.text
    first = half.json()
    # 200 given back: 18 pay off the debt, 182 become available; the clawback (9) is from pending
    assert (first["points_returned"], first["owed_settled"]) == (200, 18)
    assert (first["points"], first["from_pending"], first["from_available"], first["owed"]) == (9, 9, 0, 0)
    assert await _entry_postings(owner_connection, program.id, first["return_entry_id"]) == {
        "system:redeemed": -200,
        f"customer:{ann}:owed": 18,
        f"customer:{ann}:available": 182,
    }
    balance = await _balance(client, program, ann)
    assert (balance["available"], balance["owed"], balance["pending"]) == (182, 0, 9)
    again = await client.post(f"{path}/W-1/refunds", json={"refund_id": "R-1", "amount": NET // 2}, headers=till)
    assert again.json() == first  # a retry: the same answer, nothing settled twice

    rest = await client.post(f"{path}/W-1/refunds", json={"refund_id": "R-2", "amount": NET // 2}, headers=till)
    assert rest.status_code == 201, rest.text
    last = rest.json()
    assert (last["points_returned"], last["owed_settled"]) == (200, 0)  # no debt left: all available
    assert (await _balance(client, program, ann))["available"] == 382

    view = (await client.get(f"{path}/W-1", headers=program.auth("finance"))).json()
    assert [(r["refund_id"], r["points_returned"], r["owed_settled"]) for r in view["refunds"]] == [
        ("R-1", 200, 18),
        ("R-2", 200, 0),
    ]
    assert view["points_returned"] == 400
    assert await _system_balance(owner_connection, program.id, "redeemed") == 18  # the spending that made the debt
    await _books_balance(client, program, owner_connection)

    history = await client.get(f"/v1/customers/{ann}/history", headers=till)
    returned = [item for item in history.json()["items"] if item["kind"] == "order.redemption_return"]
    assert [(item["description"], item["changes"]) for item in returned] == [
        ("200 points spent on order W-1 given back: refund R-2", {"available": 200}),
        (
            "200 points spent on order W-1 given back: refund R-1 (18 paid off points owed)",
            {"owed": 18, "available": 182},
        ),
    ]
    events = [event["data"] for event in await _feed(client, program, clock) if event["type"] == "points.returned"]
    assert [(data["refund_id"], data["points"], data["owed_settled"]) for data in events] == [
        ("R-1", 200, 18),
        ("R-2", 200, 0),
    ]


async def test_the_refunds_clawback_is_paid_from_the_points_given_back_before_a_debt(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
) -> None:
    """The order's points were released and spent: the refund's own clawback is paid from the
    redeemed points coming back (as without a debt), and only what is left settles the debt,
    so the refund neither forgives nor makes a new debt while paying off an old one."""
    till = program.auth("checkout")
    await _owe_18(client, program, ann, clock, grant=0)
    placed = await _paid_order(client, program, ann, "W-1", granted=30, held=30)
    clock.set(datetime.fromisoformat(placed["available_from"]))
    assert await orders.release_due_orders(program.id, clock) == 1  # 18 settle the debt, nothing available
    await _grant(client, program, ann, 5, "g-more")
    # a new debt of 18: another order released at once and spent, then refunded
    returns = {"window_days": 0, "policy": "allow_negative"}
    assert (await client.put("/v1/program/returns", json=returns, headers=program.auth("admin"))).status_code == 200
    path = f"/v1/shops/{program.shop_id}/orders"
    assert (await client.post(path, json=order_body(ann, "D-2"), headers=till)).status_code == 201
    assert await orders.release_due_orders(program.id, clock) == 1
    await _hold(client, program, ann, 23, "h-spend-2", capture=0)
    refund = await client.post(f"{path}/D-2/refunds", json={"refund_id": "R-D2", "amount": NET}, headers=till)
    assert refund.json()["owed"] == 18, refund.text
    balance = await _balance(client, program, ann)
    assert (balance["available"], balance["owed"]) == (0, -18)

    # W-1's 18 points were released (to the old debt): its refund's clawback of 18 is taken
    # from the 30 given back, and the 12 left pay off 12 of the debt
    answer = await client.post(f"{path}/W-1/refunds", json={"refund_id": "R-1", "amount": NET}, headers=till)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["points_returned"], body["owed_settled"]) == (30, 12)
    assert (body["points"], body["from_pending"], body["from_available"], body["owed"], body["forgiven"]) == (
        18,
        0,
        18,
        0,
        0,
    )
    balance = await _balance(client, program, ann)
    assert (balance["available"], balance["owed"]) == (0, -6)
    await _books_balance(client, program, owner_connection)
