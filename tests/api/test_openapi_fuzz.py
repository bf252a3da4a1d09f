"""Every operation of the served OpenAPI document, fuzzed with Schemathesis against the real app
and database: no 5xx, only documented status codes, and every body of a documented media type
and schema (RFC 9457 problem+json for errors, naming the field of invalid input).

Requests come from the document alone: valid ones, with a valid credential of a scope the
operation admits, and invalid ones (a missing credential among them) that must be refused.
Path parameters and fields such as `customer_id` often name objects seeded beforehand, so
operations get past their 404. Examples are few per operation and derandomized, so a run is
bounded and repeatable.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.routes import HTTPRoute
from schemathesis import GenerationMode
from schemathesis.checks import (
    CheckContext,
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.transport import Response

from service.app import create_app
from service.config import load_settings
from service.domain.access import Scope
from service.domain.clock import ManualClock
from service.http.auth import ScopeGuard
from service.usecases.dispatch import publish_events
from tests.api.orders_support import PLACED, RULES, order_body
from tests.api.support import PROBLEM_JSON
from tests.api.test_referrals_api import SETTINGS as REFERRALS
from tests.api.test_tiers_api import LADDER
from tests.conftest import make_program

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

EXAMPLES = 15  # per operation
MODES = [GenerationMode.POSITIVE, GenerationMode.POSITIVE, GenerationMode.NEGATIVE]  # two valid requests to one invalid
KEYS = itertools.count()
TOP_LEVEL_ONLY = {"code"}  # a referral code to redeem; deeper in a body, `code` is a tier level's
FRESH = {"order_id", "refund_id", "signal_id", "external_id", "key"}  # fields of bodies that are ids of the caller's


def _operations() -> list[tuple[str, str, frozenset[Scope] | None]]:
    """(method, path, scopes, or None when public) of every operation in the document."""
    app = create_app(load_settings(), "postgresql://unused/unused")  # never started: routes only
    guards = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                scopes = [guard.scopes for guard in handler.resolve_guards() if isinstance(guard, ScopeGuard)]
                for method in handler.http_methods:
                    guards[method, route.path_format] = scopes[0] if scopes else None
    document = app.openapi_schema.to_schema()
    operations = [
        (method.upper(), path, guards[method.upper(), path])
        for path, item in document["paths"].items()
        for method in item
    ]
    return sorted(operations, key=lambda op: (op[0] == "DELETE", op[1], op[0]))  # deletes last: the rest find objects


OPERATIONS = _operations()


@dataclass
class World:
    """A seeded program: credentials per scope, and ids of objects that exist."""

    credentials: dict[Scope, str]
    known: dict[str, list[Any]]  # path parameter or body field -> values that exist
    schema: schemathesis.BaseSchema


@pytest.fixture(scope="module")
async def http(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def _ok(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture(scope="module")
async def world(http: httpx.AsyncClient, clock: ManualClock) -> World:
    program = await make_program("Fuzzed program")
    admin, till = program.auth("admin"), program.auth("checkout")
    clock.set(datetime(2000, 1, 1, tzinfo=UTC))  # rules in force for generated orders of any date
    await _ok(await http.post("/v1/earning/rules", json=RULES, headers={**admin, "Idempotency-Key": "rules"}))
    clock.set(datetime.now(UTC))
    await _ok(await http.put("/v1/tiers", json=LADDER, headers={**admin, "Idempotency-Key": "tiers"}))
    await _ok(await http.put("/v1/referrals/settings", json=REFERRALS, headers={**admin, "Idempotency-Key": "refs"}))
    hooks = {"url": "https://crm.example.com/hooks", "event_types": ["customer.enrolled"]}
    endpoint = await _ok(
        await http.post("/v1/webhooks/endpoints", json=hooks, headers={**admin, "Idempotency-Key": "hooks"})
    )
    customers = [
        (await _ok(await http.post("/v1/customers", json={"external_id": name}, headers=till)))["id"]
        for name in ("ann", "bob", "cat")
    ]
    await publish_events(program.id, clock)  # a delivery per enrolment, never sent
    deliveries = await _ok(await http.get(f"/v1/webhooks/endpoints/{endpoint['id']}/deliveries", headers=admin))
    ann = customers[0]
    await _ok(await http.post(f"/v1/shops/{program.shop_id}/orders", json=order_body(ann), headers=till))
    grant = {"customer_id": ann, "amount": 5000, "reason": "welcome"}
    entry = await _ok(await http.post("/v1/ledger/adjustments", json=grant, headers={**admin, "Idempotency-Key": "g"}))
    holds = [
        await _ok(await http.post("/v1/holds", json={"customer_id": ann, "amount": 100}, headers={**till, **key}))
        for key in ({"Idempotency-Key": "h1"}, {"Idempotency-Key": "h2"})
    ]
    await _ok(await http.post("/v1/metrics/predicted-ltv/fit", headers=admin))
    code = await _ok(await http.get(f"/v1/customers/{ann}/referral-code", headers=till))
    spare_key = {"name": "spare", "scope": "checkout"}
    spare = await _ok(await http.post("/v1/api-keys", json=spare_key, headers={**admin, "Idempotency-Key": "spare"}))
    accounts = await _ok(await http.get("/v1/finance/accounts", headers=program.auth("finance")))
    token = await _ok(await http.post(f"/v1/customers/{customers[1]}/tokens", headers=till))
    return World(
        credentials={
            Scope.ADMIN: program.keys["admin"],
            Scope.CHECKOUT: program.keys["checkout"],
            Scope.FINANCE: program.keys["finance"],
            Scope.CUSTOMER: token["token"],
        },
        known={
            # path parameters
            "account_id": [account["account_id"] for account in accounts["items"][:4]],
            "code": [code["code"]],
            "customer_id": customers,
            "delivery_id": [delivery["id"] for delivery in deliveries["items"]],
            "endpoint_id": [endpoint["id"]],
            "entry_id": [entry["id"], holds[0]["authorize_entry_id"]],
            "hold_id": [hold["id"] for hold in holds],
            "key_id": [spare["id"]],  # never a key the test uses
            "order_id": ["W-1"],
            "shop_id": [program.shop_id],
            "slug": ["not-found", "invalid-input"],
            # and fields of bodies
            "currency": ["EUR"],
            "occurred_at": [clock.now().isoformat()],
            "placed_at": [PLACED.isoformat(), clock.now().isoformat()],
            "tier_code": ["member", "insider"],
        },
        schema=schemathesis.openapi.from_dict(await _ok(await http.get("/schema/openapi.json"))),
    )


def _known(value: Any, known: dict[str, list[Any]], data: st.DataObject, depth: int = 0) -> None:
    """Often, a field of a body (at any depth) names something that exists, or is a new id
    where an id of the caller's own (an order id, say) makes a request new."""
    if isinstance(value, dict):
        for name, inner in value.items():
            if name in FRESH:
                value[name] = data.draw(st.sampled_from([f"fuzz-{next(KEYS)}", inner]), label=name)
            elif name in known and (depth == 0 or name not in TOP_LEVEL_ONLY):
                value[name] = data.draw(st.sampled_from([*known[name], inner]), label=name)
            else:
                _known(inner, known, data, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _known(item, known, data, depth + 1)


def _with_known_values(case: OpenApiCase, known: dict[str, list[Any]], data: st.DataObject) -> None:
    """Often, a path parameter or body field names an object that exists, and an
    idempotency key is new."""
    for name, value in (case.path_parameters or {}).items():
        if name in known:
            case.path_parameters[name] = data.draw(st.sampled_from([*known[name], value]), label=name)
    _known(case.body, known, data)
    if case.headers and "Idempotency-Key" in case.headers:
        fresh = f"fuzz-{next(KEYS)}"
        case.headers["Idempotency-Key"] = data.draw(st.sampled_from([fresh, case.headers["Idempotency-Key"]]))


def _problem_names_field(ctx: CheckContext, response: Response, case: OpenApiCase) -> bool | None:
    """Errors are problem+json; an invalid-input problem names the field."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith(PROBLEM_JSON), f"{response.status_code} answered as {content_type!r}"
    body = response.json()
    if body.get("type") == "/problems/invalid-input":
        assert isinstance(body.get("field"), str), f"an invalid-input problem that names no field: {body}"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    _problem_names_field,
]


async def _send(http: httpx.AsyncClient, case: OpenApiCase) -> httpx.Response:
    """Send the case to the app in this event loop (where the database pool lives), as the bytes
    Schemathesis' own transport would send: it serializes a case for `requests`."""
    kwargs = case.as_transport_kwargs(base_url="http://test")
    prepared = requests.Request(
        method=kwargs["method"],
        url=kwargs["url"],
        headers=kwargs["headers"],
        params=kwargs.get("params"),
        json=kwargs.get("json"),
        data=kwargs.get("data"),
        cookies=kwargs.get("cookies"),
    ).prepare()
    # `requests` keeps a header value as given (str or bytes) and sends a str one as Latin-1
    headers = [
        (name.encode("ascii"), value if isinstance(value, bytes) else value.encode("latin-1"))
        for name, value in prepared.headers.items()
    ]
    body = prepared.body
    assert body is None or isinstance(body, bytes | str), f"a body that is not encoded whole: {body!r}"
    return await http.request(prepared.method or "GET", prepared.url or "", headers=headers, content=body)


@pytest.mark.parametrize(("method", "path", "scopes"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, in bounded time
    # the autouse clock reset runs once per operation, as meant; big schemas are slow to draw from
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(data=st.data())
async def test_operation_conforms_to_its_schema(
    http: httpx.AsyncClient,
    world: World,
    method: str,
    path: str,
    scopes: frozenset[Scope] | None,
    data: st.DataObject,
) -> None:
    operation = world.schema[path][method.lower()]
    mode = data.draw(st.sampled_from(MODES), label="mode")
    case = data.draw(operation.as_strategy(generation_mode=mode), label="case")
    if mode is GenerationMode.POSITIVE:
        _with_known_values(case, world.known, data)
    if scopes and case.headers and case.headers.get("Authorization", "").startswith("Bearer "):
        # a credential of the documented form: make it one that is valid for the operation
        scope = data.draw(st.sampled_from(sorted(scopes, key=lambda s: s.value)), label="scope")
        case.headers["Authorization"] = f"Bearer {world.credentials[scope]}"
    case.validate_response(await _send(http, case), checks=CHECKS)
