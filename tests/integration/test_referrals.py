"""Referrals on the real database: the whole life from redemption to both rewards and a
milestone, each fraud rule refusing on its own (and changing nothing), refunds before and
after the reward, a capped code redeemed concurrently, and repeated redemptions."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import pytest

from service.domain.access import Principal, Scope
from service.domain.clock import ManualClock
from service.domain.customers import Enrolment
from service.domain.earning import Order, OrderLine, Refund
from service.domain.errors import (
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    RedeemWindowClosed,
    RefereeAlreadyReferred,
    RefereeHasOrders,
    ReferralCapReached,
    ReferralCodeDisabled,
    ReferralsDisabled,
    SelfReferral,
    SharedDevice,
    SharedEmail,
    SharedPayment,
)
from service.domain.expiry import ExpiryPolicy, ExpiryRule, expires_at
from service.domain.ledger import Unit
from service.domain.orders import ReturnPolicy, ReturnSettings
from service.domain.referrals import ReferralSettings
from service.domain.tiers import TierConfig
from service.usecases import ledger, orders, referrals, tiers
from service.usecases.customers import enrol_customer
from service.usecases.earning_rules import RulesDraft, publish_rules
from service.usecases.referrals import Redemption
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, balances, buy, checkout, ledger_invariants
from tests.integration.test_order_life import entry_postings

START = datetime(2026, 3, 10, 11, 0, tzinfo=UTC)  # 12:00 in Amsterdam
LADDER: dict[str, Any] = {
    "basis": "points",
    "window": "rolling_12_months",
    "levels": [
        {"code": "bronze", "name": "Bronze", "threshold": 0},
        {"code": "gold", "name": "Gold", "threshold": 100_000, "earn_multiplier_bp": 15000},
    ],
}
SETTINGS: dict[str, Any] = {
    "enabled": True,
    "redeem_window_days": 30,
    "min_order_minor": 2000,
    "referrer_reward": {"kind": "points", "amount": 500},
    "referee_reward": {"kind": "credit", "amount": 1000},
    "milestones": [{"count": 2, "reward": {"kind": "tier", "tier_code": "gold", "tier_days": 180}}],
    "share_url_template": "https://shop.example/r/{code}",
}
_keys = itertools.count()


async def setup(program: ProgramFixture, clock: ManualClock, **settings: Any) -> None:
    clock.set(START - timedelta(days=30))
    rules = msgspec.convert({"currency": "EUR", "points_per_unit": 10, "unit_minor": 100}, RulesDraft)
    await publish_rules(admin(program.id), rules, "rules", clock)
    await tiers.configure(admin(program.id), msgspec.convert(LADDER, TierConfig), "ladder", clock)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 365))
    clock.set(START)
    await configure(program, clock, **settings)


async def configure(program: ProgramFixture, clock: ManualClock, **settings: Any) -> ReferralSettings:
    wanted = msgspec.convert(SETTINGS | settings, ReferralSettings)
    return await referrals.configure(admin(program.id), wanted, f"referral-settings-{next(_keys)}", clock)


async def enrol(program: ProgramFixture, clock: ManualClock, name: str, email: str | None = None) -> str:
    customer, _ = await enrol_customer(admin(program.id), Enrolment(external_id=name, email=email), clock)
    return customer.id


def app_of(program: ProgramFixture, customer_id: str) -> Principal:
    return Principal(program_id=program.id, scope=Scope.CUSTOMER, customer_id=customer_id)


async def redeem(
    program: ProgramFixture, clock: ManualClock, referee: str, code: str, **hashes: str
) -> referrals.ReferralView:
    view, _ = await referrals.redeem(app_of(program, referee), referee, Redemption(code=code, **hashes), clock)
    return view


async def code_of(program: ProgramFixture, clock: ManualClock, customer: str) -> str:
    return (await referrals.referral_code(program.id, customer, f"customer:{customer}", clock)).code


async def run_jobs(program: ProgramFixture, clock: ManualClock) -> int:
    await orders.release_due_orders(program.id, clock)
    return await referrals.reward_due(program.id, clock)


async def referral_events(connection: asyncpg.Connection, program_id: str, referral_id: str) -> list[str]:
    rows = await connection.fetch(
        "SELECT type FROM (SELECT type, occurred_at, id, payload FROM event_outbox WHERE program_id = $1"
        " UNION ALL SELECT type, occurred_at, id, payload FROM events WHERE program_id = $1) e"
        " WHERE payload ->> 'referral_id' = $2 ORDER BY occurred_at, id",
        program_id,
        referral_id,
    )
    return [row["type"] for row in rows]


async def test_the_whole_life_of_a_referral(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(program, clock)
    ann = await enrol(program, clock, "ann", "ann@example.com")
    code = await referrals.referral_code(program.id, ann, f"customer:{ann}", clock)
    assert len(code.code) == 8 and code.share_url == f"https://shop.example/r/{code.code}"
    assert await referrals.referral_code(program.id, ann, "key:till", clock) == code  # one per customer

    # redemption: pending, shown to both sides; the code matches in any case
    bob = await enrol(program, clock, "bob", "bob@example.com")
    pending = await redeem(program, clock, bob, code.code.lower(), device_hash="dev-bob")
    assert (pending.status, pending.referrer_id, pending.referee_id, pending.code) == ("pending", ann, bob, code.code)
    assert [r.id for r in (await referrals.list_referrals(program.id, ann, 50, None)).items] == [pending.id]
    assert [r.id for r in (await referrals.list_referrals(program.id, bob, 50, None)).items] == [pending.id]

    # an order below the minimum does not qualify; the next one at or above it does
    small = await buy(program, clock, bob, 1500)
    assert (await referrals.list_referrals(program.id, bob, 1, None)).items[0].status == "pending"
    clock.advance(timedelta(hours=1))
    qualifying = await buy(program, clock, bob, 2500)
    [qualified] = (await referrals.list_referrals(program.id, bob, 1, None)).items
    assert (qualified.status, qualified.order_id, qualified.shop_id) == (
        "qualified",
        qualifying.order_id,
        program.shop_id,
    )
    assert qualified.reward_due_at == qualifying.available_from

    # nothing is paid before the order's return window ends
    clock.set(qualifying.available_from - timedelta(seconds=1))
    assert await run_jobs(program, clock) == 0
    clock.set(qualifying.available_from)
    assert await run_jobs(program, clock) == 1
    assert await run_jobs(program, clock) == 0  # rewarded once
    [rewarded] = (await referrals.list_referrals(program.id, ann, 50, None)).items
    assert (rewarded.status, rewarded.rewarded_at) == ("rewarded", qualifying.available_from)
    by_role = {reward.role: reward for reward in rewarded.rewards}
    assert set(by_role) == {"referrer", "referee"}
    referee_reward, referrer_reward = by_role["referee"], by_role["referrer"]
    assert referee_reward.entry_id is not None and referrer_reward.entry_id is not None
    assert await entry_postings(owner_connection, program.id, referee_reward.entry_id) == [
        ("system:credit_issued", -1000, None),
        (f"customer:{bob}:credit_available", 1000, 1000),
    ]
    assert await entry_postings(owner_connection, program.id, referrer_reward.entry_id) == [
        ("system:referral_rewards", -500, None),
        (f"customer:{ann}:available", 500, 500),
    ]
    metadata = await owner_connection.fetchval(
        "SELECT metadata FROM entries WHERE program_id = $1 AND id = $2", program.id, referrer_reward.entry_id
    )
    assert msgspec.json.decode(metadata) == {"referral_id": rewarded.id, "beneficiary": ann, "role": "referrer"}
    lot_expiry = await owner_connection.fetchval(
        "SELECT expires_at FROM lots WHERE program_id = $1 AND entry_id = $2", program.id, referrer_reward.entry_id
    )
    assert lot_expiry == expires_at(ExpiryRule(ExpiryPolicy.DAYS, 365), clock.now(), ZoneInfo("Europe/Amsterdam"))
    assert small.points == 150 and (await balances(owner_connection, program.id, bob))["credit_available"] == 1000

    # a second referral reaches the milestone of 2: Ann is granted Gold for 180 days
    carl = await enrol(program, clock, "carl")
    second = await redeem(program, clock, carl, code.code)
    clock.advance(timedelta(minutes=5))
    carl_order = await buy(program, clock, carl, 3000)
    clock.set(carl_order.available_from)
    assert await run_jobs(program, clock) == 1
    [done] = [r for r in (await referrals.list_referrals(program.id, ann, 50, None)).items if r.id == second.id]
    milestone = next(reward for reward in done.rewards if reward.role == "milestone")
    assert (milestone.milestone, milestone.kind, milestone.tier_code, milestone.beneficiary_id) == (
        2,
        "tier",
        "gold",
        ann,
    )
    assert milestone.tier_grant_id is not None and milestone.entry_id is None
    progress = await tiers.tier_progress(program.id, ann, clock)
    assert (progress.tier.code, progress.granted_until) == ("gold", clock.now() + timedelta(days=180))
    history = await tiers.tier_history(program.id, ann)
    assert history[0].kind == "grant" and f"referral {second.id}: milestone 2" in history[0].cause
    assert (await balances(owner_connection, program.id, ann))["available"] == 1000

    stats = await referrals.referral_stats(program.id)
    assert (stats.codes_issued, stats.redeemed, stats.qualified, stats.rewarded, stats.cancelled) == (1, 2, 2, 2, 0)
    paid = stats.rewards_paid
    assert (paid.points, paid.credit, paid.tier_grants) == (1000, 2000, 1)
    assert (stats.qualified_rate, stats.rewarded_rate) == (1.0, 1.0)
    mine = await referrals.referral_stats(program.id, ann)
    assert (mine.redeemed, mine.rewarded, mine.rewards_paid.points, mine.rewards_paid.credit) == (2, 2, 1000, 0)
    assert await referral_events(owner_connection, program.id, second.id) == [
        "referral.redeemed",
        "referral.qualified",
        "referral.rewarded",
    ]
    await ledger_invariants(owner_connection, program.id)


async def _state(connection: asyncpg.Connection, program_id: str) -> tuple[int, int]:
    referrals_made = await connection.fetchval("SELECT count(*) FROM referrals WHERE program_id = $1", program_id)
    hashes = await connection.fetchval("SELECT count(*) FROM customer_fingerprints WHERE program_id = $1", program_id)
    return referrals_made, hashes


async def test_each_fraud_rule_refuses_with_its_own_problem_and_changes_nothing(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(program, clock, cap={"count": 2, "period_days": 30})
    ann = await enrol(program, clock, "ann", "Ann.Smith+shop@googlemail.com")
    code = await code_of(program, clock, ann)
    await referrals.record_fingerprints(program.id, ann, ["dev-ann"], ["card-ann"], clock)
    before = await _state(owner_connection, program.id)

    async def refused(error: type[DomainError], referee: str, code_text: str = code, **hashes: str) -> DomainError:
        with pytest.raises(error) as caught:
            await redeem(program, clock, referee, code_text, **hashes)
        assert await _state(owner_connection, program.id) == before
        return caught.value

    fresh = await enrol(program, clock, "fresh", "fresh@example.com")
    unknown = await refused(NotFound, fresh, "NOPE2345")
    assert unknown.field == "code"
    assert (await refused(SelfReferral, ann)).extra["rule"] == "self_referral"
    twin = await enrol(program, clock, "twin", "annsmith@gmail.com")
    shared = await refused(SharedEmail, twin)
    assert (shared.problem_type, shared.extra["rule"]) == ("referral-shared-email", "shared_email")
    device = await refused(SharedDevice, fresh, device_hash="dev-ann")
    assert (device.field, device.problem_type) == ("device_hash", "referral-shared-device")
    payment = await refused(SharedPayment, fresh, payment_hash="card-ann")
    assert (payment.field, payment.problem_type) == ("payment_hash", "referral-shared-payment")
    buyer = await enrol(program, clock, "buyer")
    await buy(program, clock, buyer, 500)
    assert (await refused(RefereeHasOrders, buyer)).problem_type == "referral-referee-has-orders"

    # the code disabled by an admin, then enabled again
    disabled = await referrals.set_code_disabled(admin(program.id), code, "abuse report #12", "off", clock)
    assert (disabled.disabled, disabled.disabled_reason) == (True, "abuse report #12")
    assert (await refused(ReferralCodeDisabled, fresh)).extra["reason"] == "abuse report #12"
    assert not (await referrals.set_code_disabled(admin(program.id), code, None, "on", clock)).disabled

    # already referred: a second, different code is refused (the first referral stands)
    bea = await enrol(program, clock, "bea")
    first = await redeem(program, clock, fresh, code)
    before = await _state(owner_connection, program.id)
    other = await refused(RefereeAlreadyReferred, fresh, await code_of(program, clock, bea))
    assert other.extra["referred_with"] == code and first.status == "pending"

    # the cap: 2 in 30 days
    await redeem(program, clock, await enrol(program, clock, "second"), code)
    before = await _state(owner_connection, program.id)
    capped = await refused(ReferralCapReached, await enrol(program, clock, "third"))
    assert (capped.extra["cap"], capped.extra["period_days"]) == (2, 30)

    # the redeem window: 30 days after enrolment
    late = await enrol(program, clock, "late")
    clock.advance(timedelta(days=30, seconds=1))
    assert (await refused(RedeemWindowClosed, late, await code_of(program, clock, bea))).field == "code"

    # the program switched off
    await configure(program, clock, enabled=False)
    assert (await refused(ReferralsDisabled, await enrol(program, clock, "off"), code)).status == 409


async def test_fraud_rules_that_are_switched_off_do_not_refuse(program: ProgramFixture, clock: ManualClock) -> None:
    off = {"referee_has_orders": False, "shared_email": False, "shared_device": False, "shared_payment": False}
    await setup(program, clock, fraud_rules=off)
    ann = await enrol(program, clock, "ann", "ann+x@example.com")
    await referrals.record_fingerprints(program.id, ann, ["dev"], ["card"], clock)
    twin = await enrol(program, clock, "twin", "ann@example.com")
    await buy(program, clock, twin, 100)
    made = await redeem(
        program, clock, twin, await code_of(program, clock, ann), device_hash="dev", payment_hash="card"
    )
    assert made.status == "pending"
    assert (await referrals.record_fingerprints(program.id, twin, [], [], clock)).device_hashes == ["dev"]


async def test_a_refund_before_the_reward_cancels_the_referral(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(program, clock)
    ann = await enrol(program, clock, "ann")
    bob = await enrol(program, clock, "bob")
    referral = await redeem(program, clock, bob, await code_of(program, clock, ann))
    order = await buy(program, clock, bob, 3000)
    till = checkout(program.id)
    # a partial refund that leaves the order at the minimum keeps it qualified
    await orders.refund_order(till, program.shop_id, order.order_id, "R-1", Refund(amount=1000), clock)
    [kept] = (await referrals.list_referrals(program.id, bob, 50, None)).items
    assert kept.status == "qualified"
    await orders.refund_order(till, program.shop_id, order.order_id, "R-2", Refund(amount=1), clock)
    [cancelled] = (await referrals.list_referrals(program.id, bob, 50, None)).items
    assert (cancelled.status, cancelled.cancelled_at, cancelled.rewards) == ("cancelled", clock.now(), [])
    assert cancelled.note == f"order {order.order_id} was refunded before the reward"
    clock.set(order.available_from)
    assert await run_jobs(program, clock) == 0
    assert (await balances(owner_connection, program.id, ann))["available"] == 0
    assert await referral_events(owner_connection, program.id, referral.id) == [
        "referral.redeemed",
        "referral.qualified",
        "referral.cancelled",
    ]
    # a later order of the referee does not bring the referral back
    await buy(program, clock, bob, 5000)
    assert (await referrals.list_referrals(program.id, bob, 50, None)).items[0].status == "cancelled"


async def test_a_refund_after_the_reward_claws_the_rewards_back_by_the_return_policy(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(
        program, clock, milestones=[{"count": 1, "reward": {"kind": "tier", "tier_code": "gold", "tier_days": 30}}]
    )
    await orders.set_return_settings(program.id, ReturnSettings(window_days=14, policy=ReturnPolicy.ALLOW_NEGATIVE))
    ann = await enrol(program, clock, "ann")
    bob = await enrol(program, clock, "bob")
    referral = await redeem(program, clock, bob, await code_of(program, clock, ann))
    order = await buy(program, clock, bob, 3000)
    clock.set(order.available_from)
    assert await run_jobs(program, clock) == 1
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "gold"

    # both spend some of what they got: Ann 300 of her 500 points, Bob 400 of his 1000 credit
    till = checkout(program.id)
    hold = await ledger.hold_points(till, ledger.HoldRequest(customer_id=ann, amount=300), "spend-ann", clock)
    await ledger.capture_hold(till, hold.id, None, "spend-ann-capture", clock)
    credit = ledger.HoldRequest(customer_id=bob, amount=400, unit=Unit.CREDIT)
    credit_hold = await ledger.hold_points(till, credit, "spend-bob", clock)
    await ledger.capture_hold(till, credit_hold.id, None, "spend-bob-capture", clock)

    clock.advance(timedelta(days=1))
    # most of the order comes back: what remains (500) is below the minimum (2000)
    await orders.refund_order(till, program.shop_id, order.order_id, "R-1", Refund(amount=2500), clock)
    [cancelled] = (await referrals.list_referrals(program.id, ann, 50, None)).items
    assert cancelled.status == "cancelled"
    assert cancelled.note == f"order {order.order_id} was refunded after the reward; rewards clawed back"
    by_role = {reward.role: reward for reward in cancelled.rewards}
    points, credit_reward, tier = by_role["referrer"], by_role["referee"], by_role["milestone"]
    assert (points.clawed_back, points.owed, points.forgiven) == (200, 300, 0)  # allow_negative: owed
    assert (credit_reward.clawed_back, credit_reward.owed, credit_reward.forgiven) == (600, 0, 400)  # within balance
    assert points.clawback_entry_id is not None and credit_reward.clawback_entry_id is not None
    assert await entry_postings(owner_connection, program.id, points.clawback_entry_id) == [
        (f"customer:{ann}:available", -200, 0),
        (f"customer:{ann}:owed", -300, -300),
        ("system:referral_rewards", 500, None),
    ]
    assert await entry_postings(owner_connection, program.id, credit_reward.clawback_entry_id) == [
        (f"customer:{bob}:credit_available", -600, 0),
        ("system:credit_issued", 600, None),
    ]
    assert tier.clawed_back_at == clock.now()
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "bronze"
    assert (await tiers.tier_history(program.id, ann))[0].kind == "grant_ended"

    stats = await referrals.referral_stats(program.id)
    assert (stats.rewarded, stats.cancelled, stats.rewards_paid.points_clawed_back) == (1, 1, 500)
    assert (stats.rewards_paid.credit_clawed_back, stats.rewards_paid.credit_forgiven) == (600, 400)
    assert (stats.rewards_paid.tier_grants_ended, stats.rewarded_rate) == (1, 1.0)
    assert (await referral_events(owner_connection, program.id, referral.id))[-1] == "referral.cancelled"
    # a second refund claws back nothing more
    await orders.refund_order(till, program.shop_id, order.order_id, "R-2", Refund(amount=100), clock)
    [after] = (await referrals.list_referrals(program.id, ann, 50, None)).items
    assert after == cancelled
    await ledger_invariants(owner_connection, program.id)


async def test_a_capped_code_redeemed_concurrently_gives_exactly_the_cap(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    cap = 5
    await setup(program, clock, cap={"count": cap, "period_days": 7})
    ann = await enrol(program, clock, "ann")
    code = await code_of(program, clock, ann)
    referees = [await enrol(program, clock, f"friend-{n}") for n in range(16)]
    results = await asyncio.gather(
        *(redeem(program, clock, referee, code) for referee in referees), return_exceptions=True
    )
    made = [r for r in results if isinstance(r, referrals.ReferralView)]
    refused = [r for r in results if isinstance(r, ReferralCapReached)]
    assert (len(made), len(refused)) == (cap, len(referees) - cap), results
    count = await owner_connection.fetchval(
        "SELECT count(*) FROM referrals WHERE program_id = $1 AND referrer_id = $2", program.id, ann
    )
    assert count == cap


async def test_redeeming_the_same_code_twice_returns_the_same_referral(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(program, clock)
    ann = await enrol(program, clock, "ann")
    bob = await enrol(program, clock, "bob")
    code = await code_of(program, clock, ann)
    first, created = await referrals.redeem(app_of(program, bob), bob, Redemption(code=code), clock)
    again, created_again = await referrals.redeem(checkout(program.id), bob, Redemption(code=code.lower()), clock)
    assert (created, created_again, again) == (True, False, first)
    carl = await enrol(program, clock, "carl")
    concurrent = await asyncio.gather(*(redeem(program, clock, carl, code) for _ in range(10)))
    assert len({view.id for view in concurrent}) == 1
    count = await owner_connection.fetchval("SELECT count(*) FROM referrals WHERE program_id = $1", program.id)
    assert count == 2


async def test_reward_workers_running_at_once_reward_each_referral_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(program, clock, milestones=[{"count": 3, "reward": {"kind": "points", "amount": 1000}}])
    ann = await enrol(program, clock, "ann")
    code = await code_of(program, clock, ann)
    last = None
    for n in range(6):
        friend = await enrol(program, clock, f"friend-{n}")
        await redeem(program, clock, friend, code)
        last = await buy(program, clock, friend, 2500)
    assert last is not None
    clock.set(last.available_from)
    await orders.release_due_orders(program.id, clock)
    counts = await asyncio.gather(*(referrals.reward_due(program.id, clock) for _ in range(4)))
    assert sum(counts) == 6
    # 6 x 500 points and the milestone of 3 once
    assert (await balances(owner_connection, program.id, ann))["available"] == 4000
    milestones = await owner_connection.fetchval(
        "SELECT count(*) FROM referral_rewards WHERE program_id = $1 AND role = 'milestone'", program.id
    )
    assert milestones == 1
    await ledger_invariants(owner_connection, program.id)


async def test_codes_vanity_and_settings_refusals(program: ProgramFixture, clock: ManualClock) -> None:
    await setup(program, clock)
    ann = await enrol(program, clock, "ann")
    bob = await enrol(program, clock, "bob")
    old = await code_of(program, clock, ann)
    vanity = await referrals.set_vanity_code(admin(program.id), ann, "AnnLoves", "vanity-1", clock)
    assert (vanity.code, vanity.vanity) == ("ANNLOVES", True)
    assert await code_of(program, clock, ann) == "ANNLOVES"
    with pytest.raises(NotFound):  # the old code is retired
        await redeem(program, clock, bob, old)
    with pytest.raises(Conflict) as taken:
        await referrals.set_vanity_code(admin(program.id), bob, "annloves", "vanity-2", clock)
    assert taken.value.field == "code"
    with pytest.raises(Conflict):  # retired codes are never handed out again
        await referrals.set_vanity_code(admin(program.id), bob, old, "vanity-3", clock)
    assert (await redeem(program, clock, bob, "annLOVES")).code == "ANNLOVES"
    with pytest.raises(InvalidInput) as no_tier:
        await configure(program, clock, referee_reward={"kind": "tier", "tier_code": "platinum", "tier_days": 5})
    assert no_tier.value.field == "referee_reward.tier_code"
    with pytest.raises(InvalidInput) as no_amount:
        await configure(program, clock, referrer_reward={"kind": "points"})
    assert no_amount.value.field == "referrer_reward.amount"


async def test_a_referral_settled_with_nothing_to_pay_emits_no_reward_event(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(program, clock, referrer_reward=None, referee_reward=None, milestones=[])
    ann, bob = await enrol(program, clock, "ann"), await enrol(program, clock, "bob")
    referral = await redeem(program, clock, bob, await code_of(program, clock, ann))
    qualifying = await buy(program, clock, bob, 2500)
    clock.set(qualifying.available_from)
    assert await run_jobs(program, clock) == 1
    [settled] = (await referrals.list_referrals(program.id, ann, 50, None)).items
    assert (settled.status, settled.rewards) == ("rewarded", [])
    assert await referral_events(owner_connection, program.id, referral.id) == [
        "referral.redeemed",
        "referral.qualified",
    ]


async def referral_points_earned(connection: asyncpg.Connection, program_id: str) -> list[dict[str, Any]]:
    """The payloads of `points.earned` for referral rewards, outbox and feed, in emission order."""
    rows = await connection.fetch(
        "SELECT payload FROM (SELECT type, payload, position AS n FROM event_outbox WHERE program_id = $1"
        " UNION ALL SELECT type, payload, seq - 1000000000 FROM events WHERE program_id = $1) e"
        " WHERE type = 'points.earned' AND payload ->> 'source' = 'referral' ORDER BY n",
        program_id,
    )
    return [msgspec.json.decode(row["payload"]) for row in rows]


@pytest.mark.parametrize("referee_kind", ["points", "credit"])
async def test_a_reward_of_points_emits_points_earned_for_its_beneficiary(
    referee_kind: str, program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Each side rewarded with points hears of it as `points.earned` (source `referral`), in
    the reward's transaction; store credit is not points and emits none."""
    await setup(program, clock, referee_reward={"kind": referee_kind, "amount": 200}, milestones=[])
    ann, bob = await enrol(program, clock, "ann"), await enrol(program, clock, "bob")
    await redeem(program, clock, bob, await code_of(program, clock, ann))
    qualifying = await buy(program, clock, bob, 2500)
    assert await referral_points_earned(owner_connection, program.id) == []  # not before the reward
    clock.set(qualifying.available_from)
    assert await run_jobs(program, clock) == 1
    [rewarded] = (await referrals.list_referrals(program.id, ann, 50, None)).items
    by_role = {reward.role: reward for reward in rewarded.rewards}

    def expected(role: str, customer: str, points: int) -> dict[str, Any]:
        entry_id = by_role[role].entry_id
        return {"customer_id": customer, "points": points, "source": "referral", "entry_id": entry_id}

    wanted = [expected("referrer", ann, 500)] + ([expected("referee", bob, 200)] if referee_kind == "points" else [])
    emitted = await referral_points_earned(owner_connection, program.id)
    told = [{key: event[key] for key in ("customer_id", "points", "source", "entry_id")} for event in emitted]
    assert sorted(told, key=lambda event: event["entry_id"]) == sorted(wanted, key=lambda event: event["entry_id"])
    assert all(event["shop_id"] is None and event["order_id"] is None for event in emitted)
    lot_expiry = expires_at(ExpiryRule(ExpiryPolicy.DAYS, 365), clock.now(), ZoneInfo("Europe/Amsterdam"))
    assert {msgspec.convert(event["expires_at"], datetime, strict=False) for event in emitted} == {lot_expiry}
    assert await run_jobs(program, clock) == 0
    assert len(await referral_points_earned(owner_connection, program.id)) == len(wanted)  # paid once, told once


async def test_a_tier_reward_never_granted_is_not_counted_as_a_grant_ended(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """A tier reward whose tier left the ladder is recorded with a note and not granted; when
    its referral is cancelled there is no grant to end, so the stats count no tier grant
    paid and none ended (never more grants ended than granted)."""
    await setup(program, clock, referrer_reward={"kind": "tier", "tier_code": "gold", "tier_days": 30}, milestones=[])
    ann, bob = await enrol(program, clock, "ann"), await enrol(program, clock, "bob")
    await redeem(program, clock, bob, await code_of(program, clock, ann))
    qualifying = await buy(program, clock, bob, 2500)
    ladder = LADDER | {"levels": LADDER["levels"][:1]}  # gold removed
    await tiers.configure(admin(program.id), msgspec.convert(ladder, TierConfig), "ladder-2", clock)
    clock.set(qualifying.available_from)
    assert await run_jobs(program, clock) == 1
    [rewarded] = (await referrals.list_referrals(program.id, ann, 50, None)).items
    [tier_reward] = [reward for reward in rewarded.rewards if reward.kind == "tier"]
    assert tier_reward.tier_grant_id is None and tier_reward.note is not None
    till = checkout(program.id)
    await orders.refund_order(till, program.shop_id, qualifying.order_id, "R-1", Refund(amount=2500), clock)
    for stats in (await referrals.referral_stats(program.id), await referrals.referral_stats(program.id, ann)):
        assert (stats.rewards_paid.tier_grants, stats.rewards_paid.tier_grants_ended) == (0, 0)


async def test_an_order_placed_before_the_redemption_does_not_qualify_the_referral(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """Only an order placed while the referral is pending qualifies it: an order the shop
    sends late (placed before the code was redeemed, when the referee was already buying)
    does not, beyond the clock skew a till is allowed; the next order placed after it does."""
    await setup(program, clock)
    ann = await enrol(program, clock, "ann")
    bob = await enrol(program, clock, "bob")
    await redeem(program, clock, bob, await code_of(program, clock, ann))
    clock.advance(timedelta(hours=2))

    async def placed(order_id: str, at: datetime) -> orders.OrderView:
        lines = (OrderLine(sku="beans", category="coffee", unit_price=5000, quantity=1),)
        placement = orders.OrderPlacement(
            order_id=order_id, customer_id=bob, order=Order(currency="EUR", placed_at=at, lines=lines)
        )
        return await orders.place_order(checkout(program.id), program.shop_id, placement, clock)

    await placed("yesterday", START - timedelta(days=1))  # uploaded late
    [referral] = (await referrals.list_referrals(program.id, bob, 1, None)).items
    assert (referral.status, referral.order_id) == ("pending", None)
    skewed = await placed("skewed", START - timedelta(minutes=2))  # a till's clock a little behind
    [referral] = (await referrals.list_referrals(program.id, bob, 1, None)).items
    assert (referral.status, referral.order_id) == ("qualified", skewed.order_id)


async def test_a_referral_whose_only_reward_could_not_be_granted_is_not_told_as_rewarded(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Its only reward a tier that left the ladder: the referral is settled (nothing is left
    to pay) but `referral.rewarded` does not go out, as when nothing is configured to pay."""
    tier_only = {"kind": "tier", "tier_code": "gold", "tier_days": 30}
    await setup(program, clock, referrer_reward=tier_only, referee_reward=None, milestones=[])
    ann, bob = await enrol(program, clock, "ann"), await enrol(program, clock, "bob")
    await redeem(program, clock, bob, await code_of(program, clock, ann))
    qualifying = await buy(program, clock, bob, 2500)
    ladder = LADDER | {"levels": LADDER["levels"][:1]}  # gold removed
    await tiers.configure(admin(program.id), msgspec.convert(ladder, TierConfig), "ladder-2", clock)
    clock.set(qualifying.available_from)
    assert await run_jobs(program, clock) == 1
    [referral] = (await referrals.list_referrals(program.id, ann, 50, None)).items
    assert referral.status == "rewarded" and [reward.tier_grant_id for reward in referral.rewards] == [None]
    assert "referral.rewarded" not in await referral_events(owner_connection, program.id, referral.id)


async def test_an_order_of_no_value_does_not_qualify_the_referral_without_a_minimum(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """With `min_order_minor` 0 (the default), a free order (a sample, a line discounted in
    full) made no paying customer and can never be refunded below the minimum, so nothing
    could take its rewards back: it does not qualify; the next paid order does."""
    await setup(program, clock, min_order_minor=0)
    ann, bob = await enrol(program, clock, "ann"), await enrol(program, clock, "bob")
    await redeem(program, clock, bob, await code_of(program, clock, ann))
    free = (OrderLine(sku="sample", category="coffee", unit_price=500, quantity=1, discount=500),)
    placement = orders.OrderPlacement(
        order_id="free", customer_id=bob, order=Order(currency="EUR", placed_at=clock.now(), lines=free)
    )
    order = await orders.place_order(checkout(program.id), program.shop_id, placement, clock)
    assert order.net == 0
    [referral] = (await referrals.list_referrals(program.id, bob, 1, None)).items
    assert (referral.status, referral.order_id) == ("pending", None)
    clock.set(order.available_from)
    assert await run_jobs(program, clock) == 0
    assert (await balances(owner_connection, program.id, ann))["available"] == 0
    paid = await buy(program, clock, bob, 100)
    [referral] = (await referrals.list_referrals(program.id, bob, 1, None)).items
    assert (referral.status, referral.order_id) == ("qualified", paid.order_id)


@pytest.mark.parametrize("kind", ["device", "payment"])
async def test_a_fingerprint_shared_after_the_redemption_cancels_the_referral_at_the_reward(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection, kind: str
) -> None:
    """A referee has no orders when they redeem (`referee_has_orders`), so the card they pay
    with is recorded after the redemption: a referee who pays their qualifying order with the
    referrer's card (or uses their device) is caught when the rewards are due, not paid."""
    await setup(program, clock)
    ann, bob = await enrol(program, clock, "ann"), await enrol(program, clock, "bob")
    await referrals.record_fingerprints(program.id, ann, ["dev-ann"], ["card-ann"], clock)
    referral = await redeem(program, clock, bob, await code_of(program, clock, ann))
    order = await buy(program, clock, bob, 3000)
    shared = (["dev-ann"], []) if kind == "device" else ([], ["card-ann"])
    await referrals.record_fingerprints(program.id, bob, *shared, clock)  # sent with the order
    clock.set(order.available_from)
    await run_jobs(program, clock)
    [after] = (await referrals.list_referrals(program.id, bob, 1, None)).items
    assert (after.status, after.rewards, after.cancelled_at) == ("cancelled", [], clock.now())
    assert after.note is not None and f"shared_{kind}" in after.note
    assert (await balances(owner_connection, program.id, ann))["available"] == 0
    assert (await balances(owner_connection, program.id, bob))["credit_available"] == 0
    assert (await referral_events(owner_connection, program.id, referral.id))[-1] == "referral.cancelled"
    assert await run_jobs(program, clock) == 0
    # with the rule switched off the same referral would have been paid
    await configure(program, clock, fraud_rules={"shared_device": False, "shared_payment": False})
    carl = await enrol(program, clock, "carl")
    await redeem(program, clock, carl, await code_of(program, clock, ann))
    await referrals.record_fingerprints(program.id, carl, *shared, clock)
    clock.advance(timedelta(minutes=5))
    carl_order = await buy(program, clock, carl, 3000)
    clock.set(carl_order.available_from)
    assert await run_jobs(program, clock) == 1
    assert (await referrals.list_referrals(program.id, carl, 1, None)).items[0].status == "rewarded"
    await ledger_invariants(owner_connection, program.id)
