"""Bulk awards for back-office imports and goodwill grants: many orders or grants in one
request, each idempotent by its own key and succeeding or refused on its own."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

import msgspec

from service.db.ledger import WrittenEntry
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.errors import DomainError
from service.usecases import ledger, orders
from service.usecases.idempotency import reuse_named

CONCURRENCY = 8  # items in flight at once: grants share commits, orders take a connection each


class BulkOrder(msgspec.Struct, frozen=True, kw_only=True):
    """An order of a shop, keyed by (shop, order id) as at checkout."""

    shop_id: str
    placement: orders.OrderPlacement


class BulkGrant(msgspec.Struct, frozen=True, kw_only=True):
    """Goodwill points (or a deduction, negative), keyed by its idempotency key."""

    key: str
    adjustment: ledger.Adjustment


BulkOutcome = orders.OrderView | WrittenEntry | DomainError


async def award_in_bulk(
    principal: Principal, items: Sequence[BulkOrder | BulkGrant], clock: Clock
) -> list[BulkOutcome]:
    """Every item's outcome, in the request's order. Items of one customer are applied in the
    order given (a deduction after the grant it relies on), and so are items that share a key
    (a grant key, a shop's order id, a redemption hold: the first in the request uses it, the
    next is its retry or its reuse); other items run concurrently. A refusal answers only its
    item; a failure of the service itself fails the request, which is then safe to send again.

    An order of a shop the credential may not act for refuses the whole request (Forbidden,
    naming `items[i].shop_id`) before any item is written: that is a wrong credential or a
    wrong file, not one bad row, and importing the rest would leave a half-done import to
    untangle; fixed and sent again, every item is still idempotent by its own key."""
    for index, item in enumerate(items):
        if isinstance(item, BulkOrder):
            principal.check_shop(item.shop_id, field=f"items[{index}].shop_id")
    gate = asyncio.Semaphore(CONCURRENCY)
    outcomes: list[BulkOutcome | None] = [None] * len(items)

    async def one(item: BulkOrder | BulkGrant) -> BulkOutcome:
        async with gate:
            try:
                if isinstance(item, BulkOrder):
                    return await orders.place_order(principal, item.shop_id, item.placement, clock)
                with reuse_named(f"grant key {item.key!r} was used for a different grant", "key"):
                    return await ledger.adjust(principal, item.adjustment, item.key, clock)
            except DomainError as refusal:
                return refusal

    async def in_order(indexes: list[int]) -> None:
        for index in indexes:
            outcomes[index] = await one(items[index])

    try:
        async with asyncio.TaskGroup() as group:
            for indexes in _chains(items):
                group.create_task(in_order(indexes))
    except ExceptionGroup as failed:
        # the failure itself, not the group the tasks wrap it in: the request then fails as
        # any other does (a lost database or an exhausted pool is a 503 to retry, not a 500)
        raise failed.exceptions[0] from failed
    return [outcome for outcome in outcomes if outcome is not None]


def _links(item: BulkOrder | BulkGrant) -> list[tuple[str, ...]]:
    """What an item shares with the items it must not run concurrently with."""
    if isinstance(item, BulkGrant):
        return [("customer", item.adjustment.customer_id), ("key", item.key)]
    links = [("customer", item.placement.customer_id), ("order", item.shop_id, item.placement.order_id)]
    if item.placement.redemption_hold_id is not None:
        links.append(("hold", item.placement.redemption_hold_id))
    return links


def _chains(items: Sequence[BulkOrder | BulkGrant]) -> list[list[int]]:
    """The items' indexes in chains of items linked (directly or through others) by a customer
    or a key, each chain in the request's order."""
    parent = list(range(len(items)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(items):
        for link in _links(item):
            parent[root(index)] = root(first.setdefault(link, index))
    chains: dict[int, list[int]] = defaultdict(list)
    for index in range(len(items)):
        chains[root(index)].append(index)
    return list(chains.values())
