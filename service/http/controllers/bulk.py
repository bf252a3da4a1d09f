"""Bulk awards: back-office imports of orders and goodwill grants, with a result per item."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.db.ledger import WrittenEntry
from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.customers import ShopRef
from service.domain.errors import DomainError
from service.domain.ledger import Unit
from service.http.auth import requires
from service.http.controllers.ledger import Reason
from service.http.controllers.orders import OrderRequest
from service.http.openapi import BODY_PROBLEM_RESPONSES
from service.http.params import CustomerRef
from service.http.problems import domain_problem
from service.usecases import bulk, ledger
from service.usecases.orders import OrderView

MAX_ITEMS = 1000
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00]*$")]


class BulkOrderItem(OrderRequest, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="order", tag_field="type"):
    """An order of one of the program's shops, keyed by (shop_id, order_id)."""

    shop_id: ShopRef


class BulkGrantItem(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="grant", tag_field="type"
):
    """A goodwill grant (positive amount) or deduction (negative), keyed by `key`."""

    key: Key
    customer_id: CustomerRef
    amount: Annotated[int, msgspec.Meta(ge=-1_000_000_000_000, le=1_000_000_000_000)]
    reason: Reason
    unit: Unit = Unit.POINTS


class BulkAwardsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    items: Annotated[list[BulkOrderItem | BulkGrantItem], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]


class BulkItemResult(msgspec.Struct, frozen=True, kw_only=True):
    """One item's outcome: its order or entry, or its problem (RFC 9457 members)."""

    index: int
    status: int
    order: OrderView | None = None
    entry: WrittenEntry | None = None
    problem: dict[str, Any] | None = None


class BulkAwardsResponse(msgspec.Struct, frozen=True, kw_only=True):
    succeeded: int
    refused: int
    results: list[BulkItemResult]


def _item(item: BulkOrderItem | BulkGrantItem) -> bulk.BulkOrder | bulk.BulkGrant:
    if isinstance(item, BulkOrderItem):
        return bulk.BulkOrder(shop_id=item.shop_id, placement=item.placement())
    adjustment = ledger.Adjustment(customer_id=item.customer_id, amount=item.amount, unit=item.unit, reason=item.reason)
    return bulk.BulkGrant(key=item.key, adjustment=adjustment)


def _result(index: int, outcome: bulk.BulkOutcome, instance: str) -> BulkItemResult:
    if isinstance(outcome, DomainError):
        return BulkItemResult(
            index=index, status=outcome.status, problem=domain_problem(outcome, f"{instance}#{index}")
        )
    if isinstance(outcome, OrderView):
        return BulkItemResult(index=index, status=201, order=outcome)
    return BulkItemResult(index=index, status=201, entry=outcome)


class BulkController(Controller):
    path = "/v1/bulk"
    tags = ["orders"]

    @post("/awards", guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def awards(
        self, data: JSONBody[BulkAwardsRequest], principal: NamedDependency[Principal], clock: NamedDependency[Clock]
    ) -> BulkAwardsResponse:
        """Up to 1000 orders and grants; each is idempotent by its own key and answered on its own."""
        outcomes = await bulk.award_in_bulk(principal, [_item(item) for item in data.items], clock)
        results = [_result(index, outcome, "/v1/bulk/awards") for index, outcome in enumerate(outcomes)]
        refused = sum(1 for result in results if result.problem is not None)
        return BulkAwardsResponse(succeeded=len(results) - refused, refused=refused, results=results)
