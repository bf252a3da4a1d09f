"""The events feed (pull, with a cursor) and the event catalogue with payload schemas."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from service.domain.access import Principal, Scope
from service.domain.events import CATALOGUE, AnyEvent, EventType, payload_schema
from service.http.auth import requires
from service.http.openapi import PROBLEM_RESPONSES
from service.usecases import webhooks


class EventPageResponse(msgspec.Struct, kw_only=True):
    """Events in feed order; poll again with `next_cursor` (never null) for what comes next."""

    items: list[AnyEvent]
    next_cursor: str
    has_more: bool


class CatalogueItemResponse(msgspec.Struct, kw_only=True):
    type: EventType
    description: str
    flow: str
    emitted: bool
    payload_schema: dict[str, Any]


def _catalogue() -> list[CatalogueItemResponse]:
    return [
        CatalogueItemResponse(
            type=entry.event_type,
            description=entry.description,
            flow=entry.flow,
            emitted=entry.emitted,
            payload_schema=payload_schema(entry.event_type),
        )
        for entry in CATALOGUE.values()
    ]


CATALOGUE_RESPONSE = _catalogue()


class EventController(Controller):
    path = "/v1/events"
    tags = ["events"]

    @get(guards=[requires(Scope.ADMIN, Scope.CHECKOUT)], responses=PROBLEM_RESPONSES)
    async def feed(
        self,
        principal: NamedDependency[Principal],
        after: Annotated[
            str | None,
            QueryParameter(name="after", min_length=1, max_length=20, description="the previous page's next_cursor"),
        ] = None,
        limit: Annotated[int, QueryParameter(name="limit", ge=1, le=500)] = 100,
        types: Annotated[
            list[EventType] | None,
            QueryParameter(
                name="types", max_items=len(EventType), description="only these types (repeat the parameter)"
            ),
        ] = None,
    ) -> EventPageResponse:
        """Published events in the program's order (each customer's in the order they happened)."""
        events, cursor = await webhooks.event_feed(principal.program_id, after, limit, types)
        return EventPageResponse(items=events, next_cursor=cursor, has_more=len(events) == limit)

    @get("/catalogue", guards=[requires(Scope.ADMIN, Scope.CHECKOUT, Scope.FINANCE)], responses=PROBLEM_RESPONSES)
    async def catalogue(self) -> list[CatalogueItemResponse]:
        """Every event type, the retention flow it feeds, whether it is emitted yet, and its payload schema."""
        return CATALOGUE_RESPONSE
