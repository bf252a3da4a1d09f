"""Redemption quotes at checkout; redeeming itself is a hold (see /v1/holds)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.domain.access import Principal, Scope
from service.domain.redemption import RedemptionQuote
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES
from service.http.params import CustomerRef
from service.usecases import redemption

MAX_MINOR = 1_000_000_000_000_000  # 10^15 minor units: far beyond any basket


class QuoteRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A customer, and optionally the discount wanted and the order's total, in minor units."""

    customer_id: CustomerRef
    discount_minor: Annotated[int, msgspec.Meta(ge=1, le=MAX_MINOR)] | None = None
    order_total_minor: Annotated[int, msgspec.Meta(ge=0, le=MAX_MINOR)] | None = None


class RedemptionController(Controller):
    """What a customer's points can pay for, before the till authorizes a hold."""

    path = "/v1/redemptions"
    tags = ["redemptions"]

    @post(
        "/quote",
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN)],
        status_code=HTTP_200_OK,
        responses=BODY_PROBLEM_RESPONSES,
    )
    async def quote(self, data: JSONBody[QuoteRequest], principal: NamedDependency[Principal]) -> RedemptionQuote:
        """The points a discount costs and the most the customer can redeem; changes nothing."""
        return await redemption.quote(
            principal.program_id, data.customer_id, data.discount_minor, data.order_total_minor
        )
