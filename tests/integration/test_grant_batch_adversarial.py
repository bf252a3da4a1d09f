"""The grant batcher under adversarial batches: refused requests beside good ones, one key
used twice, and callers that go away while their grant waits."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from service.db.ledger import WrittenEntry
from service.db.piccolo_conf import DB
from service.domain.clock import ManualClock
from service.domain.errors import DomainError, IdempotencyKeyReused
from service.domain.ledger import Unit
from service.usecases import ledger
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, balances, enrol, ledger_invariants


async def _entries(connection: asyncpg.Connection, program_id: str) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", program_id))


async def test_a_mixed_batch_answers_each_request_alone(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    bob = await enrol(program.id, "bob", clock)
    requests: list[tuple[str, ledger.Adjustment]] = []
    for n in range(20):
        requests.append((f"g{n}", ledger.Adjustment(customer_id=ann if n % 2 else bob, amount=10, reason="x")))
    requests += [
        ("unknown", ledger.Adjustment(customer_id="cus_nobody", amount=10, reason="x")),
        ("over", ledger.Adjustment(customer_id=ann, amount=-10_000, reason="x")),
        ("credit", ledger.Adjustment(customer_id=ann, amount=250, unit=Unit.CREDIT, reason="x")),
        ("dup", ledger.Adjustment(customer_id=ann, amount=7, reason="x")),
        ("dup", ledger.Adjustment(customer_id=ann, amount=8, reason="x")),
        ("dup", ledger.Adjustment(customer_id=ann, amount=7, reason="x")),
    ]
    for _ in range(2):  # the second round replays the first
        outcomes = await asyncio.gather(
            *(ledger.adjust(who, r, key, clock) for key, r in requests), return_exceptions=True
        )
        by_key: dict[str, list[object]] = {}
        for (key, _r), outcome in zip(requests, outcomes, strict=True):
            by_key.setdefault(key, []).append(outcome)
        for n in range(20):
            assert isinstance(by_key[f"g{n}"][0], WrittenEntry), by_key[f"g{n}"]
        assert isinstance(by_key["unknown"][0], DomainError), by_key["unknown"]
        assert isinstance(by_key["over"][0], DomainError), by_key["over"]
        first, second, third = by_key["dup"]  # whichever comes first uses the key; the other is a 409
        if isinstance(second, WrittenEntry):
            assert all(isinstance(o, IdempotencyKeyReused) for o in (first, third)), by_key["dup"]
            dup = 8
        else:
            assert isinstance(first, WrittenEntry) and first == third, by_key["dup"]
            assert isinstance(second, IdempotencyKeyReused), second
            dup = 7
        assert isinstance(by_key["credit"][0], WrittenEntry), by_key["credit"]
        await ledger_invariants(owner_connection, program.id)
    now = await balances(owner_connection, program.id, ann)
    assert now["available"] == 10 * 10 + dup
    assert (await balances(owner_connection, program.id, bob))["available"] == 10 * 10


async def test_a_caller_that_goes_away_still_gets_its_grant_written_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    grant = ledger.Adjustment(customer_id=ann, amount=5, reason="x")
    deduct = ledger.Adjustment(customer_id=ann, amount=-1, reason="x")
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="x"), "seed", clock)
    tasks = [asyncio.create_task(ledger.adjust(who, grant, f"c{n}", clock)) for n in range(30)]
    tasks += [asyncio.create_task(ledger.adjust(who, deduct, f"d{n}", clock)) for n in range(30)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.5)
    answers = [await ledger.adjust(who, grant, f"c{n}", clock) for n in range(30)]
    answers += [await ledger.adjust(who, deduct, f"d{n}", clock) for n in range(30)]
    assert len({a.id for a in answers}) == 60
    assert (await balances(owner_connection, program.id, ann))["available"] == 100 + 30 * 5 - 30
    assert await _entries(owner_connection, program.id) == 61
    await ledger_invariants(owner_connection, program.id)


async def test_a_batch_that_cannot_get_a_connection_fails_fast_and_its_retries_write_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=1000, reason="x"), "seed", clock)
    grant = ledger.Adjustment(customer_id=ann, amount=5, reason="x")
    deduct = ledger.Adjustment(customer_id=ann, amount=-1, reason="x")
    pool = DB.pool
    assert pool is not None
    monkeypatch.setattr(DB, "acquire_timeout", 0.2)
    held = [await pool.acquire() for _ in range(pool.get_max_size())]  # the pool exhausted
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(ledger.adjust(who, grant, f"c{n}", clock) for n in range(40)),
            *(ledger.adjust(who, deduct, f"d{n}", clock) for n in range(40)),
            return_exceptions=True,
        )
        took = time.monotonic() - started
    finally:
        for connection in held:
            await pool.release(connection)
    assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
    assert took < 3, f"80 requests waited {took:.1f}s for a pool whose acquire timeout is 0.2s"
    assert await _entries(owner_connection, program.id) == 1
    answers = await asyncio.gather(
        *(ledger.adjust(who, grant, f"c{n}", clock) for n in range(40)),
        *(ledger.adjust(who, deduct, f"d{n}", clock) for n in range(40)),
    )
    again = await asyncio.gather(
        *(ledger.adjust(who, grant, f"c{n}", clock) for n in range(40)),
        *(ledger.adjust(who, deduct, f"d{n}", clock) for n in range(40)),
    )
    assert answers == again and len({a.id for a in answers}) == 80
    assert (await balances(owner_connection, program.id, ann))["available"] == 1000 + 40 * 5 - 40
    await ledger_invariants(owner_connection, program.id)


async def test_a_grant_and_a_deduction_under_one_key_at_once_make_one_entry(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=1000, reason="x"), "seed", clock)
    grant = ledger.Adjustment(customer_id=ann, amount=5, reason="x")
    deduct = ledger.Adjustment(customer_id=ann, amount=-1, reason="x")
    for round_ in range(10):
        requests = [(grant, f"k{round_}"), (deduct, f"k{round_}")] * 3 + [(deduct, f"o{round_}-{n}") for n in range(5)]
        outcomes = await asyncio.gather(*(ledger.adjust(who, r, k, clock) for r, k in requests), return_exceptions=True)
        shared = outcomes[:6]
        written = [o for o in shared if isinstance(o, WrittenEntry)]
        assert all(isinstance(o, (WrittenEntry, IdempotencyKeyReused)) for o in shared), shared
        assert written and all(o == written[0] for o in written), shared
        assert all(isinstance(o, WrittenEntry) for o in outcomes[6:]), outcomes[6:]
    assert await _entries(owner_connection, program.id) == 1 + 10 + 50
    await ledger_invariants(owner_connection, program.id)
