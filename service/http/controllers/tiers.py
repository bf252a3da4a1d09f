"""Tiers over HTTP: the ladder (admin), grants, and each customer's progress and history."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.db.tiers import TierChange, TierGrant
from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.earning import Text
from service.domain.tiers import MAX_LEVELS, MAX_PERKS, Code, TierConfig, TierLevel, TierProgress
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES
from service.http.params import CustomerId, IdempotencyKey
from service.usecases import tiers
from service.usecases.tiers import GrantRequest, TierSettings


class TierLevelRequest(TierLevel, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A level as set, its perks bounded (ladders set before the bound are read as stored)."""

    perks: Annotated[tuple[Text, ...], msgspec.Meta(max_length=MAX_PERKS)] = ()


class TierConfigRequest(TierConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ladder to set."""

    levels: Annotated[tuple[TierLevelRequest, ...], msgspec.Meta(min_length=1, max_length=MAX_LEVELS)]


class TierGrantRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tier for `days` days, as a floor above what the customer earns."""

    tier_code: Code
    days: Annotated[int, msgspec.Meta(ge=1, le=3650)]
    reason: Text


class TierConfigController(Controller):
    path = "/v1/tiers"
    tags = ["tiers"]

    @put(guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def configure(
        self,
        data: JSONBody[TierConfigRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> TierSettings:
        """Set the program's ladder: levels, qualification basis and window, grace, downgrade policy."""
        return await tiers.configure(principal, data, idempotency_key, clock)

    @get(guards=[requires(Scope.ADMIN, Scope.CHECKOUT, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def settings(self, principal: NamedDependency[Principal]) -> TierSettings:
        """The ladder in force and its version."""
        return await tiers.get_settings(principal.program_id)


class CustomerTierController(Controller):
    path = "/v1/customers/{customer_id:str}/tier"
    tags = ["tiers"]

    @get(guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def progress(
        self, customer_id: CustomerId, principal: NamedDependency[Principal], clock: NamedDependency[Clock]
    ) -> TierProgress:
        """The customer's tier, the next one, what is still needed, and how long it is kept."""
        return await tiers.tier_progress(principal.program_id, customer_id, clock)

    @get("/history", guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def history(self, customer_id: CustomerId, principal: NamedDependency[Principal]) -> list[TierChange]:
        """Every change of the customer's tier with its cause, newest first."""
        return await tiers.tier_history(principal.program_id, customer_id)

    @post("/grants", guards=[requires(Scope.ADMIN)], status_code=HTTP_201_CREATED, responses=BODY_PROBLEM_RESPONSES)
    async def grant(
        self,
        customer_id: CustomerId,
        data: JSONBody[TierGrantRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> TierGrant:
        """Grant a tier for a period, with a reason."""
        request = GrantRequest(tier_code=data.tier_code, days=data.days, reason=data.reason)
        return await tiers.grant_tier(principal, customer_id, request, idempotency_key, clock)


class MyTierController(Controller):
    path = "/v1/me/tier"
    tags = ["customer app"]

    @get(guards=[requires(Scope.CUSTOMER)], responses=PROBLEM_RESPONSES)
    async def my_progress(self, principal: NamedDependency[Principal], clock: NamedDependency[Clock]) -> TierProgress:
        """The token's customer's tier and progress."""
        return await tiers.tier_progress(principal.program_id, principal.own_customer_id(), clock)

    @get("/history", guards=[requires(Scope.CUSTOMER)], responses=PROBLEM_RESPONSES)
    async def my_history(self, principal: NamedDependency[Principal]) -> list[TierChange]:
        """The token's customer's tier changes."""
        return await tiers.tier_history(principal.program_id, principal.own_customer_id())
