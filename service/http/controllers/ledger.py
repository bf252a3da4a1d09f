"""Ledger writes over HTTP: adjustments, reversals, holds, expiry policy, balances."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.db.ledger import WrittenEntry
from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.customers import NO_NUL
from service.domain.expiry import ExpiryPolicy, ExpiryRule
from service.domain.ledger import Unit
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES
from service.http.params import CustomerId, CustomerRef, EntryId, IdempotencyKey
from service.usecases import finance, ledger

Points = Annotated[int, msgspec.Meta(gt=0, le=1_000_000_000_000)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=NO_NUL)]
HoldId = Annotated[str, PathParameter(min_length=1, max_length=64)]


class AdjustmentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer_id: CustomerRef
    amount: Annotated[int, msgspec.Meta(ge=-1_000_000_000_000, le=1_000_000_000_000)]
    reason: Reason
    unit: Unit = Unit.POINTS


class ReversalRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason


class HoldCreateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer_id: CustomerRef
    amount: Points
    unit: Unit = Unit.POINTS
    expires_in_seconds: Annotated[int, msgspec.Meta(ge=10, le=7 * 86_400)] = 900
    reference: Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)] | None = None


class CaptureRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: Points | None = None  # None captures the whole hold


class ExpiryRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policy: ExpiryPolicy
    period: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 0


class LedgerController(Controller):
    """Manual corrections by program admins; every one is an entry with a reason."""

    path = "/v1/ledger"
    tags = ["ledger"]

    @post(
        "/adjustments", guards=[requires(Scope.ADMIN)], status_code=HTTP_201_CREATED, responses=BODY_PROBLEM_RESPONSES
    )
    async def adjust(
        self,
        data: JSONBody[AdjustmentRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> WrittenEntry:
        """Grant (positive amount) or deduct (negative) points or credit for a customer."""
        adjustment = ledger.Adjustment(
            customer_id=data.customer_id, amount=data.amount, unit=data.unit, reason=data.reason
        )
        return await ledger.adjust(principal, adjustment, idempotency_key, clock)

    @post(
        "/entries/{entry_id:int}/reversal",
        guards=[requires(Scope.ADMIN)],
        status_code=HTTP_201_CREATED,
        responses=BODY_PROBLEM_RESPONSES,
    )
    async def reverse(
        self,
        entry_id: EntryId,
        data: JSONBody[ReversalRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> WrittenEntry:
        """Undo an entry with a linked reversing entry (at most once)."""
        return await ledger.reverse(principal, entry_id, data.reason, idempotency_key, clock)

    @put("/expiry-policy", guards=[requires(Scope.ADMIN)], status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def set_expiry(self, data: JSONBody[ExpiryRequest], principal: NamedDependency[Principal]) -> ExpiryRule:
        """How points earned from now on expire, in the program's time zone."""
        return await ledger.set_expiry_rule(principal.program_id, ExpiryRule(data.policy, data.period))


class HoldController(Controller):
    """Two-phase redemption: authorize a hold, then capture (in full or part) or void it."""

    path = "/v1/holds"
    tags = ["holds"]
    guards = [requires(Scope.CHECKOUT, Scope.ADMIN)]

    @post(status_code=HTTP_201_CREATED, responses=BODY_PROBLEM_RESPONSES)
    async def authorize(
        self,
        data: JSONBody[HoldCreateRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ledger.Hold:
        """Move points from available to held until captured, voided or expired."""
        request = ledger.HoldRequest(
            customer_id=data.customer_id,
            amount=data.amount,
            unit=data.unit,
            expires_in_seconds=data.expires_in_seconds,
            reference=data.reference,
        )
        return await ledger.hold_points(principal, request, idempotency_key, clock)

    @get("/{hold_id:str}", responses=PROBLEM_RESPONSES)
    async def get_hold(self, hold_id: HoldId, principal: NamedDependency[Principal]) -> ledger.Hold:
        """A hold and its state."""
        return await ledger.get_hold(principal.program_id, hold_id)

    @post("/{hold_id:str}/capture", status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def capture(
        self,
        hold_id: HoldId,
        data: JSONBody[CaptureRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ledger.Hold:
        """Spend all or part of the hold; the rest returns to available."""
        return await ledger.capture_hold(principal, hold_id, data.amount, idempotency_key, clock)

    @post("/{hold_id:str}/void", status_code=HTTP_200_OK, responses=PROBLEM_RESPONSES)
    async def void(
        self,
        hold_id: HoldId,
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> ledger.Hold:
        """Release the whole hold back to available."""
        return await ledger.void_hold(principal, hold_id, idempotency_key, clock)


class BalanceController(Controller):
    """Balances of one customer, for shops and for the customer's own app."""

    tags = ["balances"]

    @get(
        "/v1/customers/{customer_id:str}/balance",
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)],
        responses=PROBLEM_RESPONSES,
    )
    async def customer_balance(
        self,
        customer_id: CustomerId,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> finance.CustomerBalance:
        """Available, pending and held points and credit, and what expires in the next 30 days."""
        return await finance.customer_balance(principal.program_id, customer_id, clock.now())

    @get("/v1/me/balance", guards=[requires(Scope.CUSTOMER)], responses=PROBLEM_RESPONSES)
    async def my_balance(
        self, principal: NamedDependency[Principal], clock: NamedDependency[Clock]
    ) -> finance.CustomerBalance:
        """The token's customer's balances."""
        return await finance.customer_balance(principal.program_id, principal.own_customer_id(), clock.now())
