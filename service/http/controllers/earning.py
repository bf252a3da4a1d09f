"""Earning rules: admins publish versions; shops quote what an order earns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.earning import (
    MAX_CAMPAIGN_CATEGORIES,
    MAX_CAMPAIGNS,
    MAX_CATEGORY_MULTIPLIERS,
    MAX_MULTIPLIER_BP,
    MAX_ORDER_NET,
    MAX_POINTS_PER_UNIT,
    MAX_RULE_POINTS,
    NEUTRAL_BP,
    Award,
    Campaign,
    Currency,
    Order,
    Text,
)
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES
from service.http.params import IdempotencyKey
from service.usecases import earning_rules

RulePoints = Annotated[int, msgspec.Meta(ge=0, le=MAX_RULE_POINTS)]
Multiplier = Annotated[int, msgspec.Meta(ge=0, le=MAX_MULTIPLIER_BP)]


class CampaignRequest(Campaign, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A campaign as published, with its categories and numbers bounded. The bounds are the
    request's, not Campaign's: versions published before them are read as they were stored."""

    categories: Annotated[frozenset[Text], msgspec.Meta(max_length=MAX_CAMPAIGN_CATEGORIES)] | None = None
    multiplier_bp: Annotated[int, msgspec.Meta(gt=NEUTRAL_BP, le=MAX_MULTIPLIER_BP)] | None = None
    bonus_points: Annotated[int, msgspec.Meta(gt=0, le=MAX_RULE_POINTS)] | None = None
    customer_cap: RulePoints | None = None


class EarningRulesRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new version of the rules; it applies from `effective_from` (default: now)."""

    currency: Currency
    points_per_unit: Annotated[int, msgspec.Meta(ge=0, le=MAX_POINTS_PER_UNIT)]
    unit_minor: Annotated[int, msgspec.Meta(gt=0, le=MAX_ORDER_NET)]
    category_multipliers: Annotated[dict[Text, Multiplier], msgspec.Meta(max_length=MAX_CATEGORY_MULTIPLIERS)] = {}
    campaigns: Annotated[tuple[CampaignRequest, ...], msgspec.Meta(max_length=MAX_CAMPAIGNS)] = ()
    minimum_order_minor: Annotated[int, msgspec.Meta(ge=0, le=MAX_ORDER_NET)] = 0
    order_cap: RulePoints | None = None
    effective_from: Annotated[datetime, msgspec.Meta(tz=True)] | None = None


class QuoteRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    order: Order
    tier_multiplier_bp: Annotated[int, msgspec.Meta(ge=0, le=100 * NEUTRAL_BP)] = NEUTRAL_BP


class EarningController(Controller):
    path = "/v1/earning"
    tags = ["earning rules"]

    @post("/rules", guards=[requires(Scope.ADMIN)], status_code=HTTP_201_CREATED, responses=BODY_PROBLEM_RESPONSES)
    async def publish(
        self,
        data: JSONBody[EarningRulesRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> earning_rules.PublishedRules:
        """Publish the next version of the program's earning rules."""
        draft = earning_rules.RulesDraft(**msgspec.structs.asdict(data))
        return await earning_rules.publish_rules(principal, draft, idempotency_key, clock)

    @get("/rules", guards=[requires(Scope.ADMIN, Scope.CHECKOUT, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def versions(self, principal: NamedDependency[Principal]) -> list[earning_rules.PublishedRules]:
        """Every published version, newest first."""
        return await earning_rules.rule_versions(principal.program_id)

    @post(
        "/quote",
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN)],
        status_code=HTTP_200_OK,
        responses=BODY_PROBLEM_RESPONSES,
    )
    async def quote(self, data: JSONBody[QuoteRequest], principal: NamedDependency[Principal]) -> Award:
        """What an order earns under the rules in force when it was placed, with the points per rule."""
        return await earning_rules.quote(principal.program_id, data.order, data.tier_multiplier_bp)
