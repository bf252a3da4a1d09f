"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Literal

import msgspec
from litestar import MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.db.piccolo_conf import DB
from service.http.openapi import PUBLIC


class HealthResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: Literal["ok", "unavailable"]
    reason: str | None = None


@get("/health/live", tags=["health"], media_type=MediaType.JSON, security=PUBLIC)
async def live() -> HealthResponse:
    """The process is up."""
    return HealthResponse(status="ok")


@get(
    "/health/ready",
    tags=["health"],
    media_type=MediaType.JSON,
    security=PUBLIC,
    responses={503: ResponseSpec(HealthResponse, description="The database does not answer", generate_examples=False)},
)
async def ready() -> Response[HealthResponse]:
    """The database answers within a second."""
    try:
        if DB.pool is None:
            raise ConnectionError("pool not started")
        await asyncio.wait_for(DB.pool.fetchval("SELECT 1"), timeout=1.0)
    except Exception as error:
        return Response(
            HealthResponse(status="unavailable", reason=type(error).__name__),
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    return Response(HealthResponse(status="ok"), status_code=HTTP_200_OK)


@get("/metrics", tags=["health"], include_in_schema=False)
async def metrics() -> Response[bytes]:
    """Prometheus exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [live, ready, metrics]
