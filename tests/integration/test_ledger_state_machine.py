"""A hypothesis state machine drives the real ledger on PostgreSQL next to an in-memory model.

Hypothesis state machines are synchronous and the ledger is async on the session event loop,
so the machine runs in a worker thread (asyncio.to_thread) and hands each coroutine to the
session loop with run_coroutine_threadsafe: the loop stays free while the thread blocks.

The model keeps, per customer account, its points by expiry date (what the lots must hold:
spends take the soonest-expiring points, credits that move points take over their dates,
latest-expiring first), the system accounts' totals, the holds and the entries. After every
step the database must agree with it, the ledger invariants must hold, a refused operation
must have changed nothing, and the hash chain must verify once sealed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from service.db.ledger import WrittenEntry
from service.domain.access import Principal
from service.domain.clock import ManualClock
from service.domain.errors import (
    AlreadyReversed,
    Conflict,
    DomainError,
    HoldNotOpen,
    IdempotencyKeyReused,
    InsufficientPoints,
    InvalidInput,
)
from service.domain.expiry import ExpiryPolicy, ExpiryRule, expires_at
from service.domain.ledger import Unit
from service.usecases import ledger, ledger_jobs
from service.usecases.finance import verify_chain
from tests.conftest import make_program
from tests.integration.ledger_helpers import admin, enrol, ledger_invariants

T = TypeVar("T")

ZONE = "Europe/Amsterdam"
RULE = ExpiryRule(ExpiryPolicy.DAYS, 30)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Expiry = datetime | None  # a lot's expiry; None never expires
SPENDABLE = {Unit.POINTS: "available", Unit.CREDIT: "credit_available"}
HELD = {Unit.POINTS: "held", Unit.CREDIT: "credit_held"}
CUSTOMER_KINDS = ("available", "pending", "held", "credit_available", "credit_held", "owed")

units = st.sampled_from([Unit.POINTS, Unit.POINTS, Unit.CREDIT])


def recent_or_any(items: list[T]) -> st.SearchStrategy[T]:
    """One of the last few items (what a client acts on next, mostly), or any."""
    return st.one_of(st.sampled_from(items[-3:]), st.sampled_from(items))


def soonest_first(expiry: Expiry) -> tuple[bool, datetime]:
    return (expiry is None, expiry or EPOCH)


class Points:
    """One customer account in the model: how many points expire when."""

    def __init__(self) -> None:
        self.by_expiry: dict[Expiry, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_expiry.values())

    def add(self, expiry: Expiry, amount: int) -> None:
        if amount:
            self.by_expiry[expiry] = self.by_expiry.get(expiry, 0) + amount

    def take_soonest(self, amount: int) -> list[tuple[Expiry, int]]:
        """Remove amount, soonest-expiring first; what was taken, soonest first."""
        taken: list[tuple[Expiry, int]] = []
        for expiry in sorted(self.by_expiry, key=soonest_first):
            if amount == 0:
                break
            part = min(amount, self.by_expiry[expiry])
            taken.append((expiry, part))
            amount -= part
            self.by_expiry[expiry] -= part
            if self.by_expiry[expiry] == 0:
                del self.by_expiry[expiry]
        assert amount == 0, "the model spent more than it had"
        return taken

    def take_from(self, expiry: Expiry, amount: int) -> None:
        """Remove amount of the points expiring at expiry."""
        assert self.by_expiry.get(expiry, 0) >= amount, "the model has fewer points of that date"
        self.add(expiry, -amount)
        if self.by_expiry.get(expiry) == 0:
            del self.by_expiry[expiry]

    def take_over(self, pool: list[tuple[Expiry, int]], amount: int) -> None:
        """Credit amount out of moved points, latest-expiring first."""
        for expiry, part in sorted(pool, key=lambda item: soonest_first(item[0]), reverse=True):
            if amount == 0:
                break
            used = min(part, amount)
            self.add(expiry, used)
            amount -= used
        assert amount == 0, "the model moved more than it took"


@dataclass
class ModelEntry:
    """An entry the machine knows of, with what reversing it should do."""

    id: int
    kind: str  # grant, deduct, expiry, reversal, hold
    customer: str = ""
    unit: Unit = Unit.POINTS
    amount: int = 0
    consumed: list[tuple[Expiry, int]] = field(default_factory=list)
    expiry: Expiry = None  # of the lot a grant created
    reversed: bool = False


@dataclass
class ModelHold:
    id: str
    customer: str
    unit: Unit
    amount: int
    expires_at: datetime
    reserved: list[tuple[Expiry, int]] = field(default_factory=list)  # the points it holds, by date
    status: str = "open"
    captured: int = 0


@dataclass
class Call:
    """An idempotent call already made: its key, how to make it again, and what it gave."""

    key: str
    again: Callable[[], Awaitable[Any]]
    outcome: Any  # the result, or the DomainError it raised


@dataclass(frozen=True)
class Snapshot:
    entries: int
    postings: int
    accounts: tuple[tuple[str, int | None, int], ...]
    lots: tuple[tuple[int, int], ...]
    holds: tuple[tuple[str, str, int], ...]


def same_outcome(first: Any, second: Any) -> bool:
    if isinstance(first, DomainError) or isinstance(second, DomainError):
        return type(first) is type(second) and (first.detail, first.field, first.extra) == (
            second.detail,
            second.field,
            second.extra,
        )
    return bool(first == second)


def ledger_machine(
    loop: asyncio.AbstractEventLoop, clock: ManualClock, owner: asyncpg.Connection
) -> type[RuleBasedStateMachine]:
    """The machine class, bound to the session loop, the app's clock and an owner connection."""
    start = clock.now()  # every example starts at the same instant, so examples replay exactly

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.program_id = ""
            self.who: Principal
            self.customers: list[str] = []
            self.accounts: dict[tuple[str, str], Points] = {}
            self.system: dict[str, int] = {}
            self.entries: list[ModelEntry] = []
            self.holds: list[ModelHold] = []
            self.calls: list[Call] = []
            self.keys = 0
            self.sealed = 0

        # --- plumbing ---------------------------------------------------------------

        def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=120)

        def attempt(self, make: Callable[[], Awaitable[T]]) -> T | DomainError:
            async def call() -> T | DomainError:
                try:
                    return await make()
                except DomainError as refusal:
                    return refusal

            return self.run(call())

        def new_key(self) -> str:
            self.keys += 1
            return f"key-{self.keys}"

        def idempotent(self, make: Callable[[str], Awaitable[T]]) -> T | DomainError:
            """Make a call under a fresh key and remember it for replays."""
            key = self.new_key()
            outcome = self.attempt(lambda: make(key))
            self.calls.append(Call(key, lambda: make(key), outcome))
            return outcome

        def points(self, customer: str, kind: str) -> Points:
            return self.accounts[(customer, kind)]

        def move_system(self, kind: str, amount: int) -> None:
            self.system[kind] = self.system.get(kind, 0) + amount

        def snapshot(self) -> Snapshot:
            async def read() -> Snapshot:
                counts = await owner.fetchrow(
                    "SELECT (SELECT count(*) FROM entries WHERE program_id = $1) AS entries,"
                    " (SELECT count(*) FROM postings WHERE program_id = $1) AS postings",
                    self.program_id,
                )
                accounts = await owner.fetch(
                    "SELECT code, balance, version FROM accounts WHERE program_id = $1 ORDER BY code",
                    self.program_id,
                )
                lots = await owner.fetch(
                    "SELECT id, remaining FROM lots WHERE program_id = $1 ORDER BY id",
                    self.program_id,
                )
                holds = await owner.fetch(
                    "SELECT id, status, captured FROM holds WHERE program_id = $1 ORDER BY id",
                    self.program_id,
                )
                assert counts is not None
                return Snapshot(
                    counts["entries"],
                    counts["postings"],
                    tuple((r["code"], r["balance"], r["version"]) for r in accounts),
                    tuple((r["id"], r["remaining"]) for r in lots),
                    tuple((r["id"], r["status"], r["captured"]) for r in holds),
                )

            return self.run(read())

        def expect_refusal(self, outcome: object, refusal: type[DomainError], before: Snapshot) -> None:
            assert type(outcome) is refusal, f"expected {refusal.__name__}, got {outcome!r}"
            assert self.snapshot() == before, "a refused operation changed the ledger"

        def expect_entries(self, before: Snapshot, added: int) -> None:
            after = self.snapshot()
            assert after.entries == before.entries + added, (before.entries, after.entries, added)

        def balance_after(self, entry: WrittenEntry, code: str) -> int | None:
            return next(p.balance_after for p in entry.postings if p.account == code)

        # --- setup ------------------------------------------------------------------

        @initialize(
            count=st.integers(2, 3),
            opening=st.integers(1, 1000),
            since=st.sampled_from([timedelta(0), timedelta(days=2), timedelta(days=20)]),
        )
        def open_program(self, count: int, opening: int, since: timedelta) -> None:
            clock.set(start)

            async def setup() -> tuple[str, list[str]]:
                program = await make_program("State machine", ZONE)
                await ledger.set_expiry_rule(program.id, RULE)
                customers = [await enrol(program.id, f"cust-{n}", clock) for n in range(count)]
                return program.id, customers

            self.program_id, self.customers = self.run(setup())
            self.who = admin(self.program_id)
            for customer in self.customers:
                for kind in CUSTOMER_KINDS:
                    self.accounts[(customer, kind)] = Points()
            for customer in self.customers:  # something to spend from the first step on
                self.grant_to(customer, Unit.POINTS, opening)
                self.grant_to(customer, Unit.CREDIT, opening)
            clock.advance(since)  # so that points earned from now on expire on another day

        # --- grants and deductions --------------------------------------------------

        @rule(data=st.data(), unit=units, amount=st.integers(1, 500))
        def grant(self, data: st.DataObject, unit: Unit, amount: int) -> None:
            self.grant_to(data.draw(st.sampled_from(self.customers), label="customer"), unit, amount)

        def grant_to(self, customer: str, unit: Unit, amount: int) -> None:
            request = ledger.Adjustment(customer_id=customer, amount=amount, unit=unit, reason="grant")
            before = self.snapshot()
            entry = self.idempotent(lambda key: ledger.adjust(self.who, request, key, clock))
            assert isinstance(entry, WrittenEntry), entry
            expiry = None
            if unit is Unit.POINTS:
                expiry = expires_at(RULE, clock.now(), ZoneInfo(ZONE))
                expiry = expiry.astimezone(UTC) if expiry else None
            account = self.points(customer, SPENDABLE[unit])
            account.add(expiry, amount)
            self.move_system("issued" if unit is Unit.POINTS else "credit_issued", -amount)
            code = f"customer:{customer}:{SPENDABLE[unit]}"
            assert self.balance_after(entry, code) == account.total
            self.entries.append(ModelEntry(entry.id, "grant", customer, unit, amount, expiry=expiry))
            self.expect_entries(before, 1)

        @rule(data=st.data(), unit=units, amount=st.integers(1, 400))
        def deduct(self, data: st.DataObject, unit: Unit, amount: int) -> None:
            customer = data.draw(st.sampled_from(self.customers), label="customer")
            request = ledger.Adjustment(customer_id=customer, amount=-amount, unit=unit, reason="deduct")
            account = self.points(customer, SPENDABLE[unit])
            before = self.snapshot()
            outcome = self.idempotent(lambda key: ledger.adjust(self.who, request, key, clock))
            if amount > account.total:
                self.expect_refusal(outcome, InsufficientPoints, before)
                assert isinstance(outcome, InsufficientPoints)
                assert outcome.extra["available"] == account.total
                return
            assert isinstance(outcome, WrittenEntry), outcome
            consumed = account.take_soonest(amount)
            self.move_system("adjustments" if unit is Unit.POINTS else "credit_issued", amount)
            assert self.balance_after(outcome, f"customer:{customer}:{SPENDABLE[unit]}") == account.total
            self.entries.append(ModelEntry(outcome.id, "deduct", customer, unit, amount, consumed))
            self.expect_entries(before, 1)

        # --- holds ------------------------------------------------------------------

        @rule(
            data=st.data(),
            unit=units,
            amount=st.integers(1, 300),
            seconds=st.sampled_from([60, 3600, 2 * 86400]),
        )
        def hold(self, data: st.DataObject, unit: Unit, amount: int, seconds: int) -> None:
            customer = data.draw(st.sampled_from(self.customers), label="customer")
            request = ledger.HoldRequest(customer_id=customer, amount=amount, unit=unit, expires_in_seconds=seconds)
            spendable = self.points(customer, SPENDABLE[unit])
            before = self.snapshot()
            outcome = self.idempotent(lambda key: ledger.hold_points(self.who, request, key, clock))
            if amount > spendable.total:
                self.expect_refusal(outcome, InsufficientPoints, before)
                return
            assert isinstance(outcome, ledger.Hold), outcome
            assert (outcome.status, outcome.amount, outcome.captured) == ("open", amount, 0)
            assert outcome.expires_at == clock.now() + timedelta(seconds=seconds)
            reserved = spendable.take_soonest(amount)
            self.points(customer, HELD[unit]).take_over(reserved, amount)
            expires_at = clock.now() + timedelta(seconds=seconds)
            self.holds.append(ModelHold(outcome.id, customer, unit, amount, expires_at, reserved))
            self.entries.append(ModelEntry(outcome.authorize_entry_id, "hold"))
            self.expect_entries(before, 1)

        def release(self, hold: ModelHold, captured: int, status: str) -> None:
            """The model's side of resolving an open hold: it takes out the points it reserved."""
            held = self.points(hold.customer, HELD[hold.unit])
            for expiry, part in hold.reserved:
                held.take_from(expiry, part)
            self.points(hold.customer, SPENDABLE[hold.unit]).take_over(hold.reserved, hold.amount - captured)
            self.move_system("redeemed" if hold.unit is Unit.POINTS else "credit_redeemed", captured)
            hold.status, hold.captured = status, captured

        def resolved(self, hold: ModelHold, outcome: object, before: Snapshot) -> None:
            assert isinstance(outcome, ledger.Hold), outcome
            assert (outcome.status, outcome.captured) == (hold.status, hold.captured)
            assert outcome.resolve_entry_id is not None
            self.entries.append(ModelEntry(outcome.resolve_entry_id, "hold"))
            self.expect_entries(before, 1)

        @precondition(lambda self: bool(self.holds))
        @rule(data=st.data(), part=st.one_of(st.none(), st.integers(0, 320)))
        def capture(self, data: st.DataObject, part: int | None) -> None:
            hold = data.draw(recent_or_any(self.holds), label="hold")
            before = self.snapshot()
            outcome = self.idempotent(lambda key: ledger.capture_hold(self.who, hold.id, part, key, clock))
            if hold.status != "open" or clock.now() >= hold.expires_at:  # expired: only a void or the job
                self.expect_refusal(outcome, HoldNotOpen, before)
                return
            captured = hold.amount if part is None else part
            if captured > hold.amount:
                self.expect_refusal(outcome, InvalidInput, before)
                return
            self.release(hold, captured, "captured")
            self.resolved(hold, outcome, before)

        @precondition(lambda self: bool(self.holds))
        @rule(data=st.data())
        def void(self, data: st.DataObject) -> None:
            hold = data.draw(recent_or_any(self.holds), label="hold")
            before = self.snapshot()
            outcome = self.idempotent(lambda key: ledger.void_hold(self.who, hold.id, key, clock))
            if hold.status != "open":
                self.expect_refusal(outcome, HoldNotOpen, before)
                return
            self.release(hold, 0, "voided")
            self.resolved(hold, outcome, before)

        # --- jobs and time ----------------------------------------------------------

        @rule(
            delta=st.sampled_from(
                [
                    timedelta(minutes=5),
                    timedelta(hours=3),
                    timedelta(days=1),
                    timedelta(days=8),
                    timedelta(days=31),
                ]
            )
        )
        def advance_clock(self, delta: timedelta) -> None:
            clock.advance(delta)

        @rule()
        def expire_holds(self) -> None:
            due = [h for h in self.holds if h.status == "open" and h.expires_at <= clock.now()]
            before = self.snapshot()
            assert self.run(ledger_jobs.expire_holds(self.program_id, clock)) == len(due)
            for hold in due:
                self.release(hold, 0, "expired")
            self.expect_entries(before, len(due))

        @rule()
        def expire_points(self) -> None:
            now = clock.now()
            due: dict[str, list[tuple[Expiry, int]]] = {}
            for customer in self.customers:
                account = self.points(customer, "available")
                amount = sum(n for expiry, n in account.by_expiry.items() if expiry and expiry <= now)
                if amount:
                    due[customer] = account.take_soonest(amount)
                    self.move_system("expired", amount)
            last = max((entry.id for entry in self.entries), default=0)
            before = self.snapshot()
            assert self.run(ledger_jobs.expire_points(self.program_id, clock)) == len(due)
            self.expect_entries(before, len(due))
            rows = self.run(
                owner.fetch(
                    "SELECT e.id, a.customer_id, -p.amount AS amount FROM entries e"
                    " JOIN postings p ON p.program_id = e.program_id AND p.entry_id = e.id"
                    " JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
                    " WHERE e.program_id = $1 AND e.kind = 'expiry' AND e.id > $2"
                    " AND a.customer_id IS NOT NULL ORDER BY e.id",
                    self.program_id,
                    last,
                )
            )
            expired = {row["customer_id"]: row["amount"] for row in rows}
            assert expired == {c: sum(n for _, n in taken) for c, taken in due.items()}
            for row in rows:
                customer = row["customer_id"]
                self.entries.append(
                    ModelEntry(row["id"], "expiry", customer, Unit.POINTS, row["amount"], due[customer])
                )

        # --- reversals --------------------------------------------------------------

        @precondition(lambda self: bool(self.entries))
        @rule(data=st.data())
        def reverse(self, data: st.DataObject) -> None:
            original = data.draw(recent_or_any(self.entries), label="entry")
            # the reversal takes back what is left of the grant's own lot first (asked of
            # the database: which same-dated lot a spend drew on is the lots' business)
            left: int = self.run(
                owner.fetchval(
                    "SELECT coalesce(sum(remaining), 0) FROM lots WHERE program_id = $1 AND entry_id = $2",
                    self.program_id,
                    original.id,
                )
            )
            before = self.snapshot()
            outcome = self.idempotent(lambda key: ledger.reverse(self.who, original.id, "mistake", key, clock))
            if original.kind in ("hold", "reversal"):
                self.expect_refusal(outcome, Conflict, before)
                return
            if original.reversed:
                self.expect_refusal(outcome, AlreadyReversed, before)
                return
            account = self.points(original.customer, SPENDABLE[original.unit])
            if original.kind == "grant":
                if account.total < original.amount:
                    self.expect_refusal(outcome, InsufficientPoints, before)
                    return
                own = min(left, original.amount)
                account.take_from(original.expiry, own)
                account.take_soonest(original.amount - own)
                self.move_system("issued" if original.unit is Unit.POINTS else "credit_issued", original.amount)
            else:  # a deduction or an expiry: the points come back with their own dates
                account.take_over(original.consumed, original.amount)
                sink = {"deduct": "adjustments", "expiry": "expired"}[original.kind]
                if original.unit is Unit.CREDIT:
                    sink = "credit_issued"
                self.move_system(sink, -original.amount)
            assert isinstance(outcome, WrittenEntry), outcome
            assert outcome.reverses_entry_id == original.id
            original.reversed = True
            self.entries.append(ModelEntry(outcome.id, "reversal"))
            self.expect_entries(before, 1)

        # --- idempotency ------------------------------------------------------------

        @precondition(lambda self: bool(self.calls))
        @rule(data=st.data())
        def replay_same_request(self, data: st.DataObject) -> None:
            call = data.draw(recent_or_any(self.calls), label="call")
            before = self.snapshot()
            outcome = self.attempt(call.again)
            assert same_outcome(call.outcome, outcome), (call.outcome, outcome)
            assert self.snapshot() == before, "a replay changed the ledger"

        @precondition(lambda self: bool(self.calls))
        @rule(data=st.data())
        def replay_other_request(self, data: st.DataObject) -> None:
            call = data.draw(recent_or_any(self.calls), label="call")
            request = ledger.Adjustment(customer_id=self.customers[0], amount=1, reason=f"not {call.key}")
            before = self.snapshot()
            outcome = self.attempt(lambda: ledger.adjust(self.who, request, call.key, clock))
            self.expect_refusal(outcome, IdempotencyKeyReused, before)

        # --- after every step -------------------------------------------------------

        @invariant()
        def agrees_with_the_database(self) -> None:
            async def read() -> tuple[Any, ...]:
                await ledger_invariants(owner, self.program_id)
                balances = await owner.fetch(
                    "SELECT customer_id, kind, balance FROM accounts WHERE program_id = $1 AND customer_id IS NOT NULL",
                    self.program_id,
                )
                lots = await owner.fetch(
                    "SELECT a.customer_id, a.kind, l.expires_at,"
                    " sum(l.remaining)::bigint AS remaining FROM lots l"
                    " JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
                    " WHERE l.program_id = $1 AND l.remaining > 0"
                    " GROUP BY a.customer_id, a.kind, l.expires_at",
                    self.program_id,
                )
                system = await owner.fetch(
                    "SELECT a.kind, sum(p.amount)::bigint AS total FROM accounts a"
                    " JOIN postings p ON p.program_id = a.program_id AND p.account_id = a.id"
                    " WHERE a.program_id = $1 AND a.customer_id IS NULL GROUP BY a.kind",
                    self.program_id,
                )
                holds = await owner.fetch(
                    "SELECT id, status, captured FROM holds WHERE program_id = $1", self.program_id
                )
                sealed = await ledger_jobs.seal_chain(self.program_id)
                report = await verify_chain(self.program_id)
                return balances, lots, system, holds, sealed, report

            balances, lots, system, holds, sealed, report = self.run(read())
            assert {(r["customer_id"], r["kind"]): r["balance"] for r in balances} == {
                key: points.total for key, points in self.accounts.items()
            }
            in_lots: dict[tuple[str, str], dict[Expiry, int]] = {}
            for row in lots:
                in_lots.setdefault((row["customer_id"], row["kind"]), {})[row["expires_at"]] = row["remaining"]
            assert in_lots == {key: dict(points.by_expiry) for key, points in self.accounts.items() if points.total}
            assert {r["kind"]: r["total"] for r in system if r["total"]} == {
                kind: total for kind, total in self.system.items() if total
            }
            assert {r["id"]: (r["status"], r["captured"]) for r in holds} == {
                h.id: (h.status, h.captured) for h in self.holds
            }
            self.sealed += sealed
            assert report.valid, report
            assert report.unsealed == 0, report
            assert report.sealed == report.last_seq == self.sealed == self.snapshot().entries

    return LedgerMachine


async def test_ledger_agrees_with_its_model(
    database: str, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    machine = ledger_machine(asyncio.get_running_loop(), clock, owner_connection)
    await asyncio.to_thread(
        run_state_machine_as_test,
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
