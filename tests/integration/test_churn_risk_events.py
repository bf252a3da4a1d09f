"""`customer.churn_risk_red`: once per lapse of a customer who bought, never for one who did not."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import asyncpg
import msgspec
import pytest

from service.db.events import emit_once
from service.domain.clock import ManualClock
from service.domain.events import EventType
from service.usecases import orders, signals
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import checkout, enrol
from tests.integration.test_order_life import START, basket, setup_program


async def red_events(connection: asyncpg.Connection, program_id: str) -> list[dict[str, object]]:
    rows = await connection.fetch(
        "SELECT payload FROM event_outbox WHERE program_id = $1 AND type = 'customer.churn_risk_red'"
        " UNION ALL SELECT payload FROM events WHERE program_id = $1 AND type = 'customer.churn_risk_red'",
        program_id,
    )
    return [json.loads(row["payload"]) for row in rows]


async def test_red_once_per_lapse(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    await enrol(program.id, "bob", clock)  # never buys: no event
    till = checkout(program.id)
    await orders.place_order(
        till, program.shop_id, orders.OrderPlacement(order_id="1", customer_id=ann, order=basket()), clock
    )

    clock.set(START + timedelta(days=59))
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    clock.set(START + timedelta(days=60))
    assert await signals.emit_churn_risk_red(program.id, clock) == 1
    assert await signals.emit_churn_risk_red(program.id, clock) == 0  # still the same lapse
    assert await red_events(owner_connection, program.id) == [
        {"customer_id": ann, "days_since_last_order": 60, "rule": "inactive 60+ days"}
    ]

    clock.set(START + timedelta(days=61))
    again = orders.OrderPlacement(order_id="2", customer_id=ann, order=basket(clock.now()))
    await orders.place_order(till, program.shop_id, again, clock)
    assert await signals.emit_churn_risk_red(program.id, clock) == 0  # green again
    clock.set(START + timedelta(days=121))
    assert await signals.emit_churn_risk_red(program.id, clock) == 1  # a new lapse
    assert len(await red_events(owner_connection, program.id)) == 2


async def test_a_round_tells_only_the_newly_red(
    program: ProgramFixture, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Customers already told of their lapse cost a round nothing: it emits (and writes marks)
    for the newly red only, not once more for every customer who is still red."""
    await setup_program(program, clock)
    till = checkout(program.id)
    for number in range(12):
        customer = await enrol(program.id, f"c-{number}", clock)
        placement = orders.OrderPlacement(order_id=f"O-{number}", customer_id=customer, order=basket())
        await orders.place_order(till, program.shop_id, placement, clock)
    late = await enrol(program.id, "late", clock)
    clock.set(START + timedelta(days=10))
    placement = orders.OrderPlacement(order_id="late", customer_id=late, order=basket(clock.now()))
    await orders.place_order(till, program.shop_id, placement, clock)

    attempts: list[str] = []

    async def counting(
        connection: asyncpg.Connection,
        program_id: str,
        key: str,
        type: EventType,
        payload: msgspec.Struct,
        customer_id: str | None = None,
        *,
        occurred_at: datetime,
    ) -> bool:
        attempts.append(key)
        return await emit_once(connection, program_id, key, type, payload, customer_id, occurred_at=occurred_at)

    monkeypatch.setattr(signals, "emit_once", counting)
    clock.set(START + timedelta(days=60))
    assert await signals.emit_churn_risk_red(program.id, clock) == 12
    assert len(attempts) == 12
    clock.set(START + timedelta(days=70))
    assert await signals.emit_churn_risk_red(program.id, clock) == 1  # only "late" turned red
    assert len(attempts) == 13
    assert await signals.emit_churn_risk_red(program.id, clock) == 0
    assert len(attempts) == 13


async def test_signals_count_in_the_order_they_occurred_not_the_order_they_arrived(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """A complaint or ticket closed at 11:00 whose opening (10:00) arrives late is closed: the
    state of a reference is its latest signal by occurred_at, as for satisfaction scores."""
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    till = checkout(program.id)
    await orders.place_order(
        till, program.shop_id, orders.OrderPlacement(order_id="1", customer_id=ann, order=basket()), clock
    )

    async def send(signal_id: str, kind: str, reference: str, hour: int) -> None:
        signal = signals.Signal(
            signal_id=signal_id,
            customer_id=ann,
            kind=signals.SignalKind(kind),
            reference=reference,
            occurred_at=START.replace(hour=hour),
        )
        await signals.record_signal(till, signal, clock)

    async def light() -> tuple[str, str, int, int]:
        page = await signals.risk_customers(program.id, clock.now(), None, None, 10)
        item = page.items[0]
        return item.colour.value, item.rule, item.open_complaints, item.open_tickets

    await send("s1", "complaint_closed", "C-1", 11)  # the close arrives first
    await send("s2", "complaint_opened", "C-1", 10)
    await send("s3", "ticket_closed", "T-1", 11)
    await send("s4", "ticket_opened", "T-1", 10)
    assert await light() == ("green", "no risk rule applies", 0, 0)
    await send("s5", "complaint_opened", "C-1", 12)  # reopened later: open again
    assert await light() == ("red", "open complaint", 1, 0)
    await send("s6", "complaint_closed", "C-1", 9)  # an old close changes nothing
    assert await light() == ("red", "open complaint", 1, 0)
