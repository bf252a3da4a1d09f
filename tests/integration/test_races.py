"""Races between use cases on the real database: each scenario runs the real use-case
functions at once over the app's pool and checks the ledger and the answers afterwards."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import asyncpg

from service.domain.clock import ManualClock
from service.domain.customers import Enrolment
from service.domain.earning import Order, OrderLine, Refund
from service.domain.errors import DomainError, InvalidInput, RefereeAlreadyReferred, RefereeHasOrders
from service.domain.events import EventType
from service.domain.expiry import ExpiryPolicy, ExpiryRule
from service.domain.orders import ReturnPolicy, ReturnSettings
from service.usecases import bulk, ledger, ledger_jobs, orders, referrals, tiers, webhooks
from service.usecases.customers import enrol_customer
from service.usecases.programs import create_shop
from tests.conftest import ProgramFixture
from tests.integration import test_tiers
from tests.integration.ledger_helpers import admin, balances, checkout, enrol, sound
from tests.integration.test_order_life import START, basket, setup_program
from tests.integration.test_referrals import app_of, code_of, configure, redeem


async def test_concurrent_refunds_of_one_order_never_refund_more_than_it(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    till = checkout(program.id)
    ann = await enrol(program.id, "ann", clock)
    for attempt in range(3):
        order_id = f"O-{attempt}"
        placement = orders.OrderPlacement(order_id=order_id, customer_id=ann, order=basket())
        view = await orders.place_order(till, program.shop_id, placement, clock)  # net 2500
        outcomes = await asyncio.gather(
            *(
                orders.refund_order(till, program.shop_id, order_id, f"R-{n}", Refund(amount=1000), clock)
                for n in range(6)
            ),
            return_exceptions=True,
        )
        made = [o for o in outcomes if isinstance(o, orders.RefundView)]
        assert len(made) == 2 and all(isinstance(o, InvalidInput) for o in outcomes if o not in made), outcomes
        after = await orders.get_order(till, program.shop_id, order_id)
        assert after.refunded_net == 2000
        assert after.clawed_back == sum(r.points for r in made) == view.points * 2000 // 2500
    await sound(owner_connection, program.id)


async def test_refunds_racing_the_release_job_take_each_point_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    await orders.set_return_settings(program.id, ReturnSettings(window_days=14, policy=ReturnPolicy.ALLOW_NEGATIVE))
    till = checkout(program.id)
    customers = [await enrol(program.id, f"c{n}", clock) for n in range(4)]
    placed = []
    for n in range(8):
        placement = orders.OrderPlacement(order_id=f"P-{n}", customer_id=customers[n % 4], order=basket())
        placed.append(await orders.place_order(till, program.shop_id, placement, clock))
    clock.advance(timedelta(days=20))
    outcomes = await asyncio.gather(
        orders.release_due_orders(program.id, clock),
        *(
            orders.refund_order(till, program.shop_id, view.order_id, "R", Refund(amount=1250), clock)
            for view in placed
        ),
        orders.release_due_orders(program.id, clock),
        return_exceptions=True,
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    late = await orders.release_due_orders(program.id, clock)  # skipped while a refund held it
    assert outcomes[0] + outcomes[-1] + late == 8  # type: ignore[operator]
    for customer in customers:
        now = await balances(owner_connection, program.id, customer)
        assert now["pending"] == 0
        assert now["available"] - now.get("owed", 0) == 2 * (250 - 125)
    await sound(owner_connection, program.id)


async def test_a_referee_redeeming_two_codes_at_once_gets_one_referral(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    clock.set(START)
    await configure(program, clock, milestones=[])
    codes = [await code_of(program, clock, await enrol(program.id, f"referrer-{n}", clock)) for n in range(4)]
    for attempt in range(3):
        referee = await enrol(program.id, f"referee-{attempt}", clock)
        outcomes = await asyncio.gather(
            *(redeem(program, clock, referee, code) for code in codes), return_exceptions=True
        )
        kinds = Counter(type(o).__name__ for o in outcomes)
        assert kinds == {"ReferralView": 1, "RefereeAlreadyReferred": 3}, outcomes
        assert all(isinstance(o, referrals.ReferralView | RefereeAlreadyReferred) for o in outcomes)


async def test_a_referee_redeeming_while_their_first_order_is_placed(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """Without tiers, nothing but the referee's pending account is locked by the order: the
    redemption must take turns with it, or it counts no order while the order sees no
    referral, and a customer with an order holds a pending referral."""
    await setup_program(program, clock)
    await configure(program, clock, milestones=[])
    till = checkout(program.id)
    code = await code_of(program, clock, await enrol(program.id, "ann", clock))
    for attempt in range(8):
        referee = await enrol(program.id, f"friend-{attempt}", clock)
        placement = orders.OrderPlacement(order_id=f"Q-{attempt}", customer_id=referee, order=basket())
        redeemed, _ = await asyncio.gather(
            referrals.redeem(app_of(program, referee), referee, referrals.Redemption(code=code), clock),
            orders.place_order(till, program.shop_id, placement, clock),
            return_exceptions=True,
        )
        status = await owner_connection.fetchval(
            "SELECT status FROM referrals WHERE program_id = $1 AND referee_id = $2", program.id, referee
        )
        if isinstance(redeemed, RefereeHasOrders):
            assert status is None
        else:
            assert isinstance(redeemed, tuple), redeemed
            assert status == "qualified", (attempt, status)  # the order came after the redemption


async def test_bulk_import_sent_again_while_the_first_runs_acts_once(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    customers = [await enrol(program.id, f"b{n}", clock) for n in range(4)]
    items: list[bulk.BulkOrder | bulk.BulkGrant] = []
    for n, customer in enumerate(customers):
        items.append(
            bulk.BulkGrant(key=f"g-{n}", adjustment=ledger.Adjustment(customer_id=customer, amount=100, reason="x"))
        )
        items.append(
            bulk.BulkOrder(
                shop_id=program.shop_id,
                placement=orders.OrderPlacement(order_id=f"B-{n}", customer_id=customer, order=basket()),
            )
        )
        items.append(
            bulk.BulkGrant(key=f"d-{n}", adjustment=ledger.Adjustment(customer_id=customer, amount=-60, reason="y"))
        )
    runs = await asyncio.gather(*(bulk.award_in_bulk(admin(program.id), items, clock) for _ in range(4)))
    for run in runs:
        assert not [o for o in run if isinstance(o, DomainError)], run
        assert run == runs[0]
    for customer in customers:
        now = await balances(owner_connection, program.id, customer)
        assert (now["available"], now["pending"]) == (40, 250)
    assert await owner_connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", program.id) == 12
    await sound(owner_connection, program.id)


async def test_concurrent_enrolments_of_one_external_id_make_one_customer(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    outcomes = await asyncio.gather(
        *(enrol_customer(admin(program.id), Enrolment(external_id="same", email="a@x.test"), clock) for _ in range(10))
    )
    assert len({customer.id for customer, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    accounts = await owner_connection.fetchval(
        "SELECT count(*) FROM accounts WHERE program_id = $1 AND customer_id IS NOT NULL", program.id
    )
    assert accounts == len(await balances(owner_connection, program.id, outcomes[0][0].id))


async def test_a_rotation_retried_at_once_rotates_once(program: ProgramFixture, clock: ManualClock) -> None:
    endpoint = await webhooks.create_endpoint(
        program.id, "https://hooks.example/x", [EventType.POINTS_EARNED], "", clock, key="e"
    )
    answers = await asyncio.gather(
        *(webhooks.rotate_secret(program.id, endpoint.endpoint.id, 60, "rot", clock) for _ in range(10))
    )
    assert len({a.secret for a in answers}) == 1
    other = await webhooks.rotate_secret(program.id, endpoint.endpoint.id, 60, "rot-2", clock)
    assert other.secret != answers[0].secret


async def test_one_order_id_at_two_shops_at_once_is_two_orders(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    other = await create_shop(program.id, "Other shop")
    till = checkout(program.id)
    ann = await enrol(program.id, "ann", clock)
    placement = orders.OrderPlacement(order_id="SAME", customer_id=ann, order=basket())
    views = await asyncio.gather(
        *(orders.place_order(till, shop, placement, clock) for shop in [program.shop_id, other.id] * 5)
    )
    assert len({(v.shop_id, v.award_entry_id) for v in views}) == 2
    assert (await balances(owner_connection, program.id, ann))["pending"] == 500
    await sound(owner_connection, program.id)


async def test_a_tier_grant_racing_an_upgrading_order(program: ProgramFixture, clock: ManualClock) -> None:
    await setup_program(program, clock)
    await test_tiers.configure(program, clock)
    till = checkout(program.id)
    big = Order(
        currency="EUR", placed_at=START, lines=(OrderLine(sku="m", category="c", unit_price=12000, quantity=1),)
    )
    for attempt in range(4):
        ann = await enrol(program.id, f"t{attempt}", clock)
        placement = orders.OrderPlacement(order_id=f"T-{attempt}", customer_id=ann, order=big)
        request = tiers.GrantRequest(tier_code="silver", days=30, reason="vip")
        await asyncio.gather(
            tiers.grant_tier(admin(program.id), ann, request, f"grant-{attempt}", clock),
            orders.place_order(till, program.shop_id, placement, clock),
        )
        history = await tiers.tier_history(program.id, ann)
        progress = await tiers.tier_progress(program.id, ann, clock)
        assert history[0].to_code == progress.tier.code, (history, progress)


async def test_expiry_racing_redemptions_of_the_same_lots(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    who = admin(program.id)
    await ledger.set_expiry_rule(program.id, ExpiryRule(ExpiryPolicy.DAYS, 1))
    ann = await enrol(program.id, "ann", clock)
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=100, reason="old"), "old", clock)
    clock.advance(timedelta(days=3))
    await ledger.adjust(who, ledger.Adjustment(customer_id=ann, amount=50, reason="new"), "new", clock)
    outcomes = await asyncio.gather(
        ledger_jobs.expire_points(program.id, clock),
        *(ledger.hold_points(who, ledger.HoldRequest(customer_id=ann, amount=20), f"h{n}", clock) for n in range(6)),
        ledger_jobs.expire_points(program.id, clock),
        return_exceptions=True,
    )
    held = sum(20 for o in outcomes if isinstance(o, ledger.Hold))
    expired = await owner_connection.fetchval(
        "SELECT coalesce(sum(p.amount), 0) FROM postings p JOIN accounts a"
        " ON a.program_id = p.program_id AND a.id = p.account_id WHERE p.program_id = $1 AND a.kind = 'expired'",
        program.id,
    )
    now = await balances(owner_connection, program.id, ann)
    assert now["available"] + now["held"] + expired == 150, (now, expired, outcomes)
    assert now["held"] == held
    await sound(owner_connection, program.id)


async def test_a_ladder_change_racing_orders_leaves_nobody_in_a_removed_level(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await test_tiers.setup(program, clock)
    till = checkout(program.id)
    silver = Order(
        currency="EUR",
        placed_at=test_tiers.START,
        lines=(OrderLine(sku="m", category="c", unit_price=300, quantity=1),),
    )
    ladders = [
        [
            {"code": "bronze", "name": "Bronze", "threshold": 0},
            {"code": "gold", "name": "Gold", "threshold": 1000, "earn_multiplier_bp": 15000},
        ],
        test_tiers.LADDER["levels"],
    ]
    customers = [await enrol(program.id, f"l{n}", clock) for n in range(6)]
    for n, customer in enumerate(customers):
        for _ in range(10):  # 300 points: silver
            placement = orders.OrderPlacement(order_id=f"L-{n}-{_}", customer_id=customer, order=silver)
            await orders.place_order(till, program.shop_id, placement, clock)
    for attempt in range(4):
        removed = attempt % 2 == 0
        await asyncio.gather(
            test_tiers.configure(program, clock, levels=ladders[attempt % 2]),
            *(
                orders.place_order(
                    till,
                    program.shop_id,
                    orders.OrderPlacement(order_id=f"M-{attempt}-{n}", customer_id=c, order=silver),
                    clock,
                )
                for n, c in enumerate(customers)
            ),
        )
        if removed:
            stale = await owner_connection.fetch(
                "SELECT customer_id, earned_code, effective_code FROM customer_tiers WHERE program_id = $1"
                " AND 'silver' IN (earned_code, effective_code)",
                program.id,
            )
            assert not stale, (attempt, stale)
