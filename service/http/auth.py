"""Authentication middleware (API key or customer token) and scope guards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.errors import Forbidden, Unauthorized
from service.usecases.programs import authenticate

PUBLIC_PATHS = {"/health", "/metrics", "/schema", "/problems"}


class CredentialMiddleware(AbstractAuthenticationMiddleware):
    """Reads `Authorization: Bearer <api key | customer token>` into a Principal."""

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


def requires(*scopes: Scope) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A guard admitting only principals with one of the scopes."""
    allowed = frozenset(scopes)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.user
        if not isinstance(principal, Principal):
            raise Unauthorized("no credentials")
        if principal.scope not in allowed:
            names = ", ".join(sorted(scope.value for scope in allowed))
            raise Forbidden(f"this operation needs one of the scopes: {names}", scope=principal.scope.value)

    return guard
