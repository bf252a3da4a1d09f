"""Every route of the app, checked for who may call it: no credential, a forged, expired or
revoked one is 401; a credential of a scope the route does not admit is 403, and so is a
key bound to another shop on a route of a shop."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from service.domain.access import Scope
from service.domain.clock import ManualClock
from service.http.auth import PUBLIC_PATHS, ScopeGuard
from tests.api.support import assert_problem
from tests.conftest import ProgramFixture

PARAMETER = re.compile(r"\{[^}:]+(:[^}]+)?\}")


def protected_routes(app: Litestar) -> list[tuple[str, str, frozenset[Scope]]]:
    """(method, path with parameters filled in, scopes) of every route that is not public."""
    found: list[tuple[str, str, frozenset[Scope]]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or any(route.path.startswith(public) for public in PUBLIC_PATHS):
            continue
        for handler in route.route_handlers:
            if handler.http_methods <= {"HEAD", "OPTIONS"}:
                continue  # made by the framework for CORS preflight
            guards = [guard for guard in handler.resolve_guards() if isinstance(guard, ScopeGuard)]
            assert len(guards) == 1, f"{route.path} declares no scopes (or several guards)"
            for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):
                found.append((method, PARAMETER.sub("1", route.path), guards[0].scopes))
    return found


async def test_every_route_admits_only_its_scopes(
    app: Litestar, client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    routes = protected_routes(app)
    assert len(routes) > 40
    till = program.auth("checkout")
    enrolled = await client.post("/v1/customers", json={"external_id": "ann"}, headers=till)
    token = await client.post(f"/v1/customers/{enrolled.json()['id']}/tokens", headers=till)
    short = await client.post(f"/v1/customers/{enrolled.json()['id']}/tokens", params={"ttl_seconds": 60}, headers=till)
    admin = {**program.auth("admin"), "Idempotency-Key": "gone"}
    made = await client.post("/v1/api-keys", json={"name": "gone", "scope": "admin"}, headers=admin)
    revoked = made.json()["key"]
    await client.delete(f"/v1/api-keys/{made.json()['id']}", headers=program.auth("admin"))
    credentials = {
        Scope.CHECKOUT: program.keys["checkout"],
        Scope.ADMIN: program.keys["admin"],
        Scope.FINANCE: program.keys["finance"],
        Scope.CUSTOMER: token.json()["token"],
    }
    clock.advance(timedelta(seconds=120))  # the short token has expired
    invalid = {
        "none": {},
        "forged token": {"Authorization": "Bearer ct.bm90LWEtdG9rZW4.c2lnbmF0dXJl"},
        "expired token": {"Authorization": f"Bearer {short.json()['token']}"},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
        "malformed key": {"Authorization": f"Bearer lk.{program.id}.key_x.not-the-secret"},
    }
    for method, path, scopes in routes:
        body: dict[str, object] | None = {} if method in ("POST", "PUT", "PATCH") else None
        for name, headers in invalid.items():
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, name, response.text)
            assert_problem(response, 401, "unauthorized")
        for scope, credential in credentials.items():
            if scope in scopes:
                continue
            response = await client.request(method, path, json=body, headers={"Authorization": f"Bearer {credential}"})
            assert response.status_code == 403, (method, path, scope, response.text)
            assert_problem(response, 403, "forbidden")


async def test_every_route_of_a_shop_refuses_a_key_of_another_shop(
    app: Litestar, client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    made = await client.post(
        "/v1/api-keys",
        json={"name": "till", "scope": "checkout", "shop_id": program.shop_id},
        headers={**program.auth("admin"), "Idempotency-Key": "till"},
    )
    till = {"Authorization": f"Bearer {made.json()['key']}"}
    shop_routes = [
        (method, path, scopes)
        for method, path, scopes in protected_routes(app)
        if path.startswith("/v1/shops/1") and Scope.CHECKOUT in scopes  # /v1/shops/{shop_id}...
    ]
    assert len(shop_routes) >= 3  # place, read and refund an order
    for method, path, _ in shop_routes:
        body: dict[str, object] | None = {} if method in ("POST", "PUT", "PATCH") else None
        response = await client.request(method, path, json=body, headers=till)
        assert response.status_code == 403, (method, path, response.text)
        assert assert_problem(response, 403, "forbidden")["field"] == "shop_id"


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
async def test_public_paths_need_no_credential(client: httpx.AsyncClient, path: str) -> None:
    target = {"/health": "/health/live", "/schema": "/schema/openapi.json"}.get(path, path)
    assert (await client.get(target)).status_code == 200
