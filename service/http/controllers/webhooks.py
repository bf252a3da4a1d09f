"""Webhook endpoints (admin): register, list, read, change, delete, rotate the secret; their
delivery log; re-delivery."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from service.config import Settings
from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.events import EventType
from service.domain.webhooks import MAX_PREVIOUS_SECRET_VALID_S, PREVIOUS_SECRET_VALID_S
from service.http.auth import requires
from service.http.openapi import BODY_PROBLEM_RESPONSES, PROBLEM_RESPONSES, conflicts
from service.http.params import IdempotencyKey
from service.usecases import webhooks
from service.usecases.webhooks import Delivery, Endpoint, EndpointChange

EndpointId = Annotated[str, PathParameter(title="Webhook endpoint id", min_length=1, max_length=64)]
DeliveryId = Annotated[str, PathParameter(title="Delivery id", min_length=1, max_length=64)]
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2000, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s\x00]+$")]
Description = Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00]*$")]
EventTypes = Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(EventType))]


ENDPOINT_CREATE_CONFLICTS = conflicts(
    f"`conflict` (field `url`): the program has {webhooks.MAX_ENDPOINTS} endpoints, the most it may have;"
    " `idempotency-key-reused`: the key was used for another request"
)


class EndpointRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where to send which events."""

    url: Url
    event_types: EventTypes
    description: Description = ""


class EndpointUpdateRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A partial change; `enabled: true` re-enables a disabled endpoint and resets its failures."""

    url: Url | msgspec.UnsetType = msgspec.UNSET
    event_types: EventTypes | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class EndpointCreatedResponse(msgspec.Struct, kw_only=True):
    """The new endpoint and its signing secret, shown only in this answer."""

    id: str
    url: str
    description: str
    event_types: list[EventType]
    enabled: bool
    secret: str
    created_at: datetime


class RotateSecretRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long the current secret still signs deliveries after the rotation (0: retire it now)."""

    previous_valid_for_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_PREVIOUS_SECRET_VALID_S)] = PREVIOUS_SECRET_VALID_S


class SecretRotatedResponse(msgspec.Struct, kw_only=True):
    """The endpoint's new signing secret, shown only in this answer, and until when the
    previous one also signs deliveries (null: it no longer does)."""

    id: str
    secret: str
    previous_secret_expires_at: datetime | None
    rotated_at: datetime


class DeliveryPageResponse(msgspec.Struct, kw_only=True):
    items: list[Delivery]
    next_cursor: str | None


class WebhookController(Controller):
    """A program's webhook endpoints."""

    path = "/v1/webhooks/endpoints"
    tags = ["webhooks"]
    guards = [requires(Scope.ADMIN)]

    @post(status_code=HTTP_201_CREATED, responses=ENDPOINT_CREATE_CONFLICTS)
    async def create(
        self,
        data: JSONBody[EndpointRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        settings: NamedDependency[Settings],
    ) -> EndpointCreatedResponse:
        """Register an endpoint; it receives the events of its types published from now on. A
        retry with the same key answers the endpoint made first, with the same secret."""
        made = await webhooks.create_endpoint(
            principal.program_id,
            data.url,
            data.event_types,
            data.description,
            clock,
            webhooks.destination_policy(settings),
            idempotency_key,
        )
        endpoint = made.endpoint
        return EndpointCreatedResponse(
            id=endpoint.id,
            url=endpoint.url,
            description=endpoint.description,
            event_types=endpoint.event_types,
            enabled=endpoint.enabled,
            secret=made.secret,
            created_at=endpoint.created_at,
        )

    @get(responses=PROBLEM_RESPONSES)
    async def list_endpoints(self, principal: NamedDependency[Principal]) -> list[Endpoint]:
        """Every endpoint of the program (without secrets)."""
        return await webhooks.list_endpoints(principal.program_id)

    @get("/{endpoint_id:str}", responses=PROBLEM_RESPONSES)
    async def get_endpoint(self, endpoint_id: EndpointId, principal: NamedDependency[Principal]) -> Endpoint:
        """One endpoint, with whether it is enabled and why not."""
        return await webhooks.get_endpoint(principal.program_id, endpoint_id)

    @patch("/{endpoint_id:str}", responses=BODY_PROBLEM_RESPONSES)
    async def update_endpoint(
        self,
        endpoint_id: EndpointId,
        data: JSONBody[EndpointUpdateRequest],
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
        settings: NamedDependency[Settings],
    ) -> Endpoint:
        """Change the URL, event types or description, or enable/disable the endpoint."""
        change = EndpointChange(
            url=data.url, event_types=data.event_types, description=data.description, enabled=data.enabled
        )
        policy = webhooks.destination_policy(settings)
        return await webhooks.update_endpoint(principal.program_id, endpoint_id, change, clock, policy)

    @delete("/{endpoint_id:str}", status_code=HTTP_204_NO_CONTENT, responses=PROBLEM_RESPONSES)
    async def delete_endpoint(self, endpoint_id: EndpointId, principal: NamedDependency[Principal]) -> None:
        """Remove the endpoint and its delivery log."""
        await webhooks.delete_endpoint(principal.program_id, endpoint_id)

    @post("/{endpoint_id:str}/rotate-secret", status_code=HTTP_200_OK, responses=BODY_PROBLEM_RESPONSES)
    async def rotate_secret(
        self,
        endpoint_id: EndpointId,
        data: JSONBody[RotateSecretRequest],
        idempotency_key: IdempotencyKey,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> SecretRotatedResponse:
        """Give the endpoint a new signing secret; the current one keeps signing deliveries
        alongside it for `previous_valid_for_s` seconds (default a day)."""
        rotated = await webhooks.rotate_secret(
            principal.program_id, endpoint_id, data.previous_valid_for_s, idempotency_key, clock
        )
        return SecretRotatedResponse(
            id=rotated.endpoint_id,
            secret=rotated.secret,
            previous_secret_expires_at=rotated.previous_secret_expires_at,
            rotated_at=rotated.rotated_at,
        )

    @get("/{endpoint_id:str}/deliveries", responses=PROBLEM_RESPONSES)
    async def deliveries(
        self,
        endpoint_id: EndpointId,
        principal: NamedDependency[Principal],
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(name="cursor", min_length=1, max_length=20)] = None,
        status: Annotated[
            Literal["pending", "delivered", "failed"] | None,
            QueryParameter(name="status", description="only deliveries in this state"),
        ] = None,
    ) -> DeliveryPageResponse:
        """The endpoint's delivery log, newest event first, a page at a time."""
        page, next_cursor = await webhooks.list_deliveries(principal.program_id, endpoint_id, limit, cursor, status)
        return DeliveryPageResponse(items=page, next_cursor=next_cursor)

    @post(
        "/{endpoint_id:str}/deliveries/{delivery_id:str}/redeliver",
        status_code=HTTP_202_ACCEPTED,
        responses=PROBLEM_RESPONSES,
    )
    async def redeliver(
        self,
        endpoint_id: EndpointId,
        delivery_id: DeliveryId,
        principal: NamedDependency[Principal],
        clock: NamedDependency[Clock],
    ) -> Delivery:
        """Send the delivery again at the dispatcher's next round, with a fresh retry period."""
        return await webhooks.redeliver(principal.program_id, endpoint_id, delivery_id, clock)
