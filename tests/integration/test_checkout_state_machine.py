"""A hypothesis state machine over checkout as a whole, on the real database: orders earn into
`pending` (earning rules with a category multiplier, capped campaigns, an order cap and a
tier ladder), refunds by lines and by amount under either return policy, the release job,
redemptions (hold, capture, void, expiry) of available points, orders paid with a captured
hold (whose refunds give the redeemed points back, in proportion, with the dates of the
points the capture spent), points expiry, admin grants and deductions, the service's
scheduled jobs, replays under idempotency keys, and time passing; two shops, which may give
their orders the same id.

The model keeps each customer's balances (and their points by expiry date, as lots must
hold them), their orders and refunds, holds and tier. After every step the database must
agree with it and the features must agree with each other:
the ledger balances per unit, balances equal postings and lots, no customer account is on
the wrong side of zero (`owed` is a debt: zero or below), each customer's `pending` is what
their unreleased orders still have pending, an order's `clawed_back` is its refunds' points
(and its `points_returned` what its refunds gave back, all it redeemed once fully refunded),
a released order has a release entry when something was pending, GET of an order shows the
stored rows, the campaign bonus each customer keeps stays within the cap, the tier measure
is the sum over the orders in the window, and the chain verifies once sealed. A refused
step changes nothing. (Machinery as in test_ledger_state_machine.py: the machine runs in a
worker thread and hands coroutines to the session loop.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
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

from service.domain.access import Principal
from service.domain.clock import ManualClock
from service.domain.earning import (
    Award,
    Campaign,
    EarningRules,
    Order,
    OrderLine,
    Refund,
    RefundLine,
    bonus_kept,
    calculate_award,
    claw_back,
)
from service.domain.errors import (
    Conflict,
    DomainError,
    HoldNotCaptured,
    HoldNotCapturedYet,
    HoldNotOpen,
    InsufficientPoints,
    InvalidInput,
    NotFound,
    NotYetThere,
)
from service.domain.expiry import ExpiryPolicy, ExpiryRule, expires_at
from service.domain.orders import ReturnPolicy, ReturnSettings, release_at
from service.domain.tiers import Basis, TierConfig, Window, qualified, window_start
from service.usecases import jobs, ledger, ledger_jobs, orders, tiers
from service.usecases.earning_rules import RulesDraft, publish_rules
from service.usecases.finance import verify_chain
from service.usecases.programs import create_shop
from tests.conftest import make_program
from tests.integration.ledger_helpers import admin, checkout, enrol, ledger_invariants
from tests.integration.test_ledger_state_machine import Expiry, Points, soonest_first

T = TypeVar("T")

ZONE = ZoneInfo("Europe/Amsterdam")
START = datetime(2026, 4, 1, 10, 0, tzinfo=UTC)  # every example starts here, so examples replay
KINDS = ("available", "pending", "held", "owed")
UNKNOWN_CUSTOMER = "cus_00000000000000000000000000"
CAMPAIGNS = (
    Campaign(
        name="double-tea",
        starts_on=date(2026, 3, 1),
        ends_on=date(2026, 6, 30),
        categories=frozenset({"tea"}),
        multiplier_bp=20_000,
        customer_cap=120,
    ),
    Campaign(name="welcome", starts_on=date(2026, 3, 1), ends_on=date(2026, 6, 30), bonus_points=25, customer_cap=60),
)
RULES = RulesDraft(
    currency="EUR",
    points_per_unit=7,
    unit_minor=300,
    category_multipliers={"coffee": 15_000},
    campaigns=CAMPAIGNS,
    order_cap=400,
)
THRESHOLDS = {Basis.POINTS: (150, 500), Basis.SPEND: (6000, 20000)}  # silver, gold


def ladder(basis: Basis, window: Window) -> TierConfig:
    silver, gold = THRESHOLDS[basis]
    levels = [
        {"code": "bronze", "name": "Bronze", "threshold": 0},
        {"code": "silver", "name": "Silver", "threshold": silver, "earn_multiplier_bp": 15_000},
        {"code": "gold", "name": "Gold", "threshold": gold, "earn_multiplier_bp": 20_000},
    ]
    return msgspec.convert({"basis": basis, "window": window, "levels": levels}, TierConfig)


@st.composite
def order_lines(draw: st.DrawFn) -> tuple[OrderLine, ...]:
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        price = draw(st.sampled_from([0, 150, 999, 2500, 4000]))
        quantity = draw(st.integers(1, 3))
        discount = draw(st.sampled_from([0, 0, 0, price * quantity // 3]))
        category = draw(st.sampled_from(["coffee", "tea", "cups"]))
        lines.append(
            OrderLine(
                sku=f"{category}-{price}", category=category, unit_price=price, quantity=quantity, discount=discount
            )
        )
    return tuple(lines)


@dataclass
class ModelRefund:
    id: str
    request: Refund
    refunded_net: int
    points: int
    from_pending: int
    from_available: int
    owed: int
    forgiven: int
    has_entry: bool
    returned: int = 0  # of the points the order's hold paid with


@dataclass
class ModelHold:
    id: str
    customer: str
    amount: int
    expires_at: datetime
    reserved: list[tuple[Expiry, int]] = field(default_factory=list)  # the points it holds, by date
    status: str = "open"
    captured: int = 0
    spent: list[tuple[Expiry, int]] = field(default_factory=list)  # what the capture spent, by date
    pays_for: str | None = None  # the order it paid for


@dataclass
class ModelOrder:
    shop: str
    id: str
    customer: str
    order: Order
    award: Award
    release_at: datetime
    expiry: Expiry  # of its award's lot
    pending: int  # of its award, still on pending
    refunded_net: int = 0
    clawed_back: int = 0
    released: bool = False
    has_release_entry: bool = False
    refunds: list[ModelRefund] = field(default_factory=list)
    hold: ModelHold | None = None  # the captured hold that paid for it
    returned: int = 0  # of what the hold spent, given back by refunds


def returned_part(spent: list[tuple[Expiry, int]], before: int, amount: int) -> list[tuple[Expiry, int]]:
    """What a refund gives back of the points a capture spent: latest-expiring first, after
    the `before` points earlier refunds gave back."""
    back: list[tuple[Expiry, int]] = []
    for expiry, part in sorted(spent, key=lambda item: soonest_first(item[0]), reverse=True):
        skipped = min(before, part)
        before -= skipped
        taken = min(part - skipped, amount)
        if taken:
            back.append((expiry, taken))
            amount -= taken
    assert amount == 0, "the model gave back more than was spent"
    return back


@dataclass(frozen=True)
class Snapshot:
    tables: tuple[tuple[Any, ...], ...]


def checkout_machine(
    loop: asyncio.AbstractEventLoop, clock: ManualClock, owner: asyncpg.Connection
) -> type[RuleBasedStateMachine]:
    class CheckoutMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.program_id = ""
            self.shop_id = ""
            self.shops: list[str] = []
            self.calls: list[tuple[Callable[[], Coroutine[Any, Any, Any]], Any]] = []  # to replay: same answer
            self.who: Principal
            self.till: Principal
            self.earning_rules: EarningRules
            self.ladder: TierConfig
            self.returns = ReturnSettings()
            self.customers: list[str] = []
            self.balances: dict[str, dict[str, int]] = {}
            self.lots: dict[tuple[str, str], Points] = {}  # (customer, kind): points by expiry
            self.expiry = ExpiryRule()
            self.earned: dict[str, str | None] = {}  # tier row's earned code; None: no row yet
            self.orders: list[ModelOrder] = []
            self.sent: set[tuple[str, str]] = set()  # (shop, order id) of every order sent, refused ones too
            self.holds: list[ModelHold] = []
            self.serial = 0

        # --- plumbing ---------------------------------------------------------------

        def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=120)

        def attempt(self, coroutine: Coroutine[Any, Any, T]) -> T | DomainError:
            async def call() -> T | DomainError:
                try:
                    return await coroutine
                except DomainError as refusal:
                    return refusal

            return self.run(call())

        def replayable(self, make: Callable[[str], Coroutine[Any, Any, T]], prefix: str) -> T | DomainError:
            """Call under a fresh idempotency key, and remember the call for replays."""
            key = self.next_id(prefix)
            outcome = self.attempt(make(key))
            self.calls.append((lambda: make(key), outcome))
            return outcome

        def next_id(self, prefix: str) -> str:
            self.serial += 1
            return f"{prefix}{self.serial:05d}"

        def snapshot(self) -> Snapshot:
            queries = (
                "SELECT count(*) FROM entries WHERE program_id = $1",
                "SELECT count(*) FROM postings WHERE program_id = $1",
                "SELECT code, balance, version FROM accounts WHERE program_id = $1 ORDER BY code",
                "SELECT id, remaining FROM lots WHERE program_id = $1 ORDER BY id",
                "SELECT id, status, captured FROM holds WHERE program_id = $1 ORDER BY id",
                "SELECT shop_id, id, refunded_net, clawed_back, released_at, release_entry_id, redemption_hold_id,"
                " points_returned FROM orders WHERE program_id = $1 ORDER BY shop_id, id",
                "SELECT shop_id, order_id, id FROM refunds WHERE program_id = $1 ORDER BY shop_id, order_id, id",
                "SELECT customer_id, earned_code, effective_code, review_at FROM customer_tiers"
                " WHERE program_id = $1 ORDER BY customer_id",
                "SELECT count(*) FROM tier_changes WHERE program_id = $1",
                "SELECT count(*) FROM event_outbox WHERE program_id = $1",
                "SELECT customer_id, orders FROM customer_lifecycle WHERE program_id = $1 ORDER BY customer_id",
            )

            async def read() -> Snapshot:
                tables = []
                for query in queries:
                    rows = await owner.fetch(query, self.program_id)
                    tables.append(tuple(tuple(row.values()) for row in rows))
                return Snapshot(tuple(tables))

            return self.run(read())

        def expect_refusal(self, outcome: object, refusal: type[DomainError], before: Snapshot) -> None:
            assert type(outcome) is refusal, f"expected {refusal.__name__}, got {outcome!r}"
            assert self.snapshot() == before, "a refused step changed something"

        def kept(self, customer: str) -> dict[str, int]:
            """The campaign bonus the customer kept, net of refunds, per campaign."""
            totals: dict[str, int] = {}
            for order in self.orders:
                if order.customer == customer:
                    for name, bonus in order.award.campaign_bonus.items():
                        kept = bonus_kept(bonus, order.refunded_net, order.order.net)
                        totals[name] = totals.get(name, 0) + kept
            return totals

        def expires(self, earned_at: datetime) -> Expiry:
            expiry = expires_at(self.expiry, earned_at, ZONE)
            return expiry.astimezone(UTC) if expiry else None

        def own_lots_left(self, order: ModelOrder) -> int:
            """What is left on available of the lots the order's entries created (a refund takes
            those first; asked of the database, as which lot a spend drew on is the lots' business)."""
            left: int = self.run(
                owner.fetchval(
                    "SELECT coalesce(sum(l.remaining), 0)::bigint FROM lots l JOIN orders o"
                    " ON o.program_id = l.program_id AND l.entry_id IN (o.award_entry_id, o.release_entry_id)"
                    " JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id AND a.kind = 'available'"
                    " WHERE o.program_id = $1 AND o.shop_id = $2 AND o.id = $3",
                    self.program_id,
                    order.shop,
                    order.id,
                )
            )
            return left

        def measure(self, customer: str, now: datetime) -> int:
            since = window_start(self.ladder.window, now, ZONE)
            spend = self.ladder.basis is Basis.SPEND
            return sum(
                o.order.net - o.refunded_net if spend else o.award.total - o.clawed_back
                for o in self.orders
                if o.customer == customer and (since is None or o.order.placed_at >= since)
            )

        # --- setup ------------------------------------------------------------------

        @initialize(
            count=st.integers(1, 3),
            basis=st.sampled_from(list(Basis)),
            window=st.sampled_from(list(Window)),
            policy=st.sampled_from(list(ReturnPolicy)),
            days=st.sampled_from([0, 0, 14]),
            expiry=st.sampled_from(
                [
                    ExpiryRule(ExpiryPolicy.DAYS, 20),
                    ExpiryRule(ExpiryPolicy.DAYS, 60),
                    ExpiryRule(ExpiryPolicy.END_OF_MONTH, 1),
                    ExpiryRule(ExpiryPolicy.NEVER),
                ]
            ),
        )
        def open_program(
            self, count: int, basis: Basis, window: Window, policy: ReturnPolicy, days: int, expiry: ExpiryRule
        ) -> None:
            clock.set(START - timedelta(days=400))

            async def setup() -> tuple[str, str, list[str], EarningRules, TierConfig]:
                program = await make_program("Checkout machine", "Europe/Amsterdam")
                await ledger.set_expiry_rule(program.id, expiry)
                published = await publish_rules(admin(program.id), RULES, "rules", clock)
                config = ladder(basis, window)
                await tiers.configure(admin(program.id), config, "ladder", clock)
                await orders.set_return_settings(program.id, ReturnSettings(window_days=days, policy=policy))
                clock.set(START)
                customers = [await enrol(program.id, f"cust-{n}", clock) for n in range(count)]
                second = await create_shop(program.id, "Second shop")
                self.shops = [program.shop_id, second.id]
                return program.id, program.shop_id, customers, published.rules, config

            self.program_id, self.shop_id, self.customers, self.earning_rules, self.ladder = self.run(setup())
            self.returns = ReturnSettings(window_days=days, policy=policy)
            self.expiry = expiry
            self.who, self.till = admin(self.program_id), checkout(self.program_id)
            for customer in self.customers:
                self.balances[customer] = dict.fromkeys(KINDS, 0)
                for kind in ("available", "pending", "held"):
                    self.lots[(customer, kind)] = Points()
                self.earned[customer] = None

        # --- orders -----------------------------------------------------------------

        @rule(
            data=st.data(),
            lines=order_lines(),
            back=st.sampled_from([timedelta(0), timedelta(hours=3), timedelta(days=2), timedelta(days=40)]),
        )
        def place_order(self, data: st.DataObject, lines: tuple[OrderLine, ...], back: timedelta) -> None:
            customer = data.draw(st.sampled_from([*self.customers, UNKNOWN_CUSTOMER]), label="customer")
            now = clock.now()
            order = Order(currency="EUR", placed_at=now - back, lines=lines)
            shop = data.draw(st.sampled_from(self.shops), label="shop")
            # an id another shop gave its order, never sent to this shop (a refused order's id
            # is its key too: sent again with other content, it is a reuse)
            elsewhere = {o.id for o in self.orders if o.shop != shop} - {i for s, i in self.sent if s == shop}
            fresh = st.just(self.next_id("o"))  # or an id another shop gave its order
            order_id = data.draw(fresh | st.sampled_from(sorted(elsewhere)) if elsewhere else fresh, label="order id")
            hold = None
            if customer != UNKNOWN_CUSTOMER and self.holds:
                # now and then a hold: mostly one that may pay for it, else any (refused unless it may)
                payable = [h for h in self.holds if self.may_pay(h, customer)]
                choices = st.sampled_from(payable) if payable else st.none()
                hold = data.draw(st.none() | st.none() | choices | st.sampled_from(self.holds), label="hold")
            self.place(customer, shop, order_id, order, hold)

        @precondition(lambda self: any(self.balances[c]["available"] for c in self.customers))
        @rule(data=st.data(), lines=order_lines())
        def place_order_paid_with_points(self, data: st.DataObject, lines: tuple[OrderLine, ...]) -> None:
            """The customer redeems points at checkout (a hold, captured in full or in part) and
            the order names the hold as what paid for it."""
            customer = data.draw(st.sampled_from([c for c in self.customers if self.balances[c]["available"]]))
            available = self.balances[customer]["available"]
            amount = data.draw(st.integers(1, available) | st.just(available), label="amount")
            hold = self.redeem(customer, amount, data.draw(st.booleans(), label="in part"))
            order = Order(currency="EUR", placed_at=clock.now(), lines=lines)
            self.place(customer, data.draw(st.sampled_from(self.shops), label="shop"), self.next_id("o"), order, hold)

        def place(self, customer: str, shop: str, order_id: str, order: Order, hold: ModelHold | None) -> None:
            now = clock.now()
            redemption = None if hold is None else hold.id
            placement = orders.OrderPlacement(
                order_id=order_id, customer_id=customer, order=order, redemption_hold_id=redemption
            )
            before = self.snapshot()
            self.sent.add((shop, order_id))
            outcome = self.attempt(orders.place_order(self.till, shop, placement, clock))
            if customer == UNKNOWN_CUSTOMER:
                self.expect_refusal(outcome, NotYetThere, before)
                return
            if hold is not None and not self.may_pay(hold, customer):
                self.expect_refusal(outcome, self.hold_refusal(hold, customer), before)
                return
            earned = self.earned[customer] or self.ladder.levels[0].code
            multiplier = self.ladder.level(earned).earn_multiplier_bp
            award = calculate_award(
                order, self.earning_rules, zone=ZONE, tier_multiplier_bp=multiplier, bonus_so_far=self.kept(customer)
            )
            assert isinstance(outcome, orders.OrderView), outcome
            assert (outcome.points, outcome.breakdown) == (award.total, award.breakdown), (outcome, award)
            due = release_at(order.placed_at, self.returns.window_days, ZONE)
            assert outcome.available_from == due
            assert (outcome.award_entry_id is None) == (award.total == 0)
            expiry = self.expires(due)  # the points' validity runs from their release
            self.orders.append(
                ModelOrder(shop, order_id, customer, order, award, due, expiry, pending=award.total, hold=hold)
            )
            if hold is not None:
                hold.pays_for = order_id
                assert (outcome.redemption_hold_id, outcome.points_redeemed) == (hold.id, hold.captured), outcome
            self.balances[customer]["pending"] += award.total
            self.lots[(customer, "pending")].add(expiry, award.total)
            # the tier: the order's measure (itself included) may move the customer up
            level = qualified(self.ladder, self.measure(customer, now))
            if self.ladder.rank(level.code) > self.ladder.rank(earned):
                earned = level.code
            self.earned[customer] = earned
            # the same order again is the same answer and changes nothing
            before = self.snapshot()
            assert self.attempt(orders.place_order(self.till, shop, placement, clock)) == outcome
            assert self.snapshot() == before

        @rule(
            data=st.data(),
            lines=order_lines(),
            wrong=st.sampled_from(["currency", "future", "before rules"]),
        )
        def place_refused_order(self, data: st.DataObject, lines: tuple[OrderLine, ...], wrong: str) -> None:
            customer = data.draw(st.sampled_from(self.customers), label="customer")
            now = clock.now()
            order = {
                "currency": Order(currency="USD", placed_at=now, lines=lines),
                "future": Order(currency="EUR", placed_at=now + timedelta(minutes=6), lines=lines),
                "before rules": Order(currency="EUR", placed_at=START - timedelta(days=401), lines=lines),
            }[wrong]
            placement = orders.OrderPlacement(order_id=self.next_id("o"), customer_id=customer, order=order)
            before = self.snapshot()
            outcome = self.attempt(orders.place_order(self.till, self.shop_id, placement, clock))
            self.expect_refusal(outcome, NotFound if wrong == "before rules" else InvalidInput, before)

        def may_pay(self, hold: ModelHold, customer: str) -> bool:
            return hold.customer == customer and hold.status == "captured" and hold.pays_for is None

        def hold_refusal(self, hold: ModelHold, customer: str) -> type[DomainError]:
            """How an order naming a hold that may not pay for it is refused."""
            if hold.customer != customer:
                return NotFound
            if hold.status == "open":
                return HoldNotCapturedYet if clock.now() < hold.expires_at else HoldNotCaptured
            return Conflict if hold.status == "captured" else HoldNotCaptured

        def refund(self, order: ModelOrder, request: Refund) -> None:
            refund_id = self.next_id("r")
            previous = [r.request for r in order.refunds]
            try:
                clawback = claw_back(order.order.lines, order.award, request, previous)
            except InvalidInput:
                clawback = None
            own = self.own_lots_left(order)
            before = self.snapshot()

            def again() -> Coroutine[Any, Any, orders.RefundView]:
                return orders.refund_order(self.till, order.shop, order.id, refund_id, request, clock)

            outcome = self.attempt(again())
            self.calls.append((again, outcome))
            if clawback is None:
                self.expect_refusal(outcome, InvalidInput, before)
                return
            assert isinstance(outcome, orders.RefundView), outcome
            balances = self.balances[order.customer]
            # the redeemed points come back first, with the dates of what the capture spent;
            # what the clawback leaves of them pays off a debt, the soonest-expiring first
            returned = 0 if order.hold is None else clawback.share(order.hold.captured)
            points = clawback.points
            from_pending = min(points, order.pending)
            from_available = min(points - from_pending, balances["available"] + returned)
            settled = 0
            if order.hold is not None and returned:
                settled = min(returned, -balances["owed"], balances["available"] + returned - from_available)
                back = returned_part(order.hold.spent, order.returned, returned)
                keep = returned - settled
                for expiry, part in back:  # latest-expiring first: those stay available
                    if keep:
                        self.lots[(order.customer, "available")].add(expiry, min(part, keep))
                    keep -= min(part, keep)
                balances["available"] += returned - settled
                balances["owed"] += settled
                order.returned += returned
            rest = points - from_pending - from_available
            owed = rest if self.returns.policy is ReturnPolicy.ALLOW_NEGATIVE else 0
            expected = ModelRefund(
                refund_id,
                request,
                clawback.refunded_net,
                points,
                from_pending,
                from_available,
                owed,
                rest - owed,
                has_entry=from_pending + from_available + owed > 0,
                returned=returned,
            )
            got = ModelRefund(
                outcome.refund_id,
                request,
                outcome.refunded_net,
                outcome.points,
                outcome.from_pending,
                outcome.from_available,
                outcome.owed,
                outcome.forgiven,
                has_entry=outcome.entry_id is not None,
                returned=outcome.points_returned,
            )
            assert (outcome.return_entry_id is not None) == (returned > 0), outcome
            assert outcome.owed_settled == settled, (outcome, settled)
            assert got == expected, (got, expected)
            order.refunds.append(expected)
            order.pending -= from_pending
            order.refunded_net = clawback.refunded_net
            order.clawed_back += points
            balances["pending"] -= from_pending
            balances["available"] -= from_available
            balances["owed"] -= owed
            self.lots[(order.customer, "pending")].take_from(order.expiry, from_pending)
            available = self.lots[(order.customer, "available")]
            available.take_from(order.expiry, min(own, from_available))  # the order's own lots first
            available.take_soonest(from_available - min(own, from_available))
            # all of it refunded: its net value, or, for an order of net value 0, its items
            _, items_after, items_bought = clawback.items
            if order.refunded_net == order.order.net and (order.order.net or items_after == items_bought):
                assert order.clawed_back == order.award.total, "refunding everything takes back the whole award"
                assert order.hold is None or order.returned == order.hold.captured, "and gives back all it redeemed"

        def some_order(self) -> st.SearchStrategy[ModelOrder]:
            """A recent order, a released one, or any."""
            released = [o for o in self.orders if o.released] or self.orders
            return st.sampled_from(self.orders[-3:]) | st.sampled_from(released) | st.sampled_from(self.orders)

        @precondition(lambda self: bool(self.orders))
        @rule(data=st.data())
        def refund_by_lines(self, data: st.DataObject) -> None:
            order = data.draw(self.some_order(), label="order")
            count = len(order.order.lines)
            picked = data.draw(
                st.lists(st.tuples(st.integers(0, count), st.integers(1, 2)), min_size=1, max_size=2)
                | st.just([(i, line.quantity) for i, line in enumerate(order.order.lines)]),  # all of it
                label="lines",
            )
            self.refund(order, Refund(lines=tuple(RefundLine(line=i, quantity=q) for i, q in picked)))

        @precondition(lambda self: bool(self.orders))
        @rule(data=st.data())
        def refund_by_amount(self, data: st.DataObject) -> None:
            order = data.draw(self.some_order(), label="order")
            left = order.order.net - order.refunded_net
            amount = data.draw(st.integers(1, max(left, 1)) | st.just(left + 1) | st.just(max(left, 1)), label="amount")
            self.refund(order, Refund(amount=amount))

        @precondition(lambda self: any(o.released and o.refunded_net < o.order.net for o in self.orders))
        @rule(data=st.data())
        def refund_after_spending(self, data: st.DataObject) -> None:
            """The customer spends what they have, then returns goods of a released order."""
            order = data.draw(st.sampled_from([o for o in self.orders if o.released and o.refunded_net < o.order.net]))
            self.redeem_all(order.customer)
            left = order.order.net - order.refunded_net
            self.refund(order, Refund(amount=data.draw(st.integers(1, left) | st.just(left), label="amount")))

        @rule()
        def refund_unknown_order(self) -> None:
            before = self.snapshot()
            outcome = self.attempt(
                orders.refund_order(self.till, self.shop_id, "o-none", self.next_id("r"), Refund(amount=1), clock)
            )
            self.expect_refusal(outcome, NotYetThere, before)

        @rule(policy=st.sampled_from(list(ReturnPolicy)), days=st.sampled_from([0, 0, 14]))
        def set_returns(self, policy: ReturnPolicy, days: int) -> None:
            self.returns = ReturnSettings(window_days=days, policy=policy)
            self.run(orders.set_return_settings(self.program_id, self.returns))

        @rule()
        def release_job(self) -> None:
            assert self.run(orders.release_due_orders(self.program_id, clock)) == self.model_release()

        def model_release(self) -> int:
            """The release job in the model: what it releases, and how many orders."""
            now = clock.now()
            due = sorted((o for o in self.orders if not o.released and o.release_at <= now), key=lambda o: o.release_at)
            for order in due:
                balances = self.balances[order.customer]
                settle = min(order.pending, -balances["owed"])
                balances["owed"] += settle
                balances["available"] += order.pending - settle
                balances["pending"] -= order.pending
                self.lots[(order.customer, "pending")].take_from(order.expiry, order.pending)
                self.lots[(order.customer, "available")].add(order.expiry, order.pending - settle)
                order.has_release_entry = order.pending > 0
                order.pending = 0
                order.released = True
            return len(due)

        # --- redemptions, grants and deductions ------------------------------------

        def amount_for(self, data: st.DataObject, customer: str) -> int:
            """Mostly what the customer can pay (all of it, often), sometimes more."""
            available = self.balances[customer]["available"]
            fits = st.integers(1, available) | st.just(available) if available else st.just(1)
            return data.draw(fits | fits | st.integers(1, 400), label="amount")

        @rule(data=st.data(), seconds=st.sampled_from([600, 2 * 86400]))
        def hold(self, data: st.DataObject, seconds: int) -> None:
            customer = data.draw(st.sampled_from(self.customers), label="customer")
            amount = self.amount_for(data, customer)
            request = ledger.HoldRequest(customer_id=customer, amount=amount, expires_in_seconds=seconds)
            before = self.snapshot()
            outcome = self.replayable(lambda key: ledger.hold_points(self.till, request, key, clock), "h")
            balances = self.balances[customer]
            if amount > balances["available"]:
                self.expect_refusal(outcome, InsufficientPoints, before)
                return
            assert isinstance(outcome, ledger.Hold), outcome
            balances["available"] -= amount
            balances["held"] += amount
            moved = self.lots[(customer, "available")].take_soonest(amount)
            self.lots[(customer, "held")].take_over(moved, amount)
            self.holds.append(ModelHold(outcome.id, customer, amount, clock.now() + timedelta(seconds=seconds), moved))

        def resolve(self, hold: ModelHold, captured: int, status: str) -> None:
            balances = self.balances[hold.customer]
            balances["held"] -= hold.amount
            balances["available"] += hold.amount - captured
            held = self.lots[(hold.customer, "held")]
            for expiry, part in hold.reserved:  # a hold takes out the points it reserved
                held.take_from(expiry, part)
            self.lots[(hold.customer, "available")].take_over(hold.reserved, hold.amount - captured)
            hold.status, hold.captured = status, captured
            spent, left = [], captured  # the soonest-expiring of the reserved points left for `redeemed`
            for expiry, part in sorted(hold.reserved, key=lambda item: soonest_first(item[0])):
                if left:
                    spent.append((expiry, min(part, left)))
                    left -= min(part, left)
            hold.spent = spent

        @rule(data=st.data())
        def redeem_everything(self, data: st.DataObject) -> None:
            """Hold and capture all the customer has available (then a refund finds it spent)."""
            self.redeem_all(data.draw(st.sampled_from(self.customers), label="customer"))

        def redeem_all(self, customer: str) -> None:
            amount = self.balances[customer]["available"]
            if amount:
                self.redeem(customer, amount)

        def redeem(self, customer: str, amount: int, in_part: bool = False) -> ModelHold:
            """Hold `amount` of what the customer has available and capture it (all of it, or
            about half)."""
            assert 0 < amount <= self.balances[customer]["available"]
            request = ledger.HoldRequest(customer_id=customer, amount=amount)
            held = self.attempt(ledger.hold_points(self.till, request, self.next_id("h"), clock))
            assert isinstance(held, ledger.Hold), held
            part = (amount + 1) // 2 if in_part else None
            captured = self.attempt(ledger.capture_hold(self.till, held.id, part, self.next_id("c"), clock))
            assert isinstance(captured, ledger.Hold) and captured.captured == (part or amount), captured
            moved = self.lots[(customer, "available")].take_soonest(amount)
            hold = ModelHold(held.id, customer, amount, held.expires_at, moved)
            self.balances[customer]["available"] -= amount
            self.balances[customer]["held"] += amount
            self.lots[(customer, "held")].take_over(moved, amount)
            self.resolve(hold, part or amount, "captured")  # a capture takes out the points its hold reserved
            self.holds.append(hold)
            return hold

        @precondition(lambda self: bool(self.holds))
        @rule(data=st.data(), part=st.one_of(st.none(), st.integers(0, 450)))
        def capture(self, data: st.DataObject, part: int | None) -> None:
            hold = data.draw(st.sampled_from(self.holds), label="hold")
            before = self.snapshot()
            outcome = self.replayable(lambda key: ledger.capture_hold(self.till, hold.id, part, key, clock), "c")
            if hold.status != "open" or clock.now() >= hold.expires_at:
                self.expect_refusal(outcome, HoldNotOpen, before)
                return
            captured = hold.amount if part is None else part
            if captured > hold.amount:
                self.expect_refusal(outcome, InvalidInput, before)
                return
            assert isinstance(outcome, ledger.Hold), outcome
            self.resolve(hold, captured, "captured")
            assert (outcome.status, outcome.captured) == ("captured", captured)

        @precondition(lambda self: bool(self.holds))
        @rule(data=st.data())
        def void(self, data: st.DataObject) -> None:
            hold = data.draw(st.sampled_from(self.holds), label="hold")
            before = self.snapshot()
            outcome = self.replayable(lambda key: ledger.void_hold(self.till, hold.id, key, clock), "v")
            if hold.status != "open":
                self.expect_refusal(outcome, HoldNotOpen, before)
                return
            assert isinstance(outcome, ledger.Hold), outcome
            self.resolve(hold, 0, "voided")

        @rule()
        def expire_holds(self) -> None:
            assert self.run(ledger_jobs.expire_holds(self.program_id, clock)) == self.model_expire_holds()

        def model_expire_holds(self) -> int:
            due = [h for h in self.holds if h.status == "open" and h.expires_at <= clock.now()]
            for hold in due:
                self.resolve(hold, 0, "expired")
            return len(due)

        @rule(data=st.data(), amount=st.integers(1, 300))
        def grant(self, data: st.DataObject, amount: int) -> None:
            customer = data.draw(st.sampled_from(self.customers), label="customer")
            request = ledger.Adjustment(customer_id=customer, amount=amount, reason="goodwill")
            outcome = self.replayable(lambda key: ledger.adjust(self.who, request, key, clock), "g")
            assert not isinstance(outcome, DomainError), outcome
            self.balances[customer]["available"] += amount
            self.lots[(customer, "available")].add(self.expires(clock.now()), amount)

        @rule(data=st.data())
        def deduct(self, data: st.DataObject) -> None:
            customer = data.draw(st.sampled_from(self.customers), label="customer")
            amount = self.amount_for(data, customer)
            request = ledger.Adjustment(customer_id=customer, amount=-amount, reason="correction")
            before = self.snapshot()
            outcome = self.replayable(lambda key: ledger.adjust(self.who, request, key, clock), "d")
            if amount > self.balances[customer]["available"]:
                self.expect_refusal(outcome, InsufficientPoints, before)
                return
            assert not isinstance(outcome, DomainError), outcome
            self.balances[customer]["available"] -= amount
            self.lots[(customer, "available")].take_soonest(amount)

        @precondition(lambda self: bool(self.calls))
        @rule(data=st.data())
        def replay(self, data: st.DataObject) -> None:
            """A request made again under its key gets the same answer and changes nothing."""
            again, first = data.draw(st.sampled_from(self.calls[-3:]) | st.sampled_from(self.calls), label="call")
            before = self.snapshot()
            outcome = self.attempt(again())
            if isinstance(first, DomainError):
                assert type(outcome) is type(first) and (outcome.detail, outcome.field) == (first.detail, first.field)
            else:
                assert outcome == first, (outcome, first)
            assert self.snapshot() == before, "a replay changed something"

        # --- time and expiry ------------------------------------------------------

        @rule(
            delta=st.sampled_from(
                [timedelta(hours=1), timedelta(days=1), timedelta(days=8), timedelta(days=16), timedelta(days=45)]
            )
        )
        def advance_clock(self, delta: timedelta) -> None:
            clock.advance(delta)

        @rule()
        def expire_points(self) -> None:
            assert self.run(ledger_jobs.expire_points(self.program_id, clock)) == self.model_expire_points()

        @rule()
        def all_jobs(self) -> None:
            """Every scheduled job, as the service runs them (tier reviews too: the model then
            takes the earned tiers the reviews leave, which it does not model)."""
            report = self.run(jobs.run_program_jobs(self.program_id, clock))
            assert report.failed == [], report
            assert report.orders_released == self.model_release()
            assert report.holds_expired == self.model_expire_holds()
            assert report.expiry_entries == self.model_expire_points()
            rows = self.run(
                owner.fetch(
                    "SELECT customer_id, earned_code FROM customer_tiers WHERE program_id = $1", self.program_id
                )
            )
            self.earned |= {row["customer_id"]: row["earned_code"] for row in rows}

        def model_expire_points(self) -> int:
            """The expiry job in the model: the customers it writes an entry for."""
            now = clock.now()
            due = {}
            for customer in self.customers:
                available = self.lots[(customer, "available")]
                amount = sum(n for expiry, n in available.by_expiry.items() if expiry and expiry <= now)
                if amount:
                    available.take_soonest(amount)
                    self.balances[customer]["available"] -= amount
                    due[customer] = amount
            return len(due)

        # --- after every step -------------------------------------------------------

        @invariant()
        def features_agree(self) -> None:
            if not self.program_id:
                return
            now = clock.now()

            async def read() -> dict[str, Any]:
                await ledger_invariants(owner, self.program_id)
                found: dict[str, Any] = {}
                found["balances"] = await owner.fetch(
                    "SELECT customer_id, kind, balance FROM accounts WHERE program_id = $1 AND customer_id IS NOT NULL",
                    self.program_id,
                )
                found["pending_vs_orders"] = await owner.fetch(
                    "SELECT a.customer_id, a.balance, (SELECT coalesce(sum(o.points"
                    " - (SELECT coalesce(sum(r.from_pending), 0) FROM refunds r WHERE r.program_id = o.program_id"
                    " AND r.shop_id = o.shop_id AND r.order_id = o.id)), 0)::bigint FROM orders o"
                    " WHERE o.program_id = a.program_id AND o.customer_id = a.customer_id AND o.released_at IS NULL)"
                    " AS expected FROM accounts a WHERE a.program_id = $1 AND a.kind = 'pending'",
                    self.program_id,
                )
                found["orders"] = await owner.fetch(
                    "SELECT o.id, o.customer_id, o.points, o.net, o.award, o.refunded_net, o.clawed_back,"
                    " o.released_at, o.release_entry_id,"
                    " (SELECT coalesce(sum(r.points), 0) FROM refunds r WHERE r.program_id = o.program_id"
                    " AND r.shop_id = o.shop_id AND r.order_id = o.id)::bigint AS refund_points,"
                    " (SELECT coalesce(sum(r.from_pending), 0) FROM refunds r WHERE r.program_id = o.program_id"
                    " AND r.shop_id = o.shop_id AND r.order_id = o.id)::bigint AS from_pending,"
                    " (SELECT -p.amount FROM postings p JOIN accounts a ON a.program_id = p.program_id"
                    " AND a.id = p.account_id AND a.kind = 'pending' JOIN entries e ON e.program_id = p.program_id"
                    " AND e.id = p.entry_id AND e.kind = 'order.release'"
                    " WHERE p.program_id = o.program_id AND p.entry_id = o.release_entry_id) AS released"
                    " FROM orders o WHERE o.program_id = $1",
                    self.program_id,
                )
                found["views"] = [await orders.get_order(self.till, o.shop, o.id) for o in self.orders]
                found["tiers"] = [await tiers.tier_progress(self.program_id, c, clock) for c in self.customers]
                found["lots"] = await owner.fetch(
                    "SELECT a.customer_id, a.kind, l.expires_at, sum(l.remaining)::bigint AS remaining FROM lots l"
                    " JOIN accounts a ON a.program_id = l.program_id AND a.id = l.account_id"
                    " WHERE l.program_id = $1 AND l.remaining > 0 GROUP BY a.customer_id, a.kind, l.expires_at",
                    self.program_id,
                )
                found["holds"] = await owner.fetch(
                    "SELECT id, status, captured FROM holds WHERE program_id = $1", self.program_id
                )
                await ledger_jobs.seal_chain(self.program_id)
                found["chain"] = await verify_chain(self.program_id)
                found["entries"] = await owner.fetchval(
                    "SELECT count(*) FROM entries WHERE program_id = $1", self.program_id
                )
                return found

            found = self.run(read())
            # balances: the model's, and on the right side of zero
            stored = {(r["customer_id"], r["kind"]): r["balance"] for r in found["balances"]}
            for customer, kinds in self.balances.items():
                for kind, amount in kinds.items():
                    assert stored[(customer, kind)] == amount, (customer, kind, stored[(customer, kind)], amount)
                assert stored[(customer, "credit_available")] == stored[(customer, "credit_held")] == 0
                assert stored[(customer, "owed")] <= 0 <= min(stored[(customer, k)] for k in KINDS if k != "owed")
            in_lots: dict[tuple[str, str], dict[Expiry, int]] = {}
            for row in found["lots"]:
                in_lots.setdefault((row["customer_id"], row["kind"]), {})[row["expires_at"]] = row["remaining"]
            assert in_lots == {key: dict(points.by_expiry) for key, points in self.lots.items() if points.total}
            for (customer, kind), points in self.lots.items():
                assert points.total == self.balances[customer][kind], (customer, kind)
            # pending: what the unreleased orders still have pending
            for row in found["pending_vs_orders"]:
                assert row["balance"] == row["expected"], dict(row)
            for customer in self.customers:
                unreleased = sum(o.pending for o in self.orders if o.customer == customer and not o.released)
                assert unreleased == self.balances[customer]["pending"], customer
            # orders: refunds add up, releases have their entry, campaign caps hold
            caps = {c.name: c.customer_cap for c in CAMPAIGNS}
            kept: dict[tuple[str, str], int] = {}
            for row in found["orders"]:
                assert row["clawed_back"] == row["refund_points"], dict(row)
                assert 0 <= row["clawed_back"] <= row["points"], dict(row)
                at_release = row["points"] - row["from_pending"]
                if row["released_at"] is None:
                    assert row["release_entry_id"] is None, dict(row)
                else:
                    assert (row["release_entry_id"] is not None) == (at_release > 0), dict(row)
                    assert row["released"] == (at_release or None), dict(row)
                award = msgspec.json.decode(row["award"], type=Award)
                for name, bonus in award.campaign_bonus.items():
                    share = bonus_kept(bonus, row["refunded_net"], row["net"])
                    kept[(row["customer_id"], name)] = kept.get((row["customer_id"], name), 0) + share
            for (customer, name), total in kept.items():
                cap = caps[name]
                assert cap is None or 0 <= total <= cap, (customer, name, total)
                assert total == self.kept(customer).get(name, 0)
            # GET of each order shows the stored rows and the model
            for order, view in zip(self.orders, found["views"], strict=True):
                assert (view.shop_id, view.order_id, view.customer_id, view.points, view.net) == (
                    order.shop,
                    order.id,
                    order.customer,
                    order.award.total,
                    order.order.net,
                )
                assert view.status == ("released" if order.released else "pending"), (view, order)
                assert (view.release_entry_id is not None) == order.has_release_entry, (view, order)
                assert (view.refunded_net, view.clawed_back) == (order.refunded_net, order.clawed_back), (view, order)
                redeemed = (None, 0) if order.hold is None else (order.hold.id, order.hold.captured)
                assert (view.redemption_hold_id, view.points_redeemed) == redeemed, (view, order)
                assert view.points_returned == order.returned == sum(r.points_returned for r in view.refunds)
                assert view.clawed_back == sum(r.points for r in view.refunds)
                assert [r.refund_id for r in view.refunds] == [r.id for r in order.refunds]
                for shown, modelled in zip(view.refunds, order.refunds, strict=True):
                    assert (shown.points, shown.from_pending, shown.from_available, shown.owed, shown.forgiven) == (
                        modelled.points,
                        modelled.from_pending,
                        modelled.from_available,
                        modelled.owed,
                        modelled.forgiven,
                    )
                    assert (shown.refunded_net, shown.points_returned) == (modelled.refunded_net, modelled.returned)
            # tiers: the measure is the sum over the orders in the window
            for customer, progress in zip(self.customers, found["tiers"], strict=True):
                measure = self.measure(customer, now)
                assert progress.measure == measure, (customer, progress, measure)
                earned = self.earned[customer] or qualified(self.ladder, measure).code
                assert progress.earned_tier == earned, (customer, progress, earned)
            # holds
            assert {r["id"]: (r["status"], r["captured"]) for r in found["holds"]} == {
                h.id: (h.status, h.captured) for h in self.holds
            }
            # the chain
            report = found["chain"]
            assert report.valid and report.unsealed == 0, report
            assert report.sealed == report.last_seq == found["entries"], (report, found["entries"])

    return CheckoutMachine


async def test_checkout_agrees_with_its_model(
    database: str, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    machine = checkout_machine(asyncio.get_running_loop(), clock, owner_connection)
    await asyncio.to_thread(
        run_state_machine_as_test,
        machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
