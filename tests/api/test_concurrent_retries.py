"""Many copies of one write at once: the same request sent concurrently under one
`Idempotency-Key` (or client id) makes exactly one effect and every copy gets the same answer."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from service.db.piccolo_conf import DB
from service.domain.clock import ManualClock
from tests.api.orders_support import order_body
from tests.api.support import enrol_customer
from tests.api.test_bulk_awards import order_item
from tests.api.test_every_write_route import CASES_BY_ID, Env, Retry, _body, _send, snapshot_query
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import ledger_invariants

__all__ = ["snapshot_query"]  # the fixture, for this module

COPIES = 50
ROUTES = [
    "POST /v1/ledger/adjustments",
    "POST /v1/ledger/entries/{entry_id}/reversal",
    "POST /v1/holds",
    "POST /v1/holds/{hold_id}/capture",
    "POST /v1/holds/{hold_id}/void",
    "POST /v1/shops/{shop_id}/orders",
    "POST /v1/shops/{shop_id}/orders/{order_id}/refunds",
    "POST /v1/customers/{customer_id}/referral",
    "POST /v1/customers/{customer_id}/tier/grants",
    "POST /v1/bulk/awards",
]


@pytest.mark.parametrize("route", ROUTES)
async def test_concurrent_copies_of_one_write_make_one_effect_and_one_answer(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    clock: ManualClock,
    ann: str,
    owner_connection: asyncpg.Connection,
    snapshot_query: str,
    route: str,
) -> None:
    write = CASES_BY_ID[route]
    env = Env(client, program, clock, ann, owner_connection, snapshot_query)
    plan = await write.prepare(env)
    start = await env.snapshot()
    answers = await asyncio.gather(
        *(_send(env, write.method, plan.valid, write.scope, "concurrent") for _ in range(COPIES))
    )
    statuses = sorted(a.status_code for a in answers)
    if write.retry is Retry.CREATED_THEN_OK:
        assert statuses == [200] * (COPIES - 1) + [201], [a.text for a in answers if a.status_code >= 300]
    else:
        assert len(set(statuses)) == 1 and 200 <= statuses[0] < 300, [a.text for a in answers if a.status_code >= 300]
    bodies = {repr(_body(a)) for a in answers}
    assert len(bodies) == 1, bodies
    after = await env.snapshot()
    assert after != start
    retry = await _send(env, write.method, plan.valid, write.scope, "concurrent")
    assert repr(_body(retry)) in bodies
    assert await env.snapshot() == after
    # one effect: as many new entries as one send makes
    made = len(after["entries"]) - len(start["entries"])
    assert made <= 3, made
    await ledger_invariants(owner_connection, program.id)


async def test_concurrent_bulk_requests_over_the_same_customers_apply_each_key_once(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    clock: ManualClock,
    ann: str,
    owner_connection: asyncpg.Connection,
) -> None:
    customers = [ann] + [await enrol_customer(client, program, f"c{n}") for n in range(4)]

    def items(variant: int) -> list[dict[str, Any]]:
        made: list[dict[str, Any]] = []
        for n, customer in enumerate(customers):
            made += [
                {"type": "grant", "key": f"g-{n}", "customer_id": customer, "amount": 50, "reason": "r"},
                {"type": "grant", "key": f"v{variant}-{n}", "customer_id": customer, "amount": 10, "reason": "r"},
                {"type": "grant", "key": f"d{variant}-{n}", "customer_id": customer, "amount": -30, "reason": "r"},
                {"type": "grant", "key": f"x-{n}", "customer_id": customer, "amount": -10_000, "reason": "r"},
                {"type": "grant", "key": f"same-{n}", "customer_id": customer, "amount": 1 + variant, "reason": "r"},
                order_item(program, customer, f"O-{n}"),
            ]
        made.append({"type": "grant", "key": "nobody", "customer_id": "cus_nobody", "amount": 5, "reason": "r"})
        return made

    admin = program.auth("admin")
    requests = [items(variant) for variant in (0, 1, 0, 1)]
    answers = await asyncio.gather(
        *(client.post("/v1/bulk/awards", json={"items": r}, headers=admin) for r in requests)
    )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    bodies = [a.json()["results"] for a in answers]
    assert bodies[0] == bodies[2] and bodies[1] == bodies[3]
    for index in range(len(requests[0])):
        statuses = {b[index]["status"] for b in bodies}
        item = requests[0][index]
        key = item.get("key", "")
        if key.startswith("same-"):
            assert sorted(b[index]["status"] for b in bodies) == [201, 201, 409, 409], [b[index] for b in bodies]
        elif key.startswith("x-"):
            assert statuses == {409} and {b[index]["problem"]["type"].rsplit("/", 1)[-1] for b in bodies} == {
                "insufficient-points"
            }, [b[index] for b in bodies]
        elif key == "nobody":
            assert statuses == {404}, [b[index] for b in bodies]
        else:
            assert statuses == {201}, [b[index] for b in bodies]
            if key.startswith("g-") or item["type"] == "order":
                assert len({repr(b[index]) for b in bodies}) == 1
    await ledger_invariants(owner_connection, program.id)
    rows = await owner_connection.fetch(
        "SELECT metadata->>'reason' AS reason, count(*) FROM entries WHERE program_id = $1 GROUP BY 1", program.id
    )
    entries = int(await owner_connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", program.id))
    # per customer: g, v0, v1, d0, d1, same (one of the two), the order
    assert entries == len(customers) * 7, rows


async def test_writes_refused_with_503_for_an_exhausted_pool_are_retried_with_one_effect(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    clock: ManualClock,
    ann: str,
    owner_connection: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin, till = program.auth("admin"), program.auth("checkout")
    seed = {"customer_id": ann, "amount": 1000, "reason": "seed"}
    assert (
        await client.post("/v1/ledger/adjustments", json=seed, headers={**admin, "Idempotency-Key": "s"})
    ).is_success
    shop = program.shop_id
    sends: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    for n in range(10):
        grant = {"customer_id": ann, "amount": 3 if n % 2 else -3, "reason": "x"}
        sends.append(("/v1/ledger/adjustments", grant, {**admin, "Idempotency-Key": f"a{n}"}))
        sends.append(("/v1/holds", {"customer_id": ann, "amount": 10}, {**till, "Idempotency-Key": f"h{n}"}))
        sends.append((f"/v1/shops/{shop}/orders", order_body(ann, f"P-{n}"), till))

    async def send_all() -> list[httpx.Response]:
        return await asyncio.gather(*(client.post(path, json=body, headers=h) for path, body, h in sends))

    pool = DB.pool
    assert pool is not None
    monkeypatch.setattr(DB, "acquire_timeout", 0.2)
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        refused = await send_all()
    finally:
        for connection in held:
            await pool.release(connection)
    assert [r.status_code for r in refused] == [503] * len(sends), [r.text for r in refused if r.status_code != 503]
    first = await send_all()
    assert all(r.status_code == 201 for r in first), [r.text for r in first if r.status_code != 201]
    again = await send_all()
    assert [r.json() for r in again] == [r.json() for r in first]
    entries = int(await owner_connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", program.id))
    assert entries == 1 + len(sends)
    await ledger_invariants(owner_connection, program.id)
