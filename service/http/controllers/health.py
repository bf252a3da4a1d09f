"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import msgspec
from litestar import MediaType, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from service.db.events import UNREADABLE_PENDING
from service.db.piccolo_conf import DB
from service.http.openapi import PUBLIC

log = logging.getLogger("loyalty.jobs")


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


UNSEALED_AGE = Gauge(
    "loyalty_unsealed_entry_age_seconds",
    "Age of the oldest entry of a program not yet sealed into its hash chain (0: none)",
    ["program_id"],
)
FAILING_ITEMS = Gauge(
    "loyalty_job_items_failing", "Work items of a scheduled job that failed and wait for a retry", ["job"]
)
UNREADABLE = Gauge(
    "loyalty_webhook_deliveries_unreadable",
    "Pending webhook deliveries whose event a dispatcher could not read (a newer version's), kept for one"
    " that can; their customers' later events to the endpoint wait behind them",
    ["program_id"],
)
# One statement: per program, the entry its chain waits for (by key, the first of its queue),
# the failing items per job, and per program the deliveries whose event could not be read;
# the age by the database's clock.
_BACKLOG = (
    "SELECT 'unsealed' AS kind, p.id AS label, coalesce(extract(epoch FROM now() - ("
    " SELECT e.posted_at FROM entries e WHERE e.program_id = p.id AND e.id = ("
    "  SELECT q.entry_id FROM seal_queue q WHERE q.program_id = p.id ORDER BY q.entry_id LIMIT 1))), 0)::float8"
    " AS value FROM programs p"
    " UNION ALL SELECT 'failing', job, count(*)::float8 FROM job_failures GROUP BY job"
    f" UNION ALL SELECT 'unreadable', program_id, deliveries::float8 FROM ({UNREADABLE_PENDING}) u"
)
GAUGES = {"unsealed": UNSEALED_AGE, "failing": FAILING_ITEMS, "unreadable": UNREADABLE}


async def _read_backlog() -> None:
    """Set the job gauges from the database; left as they were if it does not answer in time."""
    if DB.pool is None:
        return
    try:
        rows = await asyncio.wait_for(DB.pool.fetch(_BACKLOG), timeout=1.0)
    except Exception:
        log.warning("the job backlog could not be read for /metrics", exc_info=True)
        return
    for gauge in GAUGES.values():
        gauge.clear()
    for row in rows:
        GAUGES[row["kind"]].labels(row["label"]).set(max(row["value"], 0.0))


@get("/metrics", tags=["health"], include_in_schema=False)
async def metrics() -> Response[bytes]:
    """Prometheus exposition, with the age of each program's oldest unsealed entry, the
    failing items of the jobs and the deliveries held for a version that reads their event,
    read from the database at each scrape."""
    await _read_backlog()
    # as a header: a text/* media_type would get a second `charset` appended
    return Response(generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})


ROUTES = [live, ready, metrics]
