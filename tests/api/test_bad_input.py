"""Bad input: each malformed request is a 4xx problem+json naming the field; it changes nothing."""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.support import assert_client_error, assert_names_field, assert_problem, snapshot
from tests.conftest import ProgramFixture


@dataclass(frozen=True)
class Endpoint:
    """A write endpoint, a body it accepts, and the key scope that may call it."""

    method: str
    path: str
    scope: str
    valid: dict[str, Any]
    fields: tuple[str, ...]
    required: dict[str, str] = field(default_factory=dict)  # body -> field it lacks
    keyed: bool = False  # needs an Idempotency-Key header (a new one each time here)


CUSTOMERS = Endpoint(
    "POST",
    "/v1/customers",
    "checkout",
    {"external_id": "valid-external-id", "email": "ann@example.com", "name": "Ann"},
    ("external_id", "email", "name", "shop_id", "attributes"),
    {"{}": "external_id", '{"email": "ann@example.com"}': "external_id"},
)
PATCH_CUSTOMER = Endpoint(
    "PATCH",
    "/v1/customers/{customer}",
    "checkout",
    {"name": "Ann B."},
    ("email", "name", "attributes"),
)
SHOPS = Endpoint("POST", "/v1/shops", "admin", {"name": "Second shop"}, ("name",), {"{}": "name"}, keyed=True)
API_KEYS = Endpoint(
    "POST",
    "/v1/api-keys",
    "admin",
    {"name": "integration", "scope": "checkout"},
    ("name", "scope"),
    {'{"name": "integration"}': "scope", '{"scope": "admin"}': "name"},
    keyed=True,
)
ENDPOINTS = [CUSTOMERS, PATCH_CUSTOMER, SHOPS, API_KEYS]
ENDPOINT_IDS = [f"{e.method} {e.path}" for e in ENDPOINTS]

Send = Callable[..., Awaitable[httpx.Response]]
KEYS = itertools.count()


@pytest.fixture
async def customer(client: httpx.AsyncClient, program: ProgramFixture) -> dict[str, Any]:
    """The customer the PATCH endpoint changes."""
    response = await client.post(
        "/v1/customers",
        json={
            "external_id": "patch-target",
            "email": "t@example.com",
            "name": "Target",
            "attributes": {"a": 1},
        },
        headers=program.auth("checkout"),
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def send(client: httpx.AsyncClient, program: ProgramFixture, customer: dict[str, Any]) -> Send:
    """Send raw bytes to an endpoint with its key; JSON content type unless told otherwise."""

    async def send_(
        endpoint: Endpoint, content: bytes, content_type: str | None = "application/json"
    ) -> httpx.Response:
        headers = program.auth(endpoint.scope)
        if content_type is not None:
            headers["Content-Type"] = content_type
        if endpoint.keyed:
            headers["Idempotency-Key"] = f"bad-input-{next(KEYS)}"
        return await client.request(
            endpoint.method,
            endpoint.path.format(customer=customer["id"]),
            content=content,
            headers=headers,
        )

    return send_


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_a_valid_body_is_accepted(
    send: Send, owner_connection: asyncpg.Connection, program: ProgramFixture, endpoint: Endpoint
) -> None:
    """The control: the same endpoints, keys and bodies do succeed and do write."""
    before = await snapshot(owner_connection, program.id)
    response = await send(endpoint, dumps(endpoint.valid))
    assert response.status_code in (200, 201), response.text
    assert await snapshot(owner_connection, program.id) != before


MISSING = [(e, body, lacking) for e in ENDPOINTS for body, lacking in e.required.items()]


@pytest.mark.parametrize(("endpoint", "body", "lacking"), MISSING, ids=[f"{e.path} {b}" for e, b, _ in MISSING])
async def test_missing_required_field(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    body: str,
    lacking: str,
) -> None:
    before = await snapshot(owner_connection, program.id)
    problem = assert_problem(await send(endpoint, body.encode()), 422, "invalid-input")
    assert_names_field(problem, lacking)
    assert await snapshot(owner_connection, program.id) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_unknown_field(
    send: Send, owner_connection: asyncpg.Connection, program: ProgramFixture, endpoint: Endpoint
) -> None:
    before = await snapshot(owner_connection, program.id)
    problem = assert_problem(
        await send(endpoint, dumps({**endpoint.valid, "loyalty_points": 1_000_000})),
        422,
        "invalid-input",
    )
    assert_names_field(problem, "loyalty_points")
    assert await snapshot(owner_connection, program.id) == before


def _lists(depth: int) -> Any:
    """A value nested depth lists deep."""
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


BAD_VALUES: list[tuple[Endpoint, str, Any]] = [
    (CUSTOMERS, "external_id", 42),
    (CUSTOMERS, "external_id", None),
    (CUSTOMERS, "external_id", ""),
    (CUSTOMERS, "external_id", "x" * 201),
    (CUSTOMERS, "external_id", ["a"]),
    (CUSTOMERS, "external_id", "nul\x00byte"),
    (CUSTOMERS, "email", "not-an-email"),
    (CUSTOMERS, "email", 7),
    (CUSTOMERS, "email", "a\x00@example.com"),
    (CUSTOMERS, "name", {"first": "Ann"}),
    (CUSTOMERS, "name", "Ann\x00"),
    (CUSTOMERS, "shop_id", 12),
    (CUSTOMERS, "shop_id", "shp_not_ours"),
    (CUSTOMERS, "shop_id", "\x00"),
    (CUSTOMERS, "attributes", []),
    (CUSTOMERS, "attributes", "tall"),
    (CUSTOMERS, "attributes", {"note": "nul\x00"}),
    (CUSTOMERS, "attributes", {"nul\x00key": 1}),
    (CUSTOMERS, "attributes", {"deep": _lists(40)}),
    (PATCH_CUSTOMER, "email", 42),
    (PATCH_CUSTOMER, "email", "nope"),
    (PATCH_CUSTOMER, "name", 3.5),
    (PATCH_CUSTOMER, "name", "x" * 201),
    (PATCH_CUSTOMER, "attributes", [1, 2]),
    (PATCH_CUSTOMER, "attributes", {"k": ["\x00"]}),
    (SHOPS, "name", 42),
    (SHOPS, "name", ""),
    (SHOPS, "name", None),
    (SHOPS, "name", "x" * 201),
    (SHOPS, "name", "Shop\x00"),
    (API_KEYS, "name", 42),
    (API_KEYS, "name", ""),
    (API_KEYS, "name", "key\x00"),
    (API_KEYS, "scope", "customer"),
    (API_KEYS, "scope", "ADMIN"),
    (API_KEYS, "scope", 1),
    (API_KEYS, "scope", None),
]


@pytest.mark.parametrize(
    ("endpoint", "name", "value"),
    BAD_VALUES,
    ids=[f"{e.method} {e.path} {n}={v!r:.30}" for e, n, v in BAD_VALUES],
)
async def test_bad_field_value(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    name: str,
    value: Any,
) -> None:
    before = await snapshot(owner_connection, program.id)
    problem = assert_problem(await send(endpoint, dumps({**endpoint.valid, name: value})), 422, "invalid-input")
    assert_names_field(problem, name)
    assert await snapshot(owner_connection, program.id) == before


def _nested(depth: int) -> bytes:
    return b'{"attributes": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


MALFORMED: dict[str, tuple[bytes, str | None, int]] = {
    # name: (body, content type, status)
    "invalid JSON": (b'{"name": ', "application/json", 400),
    "trailing garbage": (b'{"name": "a"} x', "application/json", 400),
    "single quotes": (b"{'name': 'a'}", "application/json", 400),
    "empty body": (b"", "application/json", 400),
    "whitespace body": (b"  \n ", "application/json", 400),
    "empty body, no content type": (b"", None, 400),
    "JSON null": (b"null", "application/json", 400),
    "JSON array": (b"[]", "application/json", 400),
    "JSON string": (b'"name"', "application/json", 400),
    "JSON number": (b"12", "application/json", 400),
    "invalid UTF-8": (b'{"name": "\xff\xfe"}', "application/json", 400),
    "lone surrogate": (b'{"name": "\\ud800"}', "application/json", 400),
    "number out of range": (b'{"attributes": {"x": 1e999}}', "application/json", 400),
    "nested past the recursion limit": (_nested(5000), "application/json", 400),
    "text/plain": (b'{"name": "a"}', "text/plain", 415),
    "form": (b"name=a&scope=admin&external_id=a", "application/x-www-form-urlencoded", 415),
    "multipart": (b"--b\r\n\r\n--b--\r\n", "multipart/form-data; boundary=b", 415),
    "no content type": (b'{"name": "a"}', None, 415),
    "XML": (b"<name>a</name>", "application/xml", 415),
}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_body(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    case: str,
) -> None:
    content, content_type, status = MALFORMED[case]
    before = await snapshot(owner_connection, program.id)
    response = await send(endpoint, content, content_type)
    assert_problem(response, status)
    assert await snapshot(owner_connection, program.id) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_valid_json_with_a_json_media_type_variant_is_accepted(send: Send, endpoint: Endpoint) -> None:
    """The content type check is not stricter than JSON: charset and +json types pass."""
    response = await send(endpoint, dumps(endpoint.valid), "application/json; charset=utf-8")
    assert response.status_code in (200, 201), response.text


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
async def test_body_over_the_size_limit(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    app: Any,
) -> None:
    limit = app.state.settings.max_body_bytes
    padding = "p" * (2 * 1024 * 1024)
    body = dumps(
        {**endpoint.valid, "attributes": {"padding": padding}}
        if "attributes" in endpoint.fields
        else {**endpoint.valid, "name": padding}
    )
    assert len(body) > limit
    before = await snapshot(owner_connection, program.id)
    assert_problem(await send(endpoint, body), 413, "body-too-large")
    assert await snapshot(owner_connection, program.id) == before


async def test_a_body_just_under_the_limit_is_read(
    send: Send, owner_connection: asyncpg.Connection, program: ProgramFixture, app: Any
) -> None:
    """The limit is the setting, not something smaller: a body near it is parsed (and refused
    here only because the name is too long for the schema)."""
    limit = app.state.settings.max_body_bytes
    body = dumps({"name": "n" * (limit - 100)})
    assert len(body) <= limit
    problem = assert_problem(await send(SHOPS, body), 422, "invalid-input")
    assert_names_field(problem, "name")


async def test_bad_path_and_query_parameters(
    client: httpx.AsyncClient, program: ProgramFixture, customer: dict[str, Any]
) -> None:
    headers = program.auth("admin")
    for url, name in (
        ("/v1/customers?limit=0", "limit"),
        ("/v1/customers?limit=1000", "limit"),
        ("/v1/customers?limit=many", "limit"),
        ("/v1/customers?cursor=" + "c" * 65, "cursor"),
        ("/v1/customers/" + "c" * 65, "customer_id"),
    ):
        problem = assert_client_error(await client.get(url, headers=headers))
        assert_names_field(problem, name)
    for url, name in (("/v1/customers/%00", "customer_id"), ("/v1/customers?cursor=%00", "cursor")):
        assert_names_field(assert_client_error(await client.get(url, headers=headers)), name)
    ttl = await client.post(
        f"/v1/customers/{customer['id']}/tokens",
        params={"ttl_seconds": "5"},
        headers=program.auth("checkout"),
    )
    assert_names_field(assert_client_error(ttl), "ttl_seconds")
    assert_names_field(assert_client_error(await client.delete("/v1/api-keys/%00", headers=headers)), "key_id")


async def test_missing_parameters_are_named(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    period = await client.get(
        "/v1/finance/activity", params={"from": "2026-01-01T00:00:00Z"}, headers=program.auth("finance")
    )
    assert_names_field(assert_problem(period, 422, "invalid-input"), "to")
    grant = {"customer_id": "cus_x", "amount": 1, "reason": "goodwill"}
    unkeyed = await client.post("/v1/ledger/adjustments", json=grant, headers=program.auth("admin"))
    assert_names_field(assert_problem(unkeyed, 422, "invalid-input"), "Idempotency-Key")


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/finance/activity", {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00"}, "to"),
        ("/v1/finance/journal", {"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00"}, "from"),
        ("/v1/finance/trial-balance", {"as_of": "2026-01-01T00:00:00"}, "as_of"),
        ("/v1/finance/accounts/1/statement", {"from": "0001-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ("/v1/finance/liability", {"as_of": "9999-12-31T23:59:59Z"}, "as_of"),
    ],
)
async def test_instants_need_an_offset_and_a_sane_year(
    client: httpx.AsyncClient, program: ProgramFixture, path: str, params: dict[str, str], field: str
) -> None:
    response = await client.get(path, params=params, headers=program.auth("finance"))
    assert_names_field(assert_problem(response, 422, "invalid-input"), field)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/finance/journal", {"from": "yesterday", "to": "2026-01-02T00:00:00Z"}, "from"),
        ("/v1/finance/activity", {"from": "2026-01-01T00:00:00Z", "to": "2026-13-01T00:00:00Z"}, "to"),
        ("/v1/metrics/retention", {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01"}, "from"),
        ("/v1/metrics/cohorts", {"from": "2026-01-01", "to": "2026-02-30"}, "to"),
    ],
)
async def test_an_unreadable_period_names_the_parameter_not_its_python_name(
    client: httpx.AsyncClient, program: ProgramFixture, path: str, params: dict[str, str], field: str
) -> None:
    response = await client.get(path, params=params, headers=program.auth("finance"))
    assert_names_field(assert_problem(response, 422, "invalid-input"), field)


async def test_an_idempotency_key_too_long_names_the_header(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    headers = {**program.auth("admin"), "Idempotency-Key": "k" * 256}
    response = await client.post("/v1/shops", json={"name": "Second shop"}, headers=headers)
    assert_names_field(assert_problem(response, 422, "invalid-input"), "Idempotency-Key")


async def test_an_unknown_field_named_by_the_empty_string_is_named(send: Send) -> None:
    problem = assert_problem(await send(SHOPS, b'{"name": "Second shop", "": 1}'), 422, "invalid-input")
    assert_names_field(problem, "")


@pytest.mark.parametrize("authorised", [True, False])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("GET", "/nope"),
        ("POST", "/v1/customer"),
        ("GET", "/v1/customers/cus_x/unknown"),
        ("GET", "/v2/customers"),
    ],
)
async def test_unknown_route_is_404_problem(
    client: httpx.AsyncClient, program: ProgramFixture, method: str, path: str, authorised: bool
) -> None:
    headers = program.auth("admin") if authorised else {}
    assert_problem(await client.request(method, path, headers=headers), 404, "not-found")


@pytest.mark.parametrize("authorised", [True, False])
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/customers", {"GET", "POST"}),
        ("DELETE", "/v1/customers", {"GET", "POST"}),
        ("DELETE", "/v1/customers/cus_x", {"GET", "PATCH"}),
        ("POST", "/v1/program", {"GET"}),
        ("PATCH", "/v1/shops", {"GET", "POST"}),
        ("GET", "/v1/api-keys/key_x", {"DELETE"}),
        ("POST", "/health/live", {"GET"}),
    ],
)
async def test_wrong_method_is_405_problem(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    method: str,
    path: str,
    allowed: set[str],
    authorised: bool,
) -> None:
    headers = program.auth("admin") if authorised else {}
    before = await snapshot(owner_connection, program.id)
    response = await client.request(method, path, headers=headers, json={"name": "x"})
    assert_problem(response, 405, "method-not-allowed")
    assert allowed <= {m.strip() for m in response.headers["allow"].split(",")}
    assert await snapshot(owner_connection, program.id) == before


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        (CUSTOMERS, {"external_id": "newline", "email": "ann@example.com\n"}, "email"),
        (PATCH_CUSTOMER, {"email": "ann@example.com\n"}, "email"),
        (API_KEYS, {"name": "integration", "scope": "checkout\n"}, "scope"),
        (API_KEYS, {"name": "integration", "scope": "admin\n"}, "scope"),
    ],
)
async def test_a_trailing_newline_does_not_pass_a_pattern(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    body: dict[str, Any],
    field: str,
) -> None:
    """`$` in a Python pattern also matches before a final newline: such a value is refused
    like any other that does not fit, never stored (nor a 500 for a scope no key has)."""
    before = await snapshot(owner_connection, program.id)
    problem = assert_problem(await send(endpoint, dumps(body)), 422, "invalid-input")
    assert_names_field(problem, field)
    assert await snapshot(owner_connection, program.id) == before


@pytest.mark.parametrize(
    ("endpoint", "content", "field"),
    [
        (CUSTOMERS, b'{"external_id": "first", "external_id": "second"}', "external_id"),
        (CUSTOMERS, b'{"external_id": "dup", "attributes": {"tier": "gold", "tier": "basic"}}', "attributes.tier"),
        (CUSTOMERS, b'{"external_id": "dup", "attributes": {"a": [{"b": 1, "b": 2}]}}', "attributes.a[0].b"),
        (PATCH_CUSTOMER, b'{"name": "Ann", "email": "a@example.com", "name": "Bob"}', "name"),
        (SHOPS, b'{"name": "One", "name": "Two"}', "name"),
        (API_KEYS, b'{"name": "till", "scope": "finance", "scope": "admin"}', "scope"),
    ],
)
async def test_a_member_named_twice_is_refused_naming_it(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    content: bytes,
    field: str,
) -> None:
    """A JSON object that names a member twice is ambiguous (parsers disagree on which value
    counts): it is refused naming the member, rather than read as its last value."""
    before = await snapshot(owner_connection, program.id)
    problem = assert_problem(await send(endpoint, content), 422, "invalid-input")
    assert_names_field(problem, field)
    assert await snapshot(owner_connection, program.id) == before


# --- properties ---------------------------------------------------------------------------

# Strings that have broken this stack before, mixed into the random ones.
AWKWARD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "x" * 201,
        "ann@example.com",
        "checkout",
        "ADMIN",
        "\u202e",
        "\ufeff",
        "🎉",
    ]
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | AWKWARD_TEXT
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(AWKWARD_TEXT | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Bytes inside an otherwise valid document: invalid UTF-8, control characters, stray quotes.
BODY_BYTES = st.binary(max_size=64) | st.binary(min_size=1, max_size=16).map(
    lambda junk: b'{"name": "' + junk + b'", "external_id": "' + junk + b'", "scope": "admin"}'
)
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


async def _check_never_500(
    response: httpx.Response, owner_connection: asyncpg.Connection, program_id: str, before: Any
) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_client_error(response)
        assert await snapshot(owner_connection, program_id) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
@FUZZ
@given(data=st.data())
async def test_any_json_value_in_any_field_is_never_a_500(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(endpoint.fields), label="field")
    value = data.draw(JSON_VALUES, label="value")
    before = await snapshot(owner_connection, program.id)
    response = await send(endpoint, dumps({**endpoint.valid, name: value}))
    await _check_never_500(response, owner_connection, program.id, before)
    if response.status_code == 422:
        assert response.json()["field"] == name


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
@FUZZ
@given(body=JSON_VALUES | st.dictionaries(st.sampled_from(["name", "external_id", "scope", "email", "x"]), JSON_VALUES))
async def test_any_json_document_is_never_a_500(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    body: Any,
) -> None:
    before = await snapshot(owner_connection, program.id)
    response = await send(endpoint, dumps(body))
    await _check_never_500(response, owner_connection, program.id, before)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
@FUZZ
@given(content=BODY_BYTES)
async def test_any_bytes_are_never_a_500(
    send: Send,
    owner_connection: asyncpg.Connection,
    program: ProgramFixture,
    endpoint: Endpoint,
    content: bytes,
) -> None:
    before = await snapshot(owner_connection, program.id)
    response = await send(endpoint, content)
    await _check_never_500(response, owner_connection, program.id, before)


async def test_a_trailing_newline_does_not_pass_the_other_strict_patterns(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    """The same for a currency, a referral code in the path and a chain hash in the query."""
    line = {"sku": "latte", "category": "coffee", "unit_price": 450, "quantity": 1}
    order = {"currency": "EUR\n", "placed_at": "2026-01-01T12:00:00Z", "lines": [line]}
    quote = await client.post("/v1/earning/quote", json={"order": order}, headers=program.auth("checkout"))
    assert_names_field(assert_problem(quote, 422, "invalid-input"), "order.currency")
    chain = await client.get(
        "/v1/finance/chain", params={"anchor_seq": 1, "anchor_hash": "a" * 64 + "\n"}, headers=program.auth("finance")
    )
    assert_names_field(assert_problem(chain, 422, "invalid-input"), "anchor_hash")
    code = await client.get("/v1/referral-codes/ABCD%0A", headers=program.auth("admin"))
    assert code.status_code in (404, 422), code.text  # never found as ABCD
    assert code.status_code != 200


async def test_an_enrolment_shop_id_is_bounded_like_every_other_id(
    client: httpx.AsyncClient, owner_connection: asyncpg.Connection, program: ProgramFixture
) -> None:
    """A shop id named in a body is at most 64 characters (an id is about 30): a longer one is
    refused naming it, not looked up and echoed back whole in the answer."""
    before = await snapshot(owner_connection, program.id)
    body = {"external_id": "long-shop", "shop_id": "s" * 100_000}
    response = await client.post("/v1/customers", json=body, headers=program.auth("checkout"))
    problem = assert_problem(response, 422, "invalid-input")
    assert_names_field(problem, "shop_id")
    assert len(response.content) < 2_000
    assert await snapshot(owner_connection, program.id) == before
