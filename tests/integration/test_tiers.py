"""Tiers on the real database: upgrades on the crossing order, reviews with a grace period,
refunds, rolling windows in the program's time zone, grants, and configuration changes."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from service.db import tiers as tier_rows
from service.db.transaction import in_transaction
from service.domain.clock import ManualClock
from service.domain.earning import Order, OrderLine, Refund
from service.domain.errors import InvalidInput
from service.domain.ledger import AccountKind, customer_account
from service.domain.tiers import TierConfig
from service.usecases import orders, tiers
from service.usecases.earning_rules import RulesDraft, publish_rules
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import admin, buy, checkout, enrol

START = datetime(2026, 2, 2, 11, 0, tzinfo=UTC)
LADDER: dict[str, Any] = {
    "basis": "points",
    "window": "rolling_12_months",
    "grace_days": 30,
    "downgrade": "one_level",
    "levels": [
        {"code": "bronze", "name": "Bronze", "threshold": 0},
        {"code": "silver", "name": "Silver", "threshold": 300, "earn_multiplier_bp": 12000},
        {"code": "gold", "name": "Gold", "threshold": 1000, "earn_multiplier_bp": 15000, "perks": ["free shipping"]},
    ],
}
_keys = itertools.count()


async def setup(program: ProgramFixture, clock: ManualClock, **ladder: Any) -> None:
    clock.set(START - timedelta(days=400))
    rules = msgspec.convert({"currency": "EUR", "points_per_unit": 10, "unit_minor": 100}, RulesDraft)
    await publish_rules(admin(program.id), rules, "rules", clock)
    await configure(program, clock, **ladder)
    clock.set(START)


async def configure(program: ProgramFixture, clock: ManualClock, **ladder: Any) -> tiers.TierSettings:
    config = msgspec.convert(LADDER | ladder, TierConfig)
    return await tiers.configure(admin(program.id), config, f"tiers-{next(_keys)}", clock)


async def tier_events(connection: asyncpg.Connection, program_id: str, customer: str) -> list[tuple[str, Any]]:
    rows = await connection.fetch(
        "SELECT type, payload FROM (SELECT type, occurred_at, id, payload, customer_id FROM event_outbox"
        " WHERE program_id = $1 UNION ALL SELECT type, occurred_at, id, payload, customer_id FROM events"
        " WHERE program_id = $1) e WHERE customer_id = $2 AND type LIKE 'tier.%' ORDER BY occurred_at, id",
        program_id,
        customer,
    )
    return [(row["type"], json.loads(row["payload"])) for row in rows]


async def kinds(program: ProgramFixture, customer: str) -> list[tuple[str, str | None, str]]:
    history = await tiers.tier_history(program.id, customer)
    return [(change.kind, change.from_code, change.to_code) for change in reversed(history)]


async def test_upgrade_on_the_crossing_order_and_not_before(program: ProgramFixture, clock: ManualClock) -> None:
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    first = await buy(program, clock, ann)
    assert first.points == 250
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "bronze"
    crossing = await buy(program, clock, ann)  # 500 points: silver
    assert crossing.points == 250  # the crossing order earns at the tier it was placed in
    progress = await tiers.tier_progress(program.id, ann, clock)
    assert (progress.tier.code, progress.measure, progress.still_needed) == ("silver", 500, 500)
    assert progress.next_tier is not None and progress.next_tier.code == "gold"
    assert progress.kept_until == datetime(2027, 2, 1, 23, 0, tzinfo=UTC) + timedelta(days=30)
    assert [c for c in crossing.breakdown if c.rule == "tier"] == []
    silver = await buy(program, clock, ann)
    assert silver.points == 300  # x1.2 now
    history = await tiers.tier_history(program.id, ann)
    assert [(c.kind, c.from_code, c.to_code) for c in history] == [("upgrade", "bronze", "silver")]
    assert history[0].cause == f"order {crossing.order_id} at shop {program.shop_id}"
    await buy(program, clock, ann, net=1700)  # 204 -> 1004
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "gold"


async def test_downgrade_only_after_the_grace_period(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    await buy(program, clock, ann, net=3000)  # 300: silver from START
    review = datetime(2027, 2, 1, 23, 0, tzinfo=UTC)  # 2 February 2027 00:00 in Amsterdam
    clock.set(review - timedelta(seconds=1))
    assert await tiers.review_due(program.id, clock) == 0
    clock.set(review)  # the order left the rolling window at this same midnight
    assert await tiers.review_due(program.id, clock) == 1
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "silver"
    clock.advance(timedelta(days=16))
    assert await tiers.review_due(program.id, clock) == 0  # 14 days before the downgrade: the warning
    clock.advance(timedelta(days=14) - timedelta(seconds=1))
    assert await tiers.review_due(program.id, clock) == 0
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "silver"
    clock.advance(timedelta(seconds=1))
    assert await tiers.review_due(program.id, clock) == 1
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "bronze"
    assert await kinds(program, ann) == [
        ("upgrade", "bronze", "silver"),
        ("grace_started", "silver", "silver"),
        ("downgrade", "silver", "bronze"),
    ]
    assert await tiers.review_due(program.id, clock) == 0  # the base level is never reviewed
    events = await tier_events(owner_connection, program.id, ann)
    assert [(kind, payload.get("to_tier")) for kind, payload in events] == [
        ("tier.upgraded", "silver"),
        ("tier.downgrade_warning", None),  # 14 days ahead, once however often the job runs
        ("tier.downgraded", "bronze"),
    ]
    assert events[1][1]["downgrade_at"] == "2027-03-03T23:00:00Z"


async def test_qualifying_again_in_the_grace_period_keeps_the_tier(program: ProgramFixture, clock: ManualClock) -> None:
    await setup(program, clock, downgrade="to_qualified")
    ann = await enrol(program.id, "ann", clock)
    await buy(program, clock, ann, net=10_000)  # 1000: gold
    clock.set(datetime(2027, 2, 1, 23, 0, tzinfo=UTC))
    await tiers.review_due(program.id, clock)
    clock.advance(timedelta(days=3))
    await buy(program, clock, ann, net=7000)  # 700 x1.5 = 1050 within the window: gold again
    clock.advance(timedelta(days=40))
    assert await tiers.review_due(program.id, clock) == 0
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "gold"
    assert [k for k, _, _ in await kinds(program, ann)] == ["upgrade", "grace_started", "review_passed"]


async def test_a_refund_below_the_threshold_downgrades_at_the_next_review(
    program: ProgramFixture, clock: ManualClock
) -> None:
    await setup(program, clock, window="lifetime")
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    kept = await buy(program, clock, bob, net=3000)
    refunded = await buy(program, clock, ann, net=3000)
    assert kept.points == refunded.points == 300
    till = checkout(program.id)
    await orders.refund_order(till, program.shop_id, refunded.order_id, "r1", Refund(amount=1000), clock)
    progress = await tiers.tier_progress(program.id, ann, clock)
    assert (progress.tier.code, progress.measure) == ("silver", 200)  # no change until the review
    clock.set(datetime(2027, 2, 1, 23, 0, tzinfo=UTC))
    assert await tiers.review_due(program.id, clock) == 2
    clock.advance(timedelta(days=30))
    await tiers.review_due(program.id, clock)
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "bronze"
    bob_now = await tiers.tier_progress(program.id, bob, clock)  # lifetime: still qualifies
    assert bob_now.tier.code == "silver"
    assert bob_now.kept_until == datetime(2028, 2, 1, 23, 0, tzinfo=UTC) + timedelta(days=30)


async def test_the_rolling_window_starts_at_local_midnight(program: ProgramFixture, clock: ManualClock) -> None:
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    clock.set(datetime(2025, 11, 23, 22, 30, tzinfo=UTC))  # 23:30 on 23 November in Amsterdam
    await buy(program, clock, ann, net=1000)
    clock.set(datetime(2025, 11, 23, 23, 30, tzinfo=UTC))  # 00:30 on 24 November
    await buy(program, clock, ann, net=2000)
    # on a local day D the window holds the orders of the local days after D a year ago
    clock.set(datetime(2026, 11, 22, 22, 59, tzinfo=UTC))  # 23:59 on 22 November 2026: both
    assert (await tiers.tier_progress(program.id, ann, clock)).measure == 300
    clock.set(datetime(2026, 11, 22, 23, 0, tzinfo=UTC))  # 00:00 on 23 November: the 23:30 order left
    assert (await tiers.tier_progress(program.id, ann, clock)).measure == 200
    clock.set(datetime(2026, 11, 23, 22, 59, tzinfo=UTC))  # 23:59 on 23 November: the 00:30 order stays
    assert (await tiers.tier_progress(program.id, ann, clock)).measure == 200
    clock.set(datetime(2026, 11, 23, 23, 0, tzinfo=UTC))  # 00:00 on 24 November: none
    assert (await tiers.tier_progress(program.id, ann, clock)).measure == 0


async def test_a_granted_tier_is_a_floor_until_it_ends(program: ProgramFixture, clock: ManualClock) -> None:
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    grant = await tiers.grant_tier(
        admin(program.id), ann, tiers.GrantRequest(tier_code="gold", days=10, reason="referral reward"), "g1", clock
    )
    progress = await tiers.tier_progress(program.id, ann, clock)
    assert (progress.tier.code, progress.earned_tier, progress.granted_until) == ("gold", "bronze", grant.ends_at)
    assert (await buy(program, clock, ann)).points == 375  # x1.5 while granted
    with pytest.raises(InvalidInput) as unknown:
        await tiers.grant_tier(
            admin(program.id), ann, tiers.GrantRequest(tier_code="platinum", days=1, reason="x"), "g2", clock
        )
    assert unknown.value.field == "tier_code"
    clock.advance(timedelta(days=10))
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "silver"  # earned 375 meanwhile
    assert await tiers.end_grants(program.id, clock) == 1
    assert await tiers.end_grants(program.id, clock) == 0
    assert await kinds(program, ann) == [("grant", "bronze", "gold"), ("grant_ended", "gold", "silver")]


async def test_a_grant_made_while_the_grant_job_runs_is_not_taken_away_by_it(
    program: ProgramFixture, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job reads the customers whose grant ended, then settles them one by one; a grant
    made in between (a request a minute into the run) is in force when the job reaches the
    customer, so the job's settling keeps it: it must not judge it by the instant the run began."""
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    await tiers.grant_tier(
        admin(program.id), ann, tiers.GrantRequest(tier_code="silver", days=1, reason="a"), "s", clock
    )
    clock.advance(timedelta(days=2))  # the silver grant has ended
    listed = tier_rows.ended_grants

    async def listed_then_a_grant_arrives(*args: Any) -> list[str]:
        customers = await listed(*args)
        clock.advance(timedelta(minutes=1))
        request = tiers.GrantRequest(tier_code="gold", days=10, reason="b")
        await tiers.grant_tier(admin(program.id), ann, request, "g", clock)
        return customers

    monkeypatch.setattr(tier_rows, "ended_grants", listed_then_a_grant_arrives)
    assert await tiers.end_grants(program.id, clock) == 1
    stored = await in_transaction(lambda connection: tier_rows.load_tier(connection, program.id, ann))
    assert stored is not None and stored.effective_code == "gold"
    # the silver grant had ended before the gold one was made: its end is recorded first
    assert await kinds(program, ann) == [
        ("grant", "bronze", "silver"),
        ("grant_ended", "silver", "bronze"),
        ("grant", "bronze", "gold"),
    ]


async def test_changing_the_ladder_with_customers_in_tiers(program: ProgramFixture, clock: ManualClock) -> None:
    await setup(program, clock)
    ann, bob = await enrol(program.id, "ann", clock), await enrol(program.id, "bob", clock)
    await buy(program, clock, ann, net=3000)  # silver
    await buy(program, clock, bob, net=10_000)  # gold
    ladder = [
        {"code": "bronze", "name": "Bronze", "threshold": 0},
        {"code": "gold", "name": "Gold", "threshold": 2000, "earn_multiplier_bp": 15000},
    ]
    settings = await configure(program, clock, levels=ladder)
    assert settings.version == 2
    # silver is gone: Ann moves at once to what she qualifies for; Bob keeps gold until reviewed
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "bronze"
    assert (await tiers.tier_progress(program.id, bob, clock)).tier.code == "gold"
    history = await tiers.tier_history(program.id, ann)
    assert (history[0].kind, history[0].to_code, history[0].cause) == (
        "configuration",
        "bronze",
        "configuration version 2",
    )
    with pytest.raises(InvalidInput) as bad:
        await configure(program, clock, levels=[ladder[1], ladder[0]])
    assert bad.value.field == "levels[0].threshold"


async def test_a_customer_moved_out_of_a_removed_level_is_told_by_a_tier_event(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """events.md: tier.downgraded is emitted "when a level was removed" (every change of a
    customer's tier emits an event), from the removed level to the one they qualify for."""
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    await buy(program, clock, ann, net=3000)  # silver
    ladder = [
        {"code": "bronze", "name": "Bronze", "threshold": 0},
        {"code": "gold", "name": "Gold", "threshold": 2000, "earn_multiplier_bp": 15000},
    ]
    await configure(program, clock, levels=ladder)
    events = await tier_events(owner_connection, program.id, ann)
    assert [(kind, data["from_tier"], data["to_tier"]) for kind, data in events] == [
        ("tier.upgraded", "bronze", "silver"),
        ("tier.downgraded", "silver", "bronze"),
    ]
    assert events[-1][1]["reason"] == "configuration version 2"
    assert (await kinds(program, ann))[-1] == ("configuration", "silver", "bronze")


async def test_an_order_measures_the_tier_over_the_window_with_itself_and_history_before_the_ladder(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """The order's own statement measures the tier (its share added to the orders before it):
    orders placed before tiers existed count if they are in the window, an order placed
    before the window (a late upload) does not, and the first order under the ladder earns at
    the base level and moves the customer to the level the measure reaches."""
    clock.set(START - timedelta(days=400))
    rules = msgspec.convert({"currency": "EUR", "points_per_unit": 10, "unit_minor": 100}, RulesDraft)
    await publish_rules(admin(program.id), rules, "rules", clock)
    ann = await enrol(program.id, "ann", clock)
    await buy(program, clock, ann, net=8000)  # 800 points, out of the window at START
    clock.set(START - timedelta(days=60))
    await buy(program, clock, ann, net=2000)  # 200 points, in it
    clock.set(START)
    await configure(program, clock)
    first = await buy(program, clock, ann, net=1500)
    assert first.points == 150  # at the base level: no tier row yet
    progress = await tiers.tier_progress(program.id, ann, clock)
    assert (progress.tier.code, progress.measure) == ("silver", 350)
    assert await kinds(program, ann) == [("upgrade", "bronze", "silver")]

    late = Order(
        currency="EUR",
        placed_at=START - timedelta(days=399),
        lines=(OrderLine(sku="beans", category="coffee", unit_price=10_000, quantity=1),),
    )
    placement = orders.OrderPlacement(order_id="late", customer_id=ann, order=late)
    view = await orders.place_order(checkout(program.id), program.shop_id, placement, clock)
    assert view.points == 1200  # at silver, but placed before the window: 350 + 1200 would be gold
    progress = await tiers.tier_progress(program.id, ann, clock)
    assert (progress.tier.code, progress.measure) == ("silver", 350)
    assert await kinds(program, ann) == [("upgrade", "bronze", "silver")]


async def test_a_grant_made_while_an_order_waits_for_its_locks_is_counted_by_it(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """A grant starts when it is made: one made after the order read its instant, while the
    order waited for the customer's rows, is in force when the order settles the tier, and
    the order does not take it away (it recorded a downgrade from the granted tier)."""
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    await buy(program, clock, ann)  # a bronze tier row
    pending = customer_account(ann, AccountKind.PENDING).code
    async with owner_connection.transaction():
        await owner_connection.execute(
            "SELECT 1 FROM accounts WHERE program_id = $1 AND code = $2 FOR UPDATE", program.id, pending
        )
        order = asyncio.create_task(buy(program, clock, ann))
        await asyncio.sleep(0.5)  # the order has read its instant and waits for the account
        clock.advance(timedelta(minutes=1))
        request = tiers.GrantRequest(tier_code="gold", days=10, reason="apology")
        await tiers.grant_tier(admin(program.id), ann, request, "gold-grant", clock)
    await order
    assert (await tiers.tier_progress(program.id, ann, clock)).tier.code == "gold"
    assert await kinds(program, ann) == [("grant", "bronze", "gold")]


async def test_a_tier_started_on_29_february_is_reviewed_once_its_day_left_the_window(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """On 28 February 2029 the rolling window holds the orders of the days after 28 February
    2028, so 29 February 2028 is still in it: a tier that started that day is reviewed on
    1 March 2029, when its day has left the window (as every other tier is), not on 28
    February, when the order that made it still counts and would keep it another year."""
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    clock.set(datetime(2028, 2, 29, 11, 0, tzinfo=UTC))
    await buy(program, clock, ann, net=3000)  # 300: silver on 29 February 2028
    clock.set(datetime(2029, 2, 27, 23, 0, tzinfo=UTC))  # 28 February 2029 00:00 in Amsterdam
    assert (await tiers.tier_progress(program.id, ann, clock)).measure == 300  # 29 February 2028 counts
    assert await tiers.review_due(program.id, clock) == 0
    clock.set(datetime(2029, 2, 28, 23, 0, tzinfo=UTC))  # 1 March 2029 00:00: the order left
    assert (await tiers.tier_progress(program.id, ann, clock)).measure == 0
    assert await tiers.review_due(program.id, clock) == 1
    assert await kinds(program, ann) == [("upgrade", "bronze", "silver"), ("grace_started", "silver", "silver")]


async def test_an_order_after_a_grant_ended_records_the_end_of_the_grant_not_a_downgrade_by_the_order(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """A grant ended and the job has not recorded it yet when the customer orders: the order
    settles the tier (the grant no longer counts), and the change it records is the grant's
    end (`grant_ended`, told with that reason), not a downgrade caused by an order, which
    only ever moves a customer up."""
    await setup(program, clock)
    ann = await enrol(program.id, "ann", clock)
    request = tiers.GrantRequest(tier_code="gold", days=10, reason="apology")
    await tiers.grant_tier(admin(program.id), ann, request, "gold-for-ann", clock)
    clock.advance(timedelta(days=11))  # the grant ended; the job has not run
    order = await buy(program, clock, ann, net=3000)  # 300 at bronze: silver
    assert order.points == 300
    history = await tiers.tier_history(program.id, ann)
    assert [(c.kind, c.from_code, c.to_code) for c in reversed(history)] == [
        ("grant", "bronze", "gold"),
        ("grant_ended", "gold", "bronze"),
        ("upgrade", "bronze", "silver"),
    ]
    assert history[1].cause == "granted tier ended"
    assert history[0].cause == f"order {order.order_id} at shop {program.shop_id}"
    events = await tier_events(owner_connection, program.id, ann)
    assert [(kind, data["from_tier"], data["to_tier"], data["reason"].split(":")[0]) for kind, data in events] == [
        ("tier.upgraded", "bronze", "gold", events[0][1]["reason"].split(":")[0]),
        ("tier.downgraded", "gold", "bronze", "granted tier ended"),
        ("tier.upgraded", "bronze", "silver", f"order {order.order_id} at shop {program.shop_id}"),
    ]
    assert await tiers.end_grants(program.id, clock) == 1  # the job closes it, recording nothing more
    assert len(await tiers.tier_history(program.id, ann)) == 3


async def test_concurrent_orders_crossing_a_threshold_together_upgrade_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Three orders of one customer at once, two of which cross Silver's 300 together: they
    take turns, so one upgrade, one event, and only the orders after it earn at 1.2x."""
    await setup(program, clock)
    till = checkout(program.id)
    lines = (OrderLine(sku="beans", category="coffee", unit_price=2000, quantity=1),)
    for attempt in range(3):
        ann = await enrol(program.id, f"together-{attempt}", clock)
        order = Order(currency="EUR", placed_at=clock.now(), lines=lines)
        placed = await asyncio.gather(
            *(
                orders.place_order(
                    till,
                    program.shop_id,
                    orders.OrderPlacement(order_id=f"T{attempt}-{n}", customer_id=ann, order=order),
                    clock,
                )
                for n in range(3)
            )
        )
        assert sorted(view.points for view in placed) == [200, 200, 240]
        assert [kind for kind, _ in await tier_events(owner_connection, program.id, ann)] == ["tier.upgraded"]
        assert await kinds(program, ann) == [("upgrade", "bronze", "silver")]
