"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from litestar import MediaType, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.db.piccolo_conf import DB


@get("/health/live", tags=["health"], media_type=MediaType.JSON)
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/health/ready", tags=["health"], media_type=MediaType.JSON)
async def ready() -> Response[dict[str, str]]:
    """The database answers within a second."""
    try:
        if DB.pool is None:
            raise ConnectionError("pool not started")
        await asyncio.wait_for(DB.pool.fetchval("SELECT 1"), timeout=1.0)
    except Exception as error:
        return Response(
            {"status": "unavailable", "reason": type(error).__name__},
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    return Response({"status": "ok"}, status_code=HTTP_200_OK)


@get("/metrics", tags=["health"], include_in_schema=False)
async def metrics() -> Response[bytes]:
    """Prometheus exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [live, ready, metrics]
