"""Orders at checkout: award points into pending, release them when the return window ends,
and claw them back on refunds. Every change of value is a ledger entry."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import msgspec

from service.db import job_failures
from service.db import orders as rows
from service.db.ledger import consumed_slices, created_lots, write_entry
from service.db.transaction import in_transaction
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.earning import (
    Award,
    AwardComponent,
    Order,
    OrderLine,
    Refund,
    RefundLine,
    calculate_award,
    claw_back,
)
from service.domain.errors import InvalidInput, NotFound, NotYetThere
from service.domain.events import PointsReturned
from service.domain.expiry import expires_at
from service.domain.ledger import AccountKind, Unit
from service.domain.orders import (
    FUTURE_TOLERANCE,
    ReturnSettings,
    award_draft,
    check_redemption_hold,
    redemption_return_draft,
    refund_draft,
    release_at,
    release_draft,
    returned_slices,
    spent_slices,
    split_refund,
)
from service.usecases import metrics, referrals, tiers
from service.usecases.earning_rules import rules_found
from service.usecases.idempotency import derived_key, fingerprint, reuse_named, run_once
from service.usecases.ledger_settings import settings_from_row
from service.usecases.lifecycle import emit_order_events, emit_points_returned

RELEASE_JOB = "release-orders"
RELEASE_ACTOR = f"job:{RELEASE_JOB}"
T = TypeVar("T")


class OrderPlacement(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An order as a shop sends it; (shop, order_id) identifies it for good. Defaults are left
    out of its encoding, so an order without a hold has the fingerprint it had before
    `redemption_hold_id` existed (its retries still match)."""

    order_id: str
    customer_id: str
    order: Order
    redemption_hold_id: str | None = None  # the captured hold that paid for it


class RefundView(msgspec.Struct, frozen=True, kw_only=True):
    refund_id: str
    lines: tuple[RefundLine, ...]
    amount: int | None
    refunded_net: int  # of the order, this refund included
    points: int  # clawed back by this refund: from_pending + from_available + owed + forgiven
    from_pending: int
    from_available: int
    owed: int
    forgiven: int
    entry_id: int | None
    created_at: datetime
    points_returned: int = 0  # of the points (or credit) the order's hold paid with, by this refund
    return_entry_id: int | None = None  # the entry that gave them back
    owed_settled: int = 0  # of points_returned, what paid off points owed (the rest went to available)


class OrderView(msgspec.Struct, frozen=True, kw_only=True):
    shop_id: str
    order_id: str
    customer_id: str
    currency: str
    placed_at: datetime
    net: int
    points: int
    breakdown: tuple[AwardComponent, ...]
    rules_version: int
    status: str  # pending: points wait for the return window; released: they are available
    available_from: datetime
    award_entry_id: int | None
    release_entry_id: int | None
    refunded_net: int
    clawed_back: int
    refunds: tuple[RefundView, ...] = ()
    redemption_hold_id: str | None = None
    redemption_unit: Unit | None = None
    points_redeemed: int = 0  # what the hold's capture spent on the order
    points_returned: int = 0  # of it, given back by the order's refunds so far


def _refund_view(row: asyncpg.Record) -> RefundView:
    request = rows.refund_request(row)
    return RefundView(
        refund_id=row["id"],
        lines=request.lines,
        amount=request.amount,
        refunded_net=row["refunded_net"],
        points=row["points"],
        from_pending=row["from_pending"],
        from_available=row["from_available"],
        owed=row["owed"],
        forgiven=row["forgiven"],
        entry_id=row["entry_id"],
        created_at=row["created_at"],
        points_returned=row["points_returned"],
        return_entry_id=row["return_entry_id"],
        owed_settled=row["return_settled"],
    )


def _order_view(row: asyncpg.Record, refunds: list[asyncpg.Record] | None = None) -> OrderView:
    award = msgspec.json.decode(row["award"], type=Award)
    return OrderView(
        shop_id=row["shop_id"],
        order_id=row["id"],
        customer_id=row["customer_id"],
        currency=row["currency"],
        placed_at=row["placed_at"],
        net=row["net"],
        points=row["points"],
        breakdown=award.breakdown,
        rules_version=award.rules_version,
        status="pending" if row["released_at"] is None else "released",
        available_from=row["release_at"],
        award_entry_id=row["award_entry_id"],
        release_entry_id=row["release_entry_id"],
        refunded_net=row["refunded_net"],
        clawed_back=row["clawed_back"],
        refunds=tuple(_refund_view(refund) for refund in refunds or ()),
        redemption_hold_id=row["redemption_hold_id"],
        redemption_unit=None if row["redemption_unit"] is None else Unit(row["redemption_unit"]),
        points_redeemed=row["points_redeemed"],
        points_returned=row["points_returned"],
    )


def _order_metadata(shop_id: str, shop: str, order_id: str) -> dict[str, Any]:
    return {"shop_id": shop_id, "shop_name": shop, "order_id": order_id}


async def place_order(principal: Principal, shop_id: str, placement: OrderPlacement, clock: Clock) -> OrderView:
    """Award an order's points into pending, once per (shop, order id): the same order again
    gets the same answer, the same id with other content is a 409. A key bound to another
    shop is refused first, before the order's key is looked up or anything is written."""
    principal.check_shop(shop_id)

    async def work(connection: asyncpg.Connection) -> OrderView:
        now = clock.now()
        order = placement.order
        if order.placed_at > now + FUTURE_TOLERANCE:
            raise InvalidInput("placed_at is in the future", field="placed_at")
        program_id = principal.program_id
        if order.placed_at > now:
            # ahead of the clock: a rules version published meanwhile may start before placed_at,
            # so it waits for this order and then refuses to (publish_rules)
            await connection.execute(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended('earning-rules:' || $1, 0))", program_id
            )
        # the customer's pending balance is locked first: their orders take turns, so a
        # campaign's per-customer cap counts every earlier order
        inputs = await _not_yet(
            rows.order_inputs(connection, program_id, shop_id, placement.customer_id, order.placed_at, now)
        )
        shop, settings, returns = inputs["shop_name"], settings_from_row(inputs), rows.returns_from_row(inputs)
        redemption = None
        if placement.redemption_hold_id is not None:
            hold_id = placement.redemption_hold_id
            hold, paid_for = await rows.redemption_hold(connection, program_id, hold_id)
            redemption = check_redemption_hold(hold_id, hold, placement.customer_id, now, paid_for)
        rules = rules_found(inputs["rules"], order.placed_at)
        bonus = inputs["campaign_bonus"]
        so_far = None if bonus is None else msgspec.json.decode(bonus, type=dict[str, int])
        tier = tiers.tier_for_order(placement.customer_id, inputs, now)
        award = calculate_award(
            order, rules, zone=settings.zone, tier_multiplier_bp=tiers.multiplier_bp(tier), bonus_so_far=so_far
        )
        # the points' validity runs from when they can be spent, not from the purchase: a
        # lot counted from placed_at could expire while pending (end of month, a short period)
        available_from = release_at(order.placed_at, returns.window_days, settings.zone)
        lot_expiry = expires_at(settings.expiry, available_from, settings.zone)
        entry_id = None
        if award.total:
            draft = award_draft(
                placement.customer_id,
                award.total,
                _order_metadata(shop_id, shop, placement.order_id) | {"rules_version": award.rules_version},
                lot_expiry,
            )
            entry_id = (await write_entry(connection, program_id, draft, actor=principal.actor, now=now)).id
        row = await rows.insert_order(
            connection,
            program_id,
            {
                "shop_id": shop_id,
                "id": placement.order_id,
                "customer_id": placement.customer_id,
                "currency": order.currency,
                "placed_at": order.placed_at,
                "lines": order.lines,
                "net": order.net,
                "points": award.total,
                "award": award,
                "award_entry_id": entry_id,
                "release_at": available_from,
                "created_at": now,
                "redemption_hold_id": None if redemption is None else redemption.id,
                "redemption_unit": None if redemption is None else redemption.unit.value,
                "points_redeemed": 0 if redemption is None else redemption.captured,
            },
            tiers.order_window(tier, settings.zone, now),
        )
        await referrals.qualify_on_order(connection, program_id, row, inputs)
        await emit_order_events(connection, program_id, row, lot_expiry)
        cause = f"order {placement.order_id} at shop {shop_id}"
        await tiers.after_order(connection, program_id, tier, row["tier_measure"], settings.zone, now, cause)
        # last: the metric counts are shared by the customers of a shard, so they are held
        # for the shortest time before the commit
        await metrics.after_order(connection, program_id, row)
        return _order_view(row)

    key = derived_key("order", shop_id, placement.order_id)
    request = fingerprint("order", {"shop_id": shop_id, "placement": placement})
    with reuse_named(f"order {placement.order_id!r} of shop {shop_id} was sent before with other content", "order_id"):
        return await run_once(principal.program_id, key, request, OrderView, work)


async def _not_yet(lookup: Awaitable[T]) -> T:
    """The lookup's result; what it did not find may exist later (NotYetThere: not remembered)."""
    try:
        return await lookup
    except NotFound as missing:
        raise NotYetThere(missing.detail, field=missing.field) from None


async def get_order(principal: Principal, shop_id: str, order_id: str) -> OrderView:
    """The order as it stands now, with its refunds."""
    principal.check_shop(shop_id)
    program_id = principal.program_id

    async def work(connection: asyncpg.Connection) -> OrderView:
        row = await rows.load_order(connection, program_id, shop_id, order_id)
        return _order_view(row, await rows.refunds_of(connection, program_id, shop_id, order_id))

    return await in_transaction(work)


async def refund_order(
    principal: Principal, shop_id: str, order_id: str, refund_id: str, refund: Refund, clock: Clock
) -> RefundView:
    """Claw back an order's points in proportion to the refunded value, once per refund id
    (a key bound to another shop is refused first)."""
    principal.check_shop(shop_id)

    async def work(connection: asyncpg.Connection) -> RefundView:
        now = clock.now()
        program_id = principal.program_id
        order = await _not_yet(rows.load_order(connection, program_id, shop_id, order_id, for_update=True))
        earlier = await rows.refunds_of(connection, program_id, shop_id, order_id)
        previous = [rows.refund_request(row) for row in earlier]
        lines = msgspec.json.decode(order["lines"], type=tuple[OrderLine, ...])
        award = msgspec.json.decode(order["award"], type=Award)
        clawback = claw_back(lines, award, refund, previous)
        customer_id = order["customer_id"]
        kinds = [AccountKind.PENDING, AccountKind.AVAILABLE, AccountKind.OWED]
        if order["redemption_unit"] == Unit.CREDIT:
            # the store credit given back is locked with the rest, in id order as the ledger
            # writer locks: locked after `owed` it deadlocks with a writer of credit and owed
            kinds.append(AccountKind.CREDIT_AVAILABLE)
        balances = await rows.lock_customer_balances(connection, program_id, customer_id, kinds)
        pending = min(
            await rows.pending_of_order(connection, program_id, customer_id, order["award_entry_id"]),
            balances[kinds[0]],
        )
        context = await rows.order_context(connection, program_id, shop_id)
        policy = rows.returns_from_row(context).policy
        metadata = _order_metadata(shop_id, context["name"], order_id)
        hold_id = order["redemption_hold_id"]
        returned = clawback.share(order["points_redeemed"]) if hold_id is not None else 0
        in_points = order["redemption_unit"] == Unit.POINTS
        # the redeemed points come back first, so that a clawback the customer could not
        # otherwise pay is paid from them rather than forgiven or owed; what the clawback
        # leaves of them pays off a debt before it becomes available, as a release does
        split, settled = split_refund(
            clawback.points,
            pending,
            balances[AccountKind.AVAILABLE],
            balances[AccountKind.OWED],
            returned if in_points else 0,
            policy,
        )
        return_entry_id = await _return_redeemed(
            connection,
            program_id,
            order,
            returned,
            settled,
            metadata | {"refund_id": refund_id},
            principal.actor,
            now,
        )
        draft = refund_draft(customer_id, split, metadata | {"refund_id": refund_id})
        entry_id = None
        if draft is not None:
            own = [order["award_entry_id"], order["release_entry_id"]]
            reclaimed = await created_lots(connection, program_id, customer_id, own)
            written = await write_entry(
                connection, program_id, draft, actor=principal.actor, now=now, reclaimed=reclaimed
            )
            entry_id = written.id
        row = await rows.insert_refund(
            connection,
            program_id,
            shop_id,
            order_id,
            msgspec.structs.asdict(split)
            | {
                "id": refund_id,
                "request": refund,
                "refunded_net": clawback.refunded_net,
                "points": split.points,
                "entry_id": entry_id,
                "created_at": now,
                "points_returned": returned,
                "return_entry_id": return_entry_id,
                "return_settled": settled,
            },
        )
        refunded = clawback.refunded_net
        await rows.record_refund_on_order(connection, program_id, shop_id, order_id, refunded, split.points, returned)
        if return_entry_id is not None and in_points:
            await emit_points_returned(
                connection,
                program_id,
                PointsReturned(
                    customer_id=customer_id,
                    points=returned,
                    shop_id=shop_id,
                    order_id=order_id,
                    refund_id=refund_id,
                    hold_id=hold_id,
                    entry_id=return_entry_id,
                    owed_settled=settled,
                ),
                now,
            )
        await referrals.cancel_on_refund(connection, program_id, order, refunded, policy, principal.actor, now)
        await metrics.after_refund(connection, program_id, order, refunded, clawback.items)  # last, as in place_order
        return _refund_view(row)

    key = derived_key("refund", shop_id, order_id, refund_id)
    request = fingerprint("refund", {"shop_id": shop_id, "order_id": order_id, "refund": refund})
    reused = f"refund {refund_id!r} of order {order_id!r} of shop {shop_id} was sent before with other content"
    with reuse_named(reused, "refund_id"):
        return await run_once(principal.program_id, key, request, RefundView, work)


async def _return_redeemed(
    connection: asyncpg.Connection,
    program_id: str,
    order: asyncpg.Record,
    points: int,
    settled: int,
    metadata: dict[str, Any],
    actor: str,
    now: datetime,
) -> int | None:
    """Give back the refund's share of what the order's hold paid (`points`, by
    `Clawback.share`, the clawback's own rule), as its own entry, `settled` of them to the
    customer's debt and the rest with the dates of the points the capture spent
    (latest-expiring first, after what earlier refunds gave back; the settled part is the
    soonest-expiring of those); the entry's id, or None if nothing is due. The caller holds
    the customer's accounts locked, `owed` among them."""
    hold_id = order["redemption_hold_id"]
    if not points:
        return None
    capture_entry_id = await rows.capture_entry_of(connection, program_id, hold_id)
    spent = spent_slices(await consumed_slices(connection, program_id, capture_entry_id), order["points_redeemed"])
    restored = returned_slices(spent, order["points_returned"], points)
    draft = redemption_return_draft(
        order["customer_id"],
        Unit(order["redemption_unit"]),
        points,
        metadata | {"hold_id": hold_id},
        settled,
    )
    return (await write_entry(connection, program_id, draft, actor=actor, now=now, restored=restored)).id


async def release_order(connection: asyncpg.Connection, program_id: str, order: asyncpg.Record, now: datetime) -> bool:
    """Move what is still pending of a claimed order to available (settling a debt first)."""
    kinds = [AccountKind.PENDING, AccountKind.AVAILABLE, AccountKind.OWED]
    balances = await rows.lock_customer_balances(connection, program_id, order["customer_id"], kinds)
    pending = min(
        await rows.pending_of_order(connection, program_id, order["customer_id"], order["award_entry_id"]),
        balances[kinds[0]],
    )
    entry_id = None
    if pending:
        metadata = _order_metadata(
            order["shop_id"], await rows.shop_name(connection, program_id, order["shop_id"]), order["id"]
        )
        draft = release_draft(order["customer_id"], pending, balances[AccountKind.OWED], metadata)
        reclaimed = await created_lots(connection, program_id, order["customer_id"], [order["award_entry_id"]])
        written = await write_entry(connection, program_id, draft, actor=RELEASE_ACTOR, now=now, reclaimed=reclaimed)
        entry_id = written.id
    await rows.mark_released(connection, program_id, order["shop_id"], order["id"], now, entry_id)
    return entry_id is not None


async def release_due_orders(program_id: str, clock: Clock, limit: int = 10_000) -> int:
    """Release every order whose return window has ended, one transaction each; several
    workers may run it at once (each claims its order with SKIP LOCKED). Returns how many.

    An order that cannot be released is logged and recorded (`job_failures`, item
    `<shop>/<order>`), left out until its retry, and the orders behind it are released."""
    now = clock.now()
    return await job_failures.drain(
        program_id,
        RELEASE_JOB,
        lambda connection, skip: rows.due_order(connection, program_id, now, RELEASE_JOB, skip),
        rows.order_item,
        lambda connection, order: release_order(connection, program_id, order, now),
        now,
        limit,
    )


async def set_return_settings(program_id: str, settings: ReturnSettings) -> ReturnSettings:
    """Change the return window and policy; orders already placed keep their release date."""
    if not 0 <= settings.window_days <= 365:
        raise InvalidInput("window_days must be between 0 and 365", field="window_days")

    async def work(connection: asyncpg.Connection) -> ReturnSettings:
        await rows.save_return_settings(connection, program_id, settings)
        return settings

    return await in_transaction(work)


async def get_return_settings(program_id: str) -> ReturnSettings:
    return await in_transaction(lambda connection: rows.return_settings(connection, program_id))
