"""A customer's history in plain words, for shops and for the customer's own app."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from service.domain.access import Principal, Scope
from service.http.auth import requires
from service.http.openapi import PROBLEM_RESPONSES
from service.http.params import CustomerId
from service.usecases import history

Limit = Annotated[int, QueryParameter(name="limit", ge=1, le=200, description="entries per page")]
Cursor = Annotated[
    str | None,
    QueryParameter(name="cursor", min_length=1, max_length=200, description="the previous page's next_cursor"),
]


class HistoryController(Controller):
    """Entries that touched a customer's accounts, newest first, each in one sentence."""

    tags = ["history"]

    @get(
        "/v1/customers/{customer_id:str}/history",
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)],
        responses=PROBLEM_RESPONSES,
    )
    async def customer_history(
        self,
        customer_id: CustomerId,
        principal: NamedDependency[Principal],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> history.HistoryPage:
        """The customer's history, a page at a time."""
        return await history.customer_history(principal.program_id, customer_id, limit, cursor)

    @get("/v1/me/history", guards=[requires(Scope.CUSTOMER)], responses=PROBLEM_RESPONSES)
    async def my_history(
        self,
        principal: NamedDependency[Principal],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> history.HistoryPage:
        """The token's customer's history, a page at a time."""
        return await history.customer_history(principal.program_id, principal.own_customer_id(), limit, cursor)
