"""Customers: enrol, read, update, list, and tokens for the app."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from service.config import Settings
from service.domain.access import MAX_CUSTOMER_TOKEN_TTL_S, Principal, Scope
from service.domain.clock import Clock
from service.domain.customers import Enrolment, ProfileChange
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES, create_or_repeat
from service.http.params import CustomerId
from service.http.responses import created_or_repeated
from service.usecases import customers
from service.usecases.programs import issue_customer_token


class CustomerResponse(msgspec.Struct, kw_only=True):
    id: str
    external_id: str
    shop_id: str | None
    email: str | None
    name: str | None
    attributes: dict[str, Any]
    enrolled_at: datetime
    updated_at: datetime


class CustomerPageResponse(msgspec.Struct, kw_only=True):
    items: list[CustomerResponse]
    next_cursor: str | None


class CustomerTokenResponse(msgspec.Struct, kw_only=True):
    token: str
    token_type: str
    expires_at: datetime
    customer_id: str


def _response(customer: object) -> CustomerResponse:
    return msgspec.convert(customer, CustomerResponse, from_attributes=True)


class CustomerController(Controller):
    """Shops enrol and manage their customers."""

    path = "/v1/customers"
    tags = ["customers"]

    @post(
        guards=[requires(Scope.CHECKOUT, Scope.ADMIN)],
        status_code=HTTP_201_CREATED,
        responses=create_or_repeat(CustomerResponse, "Enrolled before: the customer as it is"),
    )
    async def enrol(
        self,
        data: JSONBody[Enrolment],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> Response[CustomerResponse]:
        """Enrol a customer by the shop's external id; the same enrolment again returns 200."""
        customer, created = await customers.enrol_customer(principal, data, clock)
        return created_or_repeated(_response(customer), created)

    @get(guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def list_customers(
        self,
        principal: NamedDependency[Principal],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> CustomerPageResponse:
        """Customers in enrolment order, a page at a time."""
        page, next_cursor = await customers.list_customers(principal.program_id, limit, cursor)
        return CustomerPageResponse(items=[_response(c) for c in page], next_cursor=next_cursor)

    @get(
        "/{customer_id:str}", guards=[requires(Scope.CHECKOUT, Scope.ADMIN, Scope.FINANCE)], responses=PROBLEM_RESPONSES
    )
    async def get_customer(self, customer_id: CustomerId, principal: NamedDependency[Principal]) -> CustomerResponse:
        """One customer."""
        return _response(await customers.get_customer(principal.program_id, customer_id))

    @patch("/{customer_id:str}", guards=[requires(Scope.CHECKOUT, Scope.ADMIN)], responses=BODY_PROBLEM_RESPONSES)
    async def update_customer(
        self,
        customer_id: CustomerId,
        data: JSONBody[ProfileChange],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> CustomerResponse:
        """Change profile fields; omitted fields keep their value."""
        customer = await customers.update_customer(principal.program_id, customer_id, data, clock)
        return _response(customer)

    @post(
        "/{customer_id:str}/tokens",
        guards=[requires(Scope.CHECKOUT)],
        status_code=HTTP_201_CREATED,
        responses=PROBLEM_RESPONSES,
    )
    async def issue_token(
        self,
        customer_id: CustomerId,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        settings: NamedDependency[Settings],
        ttl_seconds: Annotated[int | None, QueryParameter(ge=60, le=MAX_CUSTOMER_TOKEN_TTL_S)] = None,
    ) -> CustomerTokenResponse:
        """A short-lived bearer token for the customer's app; it sees only this customer."""
        customer = await customers.get_customer(principal.program_id, customer_id)
        token, expires_at = await issue_customer_token(
            principal,
            customer.id,
            timedelta(seconds=ttl_seconds or settings.customer_token_ttl_s),
            clock,
        )
        return CustomerTokenResponse(
            token=token,
            token_type="Bearer",  # noqa: S106 - the scheme's name, not a secret
            expires_at=expires_at,
            customer_id=customer.id,
        )


class MeController(Controller):
    """The customer app: only ever the token's own customer."""

    path = "/v1/me"
    tags = ["customer app"]

    @get(guards=[requires(Scope.CUSTOMER)], responses=PROBLEM_RESPONSES)
    async def me(self, principal: NamedDependency[Principal]) -> CustomerResponse:
        """The customer's own profile."""
        return _response(await customers.get_customer(principal.program_id, principal.own_customer_id()))
