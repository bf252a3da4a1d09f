"""Customer signals from shops and the support desk, and the churn-risk traffic light."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated

import asyncpg
import msgspec

from service.db import metrics as rows
from service.db.events import emit_once
from service.db.transaction import in_transaction, snapshot, transaction
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.errors import Conflict, InvalidInput, NotFound
from service.domain.events import ChurnRiskRed, EventType
from service.domain.metrics import (
    DEFINITIONS,
    Colour,
    CustomerSignals,
    Definition,
    RiskRules,
    churn_risk,
)
from service.usecases.ledger_settings import ledger_settings, local_today

Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]


class SignalKind(StrEnum):
    COMPLAINT_OPENED = "complaint_opened"
    COMPLAINT_CLOSED = "complaint_closed"
    TICKET_OPENED = "ticket_opened"
    TICKET_CLOSED = "ticket_closed"
    SATISFACTION = "satisfaction"


class Signal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A signal about a customer; `signal_id` makes sending it again harmless. Complaints and
    tickets name their `reference` (opened and closed by it); a satisfaction score is 0..10."""

    signal_id: Ref
    customer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    kind: SignalKind
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    reference: Ref | None = None
    score: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None


class SignalView(msgspec.Struct, frozen=True, kw_only=True):
    signal_id: str
    customer_id: str
    kind: SignalKind
    reference: str | None
    score: int | None
    occurred_at: datetime
    recorded_at: datetime


def _view(row: asyncpg.Record) -> SignalView:
    return SignalView(
        signal_id=row["id"],
        customer_id=row["customer_id"],
        kind=SignalKind(row["kind"]),
        reference=row["reference"],
        score=row["score"],
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
    )


def _check(signal: Signal) -> None:
    if signal.kind is SignalKind.SATISFACTION:
        if signal.score is None:
            raise InvalidInput("a satisfaction signal needs a score (0..10)", field="score")
        if signal.reference is not None:
            raise InvalidInput("a satisfaction signal has no reference", field="reference")
    else:
        if signal.reference is None:
            raise InvalidInput("a complaint or ticket signal needs its reference", field="reference")
        if signal.score is not None:
            raise InvalidInput("only a satisfaction signal has a score", field="score")


async def record_signal(principal: Principal, signal: Signal, clock: Clock) -> tuple[SignalView, bool]:
    """Store a signal and update the customer's open complaints, tickets and latest score;
    returns (the signal, whether it is new). The same id with other content is a 409."""
    _check(signal)
    program_id = principal.program_id

    async def work(connection: asyncpg.Connection) -> tuple[SignalView, bool]:
        if not await rows.customer_exists(connection, program_id, signal.customer_id):
            raise NotFound(f"customer {signal.customer_id} not found", field="customer_id")
        values = {
            "id": signal.signal_id,
            "customer_id": signal.customer_id,
            "kind": signal.kind.value,
            "reference": signal.reference,
            "score": signal.score,
            "occurred_at": signal.occurred_at,
            "recorded_at": clock.now(),
        }
        created = await rows.insert_signal(connection, program_id, values)
        stored = _view(await rows.load_signal(connection, program_id, signal.signal_id))
        if not created:
            same = (stored.customer_id, stored.kind, stored.reference, stored.score, stored.occurred_at) == (
                signal.customer_id,
                signal.kind,
                signal.reference,
                signal.score,
                signal.occurred_at,
            )
            if not same:
                raise Conflict(f"signal {signal.signal_id} was recorded with other content", field="signal_id")
            return stored, False
        await rows.apply_signal(
            connection,
            program_id,
            signal.customer_id,
            signal.kind.value,
            signal.reference,
            signal.score,
            signal.occurred_at,
        )
        return stored, True

    return await in_transaction(work)


# --- Churn risk ------------------------------------------------------------------------


class RiskCounts(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    as_of: date  # the local day inactivity is counted to
    rules: RiskRules
    customers: int
    green: int
    orange: int
    red: int
    by_rule: dict[str, int]


class CustomerRisk(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    colour: Colour
    rule: str
    days_inactive: int  # since the last purchase, or since enrolment if `never_bought`
    never_bought: bool
    open_complaints: int
    open_tickets: int
    last_score: int | None


class RiskPage(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    as_of: date  # the local day inactivity is counted to
    rules: RiskRules
    colour: Colour | None
    items: list[CustomerRisk]
    next_cursor: str | None


def _signals(row: asyncpg.Record) -> CustomerSignals:
    return CustomerSignals(
        days_inactive=row["days_inactive"],
        open_complaints=row["open_complaints"],
        open_tickets=row["open_tickets"],
        last_score=row["last_score"],
    )


async def _context(connection: asyncpg.Connection, program_id: str, now: datetime) -> tuple[RiskRules, date]:
    rules = (await rows.load_settings(connection, program_id)).risk
    today = await local_today(connection, program_id, now)
    return rules, today


async def risk_counts(program_id: str, now: datetime) -> RiskCounts:
    """How many customers are green, orange and red today, and by which rule."""
    async with snapshot() as connection:
        rules, today = await _context(connection, program_id, now)
        groups = await rows.risk_groups(connection, program_id, today)
    colours: Counter[str] = Counter()
    by_rule: Counter[str] = Counter()
    for group in groups:
        risk = churn_risk(_signals(group), rules)
        colours[risk.colour.value] += group["customers"]
        by_rule[f"{risk.colour.value}: {risk.rule}"] += group["customers"]
    return RiskCounts(
        definition=Definition.RISK.value,
        reference=DEFINITIONS,
        as_of=today,
        rules=rules,
        customers=sum(colours.values()),
        green=colours[Colour.GREEN.value],
        orange=colours[Colour.ORANGE.value],
        red=colours[Colour.RED.value],
        by_rule=dict(sorted(by_rule.items())),
    )


async def risk_customers(
    program_id: str, now: datetime, colour: Colour | None, cursor: str | None, limit: int
) -> RiskPage:
    """Customers with their colour and the rule that set it, by id, of one colour or all."""
    items: list[CustomerRisk] = []
    more = False
    async with snapshot() as connection:
        rules, today = await _context(connection, program_id, now)
        after = cursor
        while len(items) <= limit:
            batch = await rows.risk_inputs(connection, program_id, today, after, 1000)
            for row in batch:
                risk = churn_risk(_signals(row), rules)
                if colour is None or risk.colour is colour:
                    items.append(
                        CustomerRisk(
                            customer_id=row["customer_id"],
                            colour=risk.colour,
                            rule=risk.rule,
                            days_inactive=row["days_inactive"],
                            never_bought=row["never_bought"],
                            open_complaints=row["open_complaints"],
                            open_tickets=row["open_tickets"],
                            last_score=row["last_score"],
                        )
                    )
            if len(batch) < 1000:
                break
            after = batch[-1]["customer_id"]
        more = len(items) > limit
    page = items[:limit]
    return RiskPage(
        definition=Definition.RISK.value,
        reference=DEFINITIONS,
        as_of=today,
        rules=rules,
        colour=colour,
        items=page,
        next_cursor=page[-1].customer_id if more else None,
    )


CHURN_RED_MARK = "churn-risk-red"  # event_marks key: <this>:<customer>:<last purchase day>
# A round reads the purchase days up to the cutoff only once every order stored on that day
# has committed: not the days of the last ten minutes (an order stored on day D and
# committing after the round read D would otherwise be missed; an order stored after its
# day is backdated, and `churn_red_checks` names its customer). With red_inactive_days >= 1
# the cutoff is already before today, so this only delays red events of a one-day rule by up
# to ten minutes after midnight.
SETTLED = timedelta(minutes=10)


async def emit_churn_risk_red(program_id: str, clock: Clock, batch: int = 1000) -> int:
    """Emit `customer.churn_risk_red` for customers whose light is red, once per lapse (a
    purchase starts a new one). Customers who never bought are left out: they cannot churn.

    A round reads what is due, not every customer (migration 0028): the purchase days that
    crossed the inactivity cutoff since the round before (`churn_red_progress`), by the
    daily rollup's index by day, keeping the customers whose last purchase day it is; the
    customers whose last purchase day moved behind that scan (a refund, a backdated order:
    `churn_red_checks`); and, when an open complaint is red, the customers with one. The
    event's key in `event_marks` still decides whether it is emitted."""
    now = clock.now()
    emitted = 0

    async def emit_red(connection: asyncpg.Connection, rules: RiskRules, row: asyncpg.Record) -> int:
        if row["last_day"] is None:  # bought nothing now (all returned): no lapse to measure
            return 0
        risk = churn_risk(_signals(row), rules)
        if risk.colour is not Colour.RED:
            return 0
        key = f"{CHURN_RED_MARK}:{row['customer_id']}:{row['last_day'].isoformat()}"
        red = ChurnRiskRed(customer_id=row["customer_id"], days_since_last_order=row["days_inactive"], rule=risk.rule)
        told = await emit_once(
            connection, program_id, key, EventType.CHURN_RISK_RED, red, row["customer_id"], occurred_at=now
        )
        return int(told)

    # the days that crossed the cutoff, under the progress row's lock (two workers take turns)
    while True:
        async with transaction() as connection:
            rules, today = await _context(connection, program_id, now)
            zone = (await ledger_settings(connection, program_id)).zone
            settled = (now - SETTLED).astimezone(zone).date() - timedelta(days=1)
            through = min(today - timedelta(days=rules.red_inactive_days), settled)
            await connection.execute(
                "INSERT INTO churn_red_progress (program_id) VALUES ($1) ON CONFLICT (program_id) DO NOTHING",
                program_id,
            )
            after: date | None = await connection.fetchval(
                "SELECT scanned_through FROM churn_red_progress WHERE program_id = $1 FOR UPDATE", program_id
            )
            lapsed = await connection.fetch(
                "SELECT * FROM churn_red_lapsed($1, $2, $3, $4, $5, $6)",
                program_id,
                today,
                after,
                through,
                CHURN_RED_MARK,
                batch,
            )
            for row in lapsed:
                emitted += await emit_red(connection, rules, row)
            # every day before the last one read was read whole; the last one too when the
            # batch was not full (what was told leaves the next read by its mark)
            done = through if len(lapsed) < batch else lapsed[-1]["last_day"] - timedelta(days=1)
            await connection.execute(
                "UPDATE churn_red_progress SET scanned_through = $2"
                " WHERE program_id = $1 AND (scanned_through IS NULL OR scanned_through < $2)",
                program_id,
                done,
            )
        if len(lapsed) < batch:
            break

    # customers whose last purchase day was written behind the scan. A row goes once its
    # customer is told, bought nothing, or is ahead of the scan again (the scan will meet
    # them); one behind the scan and not red yet (the rule was lengthened) stays until red.
    after_customer: str | None = None
    while True:
        async with transaction() as connection:
            rules, today = await _context(connection, program_id, now)
            scanned: date | None = await connection.fetchval(
                "SELECT scanned_through FROM churn_red_progress WHERE program_id = $1", program_id
            )
            flagged = await connection.fetch(
                "SELECT * FROM churn_red_flagged($1, $2, $3, $4, $5)",
                program_id,
                today,
                after_customer,
                CHURN_RED_MARK,
                batch,
            )
            done = []
            for row in flagged:
                told = row["told"] or bool(await emit_red(connection, rules, row))
                emitted += int(told and not row["told"])
                if told or row["last_day"] is None or scanned is None or row["last_day"] > scanned:
                    done.append(row)
            if done:
                # unless a refund or an order wrote it again meanwhile
                await connection.execute(
                    "DELETE FROM churn_red_checks k USING unnest($2::text[], $3::date[]) AS x(customer_id, last_day)"
                    " WHERE k.program_id = $1 AND k.customer_id = x.customer_id"
                    " AND k.last_day IS NOT DISTINCT FROM x.last_day",
                    program_id,
                    [row["customer_id"] for row in done],
                    [row["flagged_day"] for row in done],
                )
        if len(flagged) < batch:
            break
        after_customer = flagged[-1]["customer_id"]

    # customers with an open complaint, red whatever their last purchase day
    after_customer = None
    while True:
        async with transaction() as connection:
            rules, today = await _context(connection, program_id, now)
            if not rules.red_on_open_complaint:
                return emitted
            complaining = await connection.fetch(
                "SELECT * FROM churn_red_complaints($1, $2, $3, $4, $5)",
                program_id,
                today,
                after_customer,
                CHURN_RED_MARK,
                batch,
            )
            for row in complaining:
                emitted += await emit_red(connection, rules, row)
        if len(complaining) < batch:
            return emitted
        after_customer = complaining[-1]["customer_id"]
