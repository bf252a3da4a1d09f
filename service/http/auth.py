"""Authentication middleware (API key or customer token) and scope guards."""

from __future__ import annotations

import time
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import Receive, Send
from litestar.types import Scope as AsgiScope

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.errors import Forbidden, Unauthorized
from service.domain.rate_limit import RateLimiter
from service.http.body import require_json_body
from service.http.problems import domain_error_handler
from service.usecases.programs import authenticate

PUBLIC_PATHS = {"/health", "/metrics", "/schema", "/problems"}


class CredentialMiddleware(AbstractAuthenticationMiddleware):
    """Reads `Authorization: Bearer <api key | customer token>` into a Principal."""

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Authenticate; answer a refusal here rather than raise it past the outer middleware.

        An exception raised in a middleware skips the send wrappers of the middleware around
        it, so a raised 401 would leave without its X-Request-Id and be counted as a 500.
        Errors of the handler itself never get here: Litestar renders them inside the stack.
        """
        try:
            await super().__call__(scope, receive, send)
        except Unauthorized as refusal:
            request: Request[Any, Any, Any] = Request(scope, receive, send)
            response = domain_error_handler(request, refusal)
            await response.to_asgi_response(app=None, request=request)(scope, receive, send)

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthorized("send `Authorization: Bearer <api key or customer token>`", field="Authorization")
        clock: Clock = connection.app.state.clock
        principal = await authenticate(credential.strip(), clock)
        return AuthenticationResult(user=principal, auth=credential)


def exclude_public_paths() -> list[str]:
    """Path patterns the credential middleware skips."""
    return [f"^{path}" for path in PUBLIC_PATHS]


class ScopeGuard:
    """A guard admitting only principals with one of its scopes and, on a route with a
    `shop_id` path parameter, that may act for that shop; within the credential's rate
    limit, then only a JSON body.

    Every protected route passes through this guard, so the body check (which must come
    after the scope check: a finance key gets 403, not 415) lives here rather than in
    each controller. The shop check here makes a key of another shop a 403 before its
    body is read, like a wrong scope; the use cases apply the same rule again, also to
    shops named in a body.
    """

    def __init__(self, scopes: frozenset[Scope]) -> None:
        self.scopes = scopes

    async def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], route_handler: BaseRouteHandler) -> None:
        principal = connection.user
        if not isinstance(principal, Principal):
            raise Unauthorized("no credentials")
        if principal.scope not in self.scopes:
            names = ", ".join(sorted(scope.value for scope in self.scopes))
            raise Forbidden(f"this operation needs one of the scopes: {names}", scope=principal.scope.value)
        shop_id = connection.path_params.get("shop_id")
        if isinstance(shop_id, str):
            principal.check_shop(shop_id)
        limiter: RateLimiter | None = connection.app.state.get("rate_limiter")
        if limiter is not None:
            limiter.check(principal.actor, time.monotonic())
        await require_json_body(connection, route_handler)


def requires(*scopes: Scope) -> ScopeGuard:
    """The guard of a route that these scopes may call."""
    return ScopeGuard(frozenset(scopes))
