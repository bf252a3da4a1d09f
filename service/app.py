"""create_app(settings) -> Litestar: lifespan, routes, error map."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from service.config import Settings
from service.db.engine import close_pool, start_pool
from service.domain.clock import Clock, SystemClock
from service.domain.rate_limit import RateLimiter
from service.http.auth import CredentialMiddleware, exclude_public_paths
from service.http.controllers import (
    admin,
    bulk,
    customers,
    earning,
    events,
    finance,
    health,
    history,
    ledger,
    metrics,
    orders,
    problems,
    redemptions,
    referrals,
    tiers,
    webhooks,
)
from service.http.dependencies import DEPENDENCIES
from service.http.observability import observability_middleware
from service.http.openapi import COMPONENTS, SECURITY, StructSchemaPlugin
from service.http.problems import EXCEPTION_HANDLERS
from service.usecases.group_commit import close_batchers
from service.usecases.jobs import run_scheduled

API_DESCRIPTION = """Loyalty points and referrals on a double-entry ledger.

Authenticate with `Authorization: Bearer <key>`: an API key (scopes `checkout`, `admin`,
`finance`) or a customer token for the app. Errors are RFC 9457 problem+json documents.
Writes accept an `Idempotency-Key` header."""


def _rate_limiter(settings: Settings) -> RateLimiter | None:
    if not settings.rate_limit_per_s:
        return None
    return RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)


def create_app(settings: Settings, dsn: str, clock: Clock | None = None) -> Litestar:
    """Build the ASGI app for a migrated database at dsn."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await start_pool(dsn, settings)
        jobs = asyncio.create_task(run_scheduled(app.state.clock, settings)) if settings.run_jobs else None
        try:
            yield
        finally:
            if jobs is not None:
                jobs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await jobs
            await close_batchers()
            await close_pool()

    return Litestar(
        route_handlers=[
            *health.ROUTES,
            *problems.ROUTES,
            admin.ProgramController,
            admin.ShopController,
            admin.ApiKeyController,
            customers.CustomerController,
            customers.MeController,
            ledger.LedgerController,
            ledger.HoldController,
            ledger.BalanceController,
            finance.FinanceController,
            earning.EarningController,
            orders.OrderController,
            orders.ReturnSettingsController,
            bulk.BulkController,
            history.HistoryController,
            redemptions.RedemptionController,
            tiers.TierConfigController,
            tiers.CustomerTierController,
            tiers.MyTierController,
            referrals.ReferralProgramController,
            referrals.ReferralCodeController,
            referrals.CustomerReferralController,
            referrals.MyReferralController,
            webhooks.WebhookController,
            events.EventController,
            metrics.MetricsController,
            metrics.MetricSettingsController,
            metrics.LifetimeFitController,
            metrics.SignalController,
        ],
        dependencies=DEPENDENCIES,
        plugins=[StructSchemaPlugin()],
        middleware=[
            observability_middleware,
            DefineMiddleware(CredentialMiddleware, exclude=exclude_public_paths()),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        state=State({"clock": clock or SystemClock(), "settings": settings, "rate_limiter": _rate_limiter(settings)}),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Loyalty ledger API",
            version="0.1.0",
            description=API_DESCRIPTION,
            path="/schema",
            components=COMPONENTS,
            security=SECURITY,
            render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin(path="/scalar")],
        ),
        logging_config=None,  # logs are configured once, as JSON lines
        debug=False,
    )
