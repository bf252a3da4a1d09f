"""Tenant isolation and authorisation: who may see and do what."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from service.domain.clock import ManualClock
from tests.api.support import assert_problem, snapshot
from tests.conftest import ProgramFixture


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def key_id(key: str) -> str:
    """The id part of `lk.<program>.<key id>.<secret>`."""
    return key.split(".")[2]


async def enrol(client: httpx.AsyncClient, program: ProgramFixture, external_id: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/customers",
        json={"external_id": external_id, **extra},
        headers=program.auth("checkout"),
    )
    assert response.status_code == 201, response.text
    customer: dict[str, Any] = response.json()
    return customer


async def customer_token(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    customer_id: str,
    ttl_seconds: int | None = None,
) -> str:
    params = {"ttl_seconds": str(ttl_seconds)} if ttl_seconds is not None else {}
    response = await client.post(f"/v1/customers/{customer_id}/tokens", params=params, headers=program.auth("checkout"))
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


# --- tenant isolation -------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["checkout", "admin", "finance"])
async def test_a_key_cannot_read_another_programs_customer(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture, scope: str
) -> None:
    theirs = await enrol(client, other_program, "shared-external-id", name="Theirs")

    own_view = await client.get(f"/v1/customers/{theirs['id']}", headers=other_program.auth(scope))
    assert own_view.status_code == 200, own_view.text

    foreign = await client.get(f"/v1/customers/{theirs['id']}", headers=program.auth(scope))
    body = assert_problem(foreign, 404, "not-found")
    # indistinguishable from an id that exists nowhere: no hint that the customer exists
    missing = await client.get("/v1/customers/cus_doesnotexist", headers=program.auth(scope))
    assert assert_problem(missing, 404)["type"] == body["type"]

    listed = await client.get("/v1/customers", headers=program.auth(scope))
    assert listed.status_code == 200
    assert theirs["id"] not in {item["id"] for item in listed.json()["items"]}


@pytest.mark.parametrize("scope", ["checkout", "admin"])
async def test_a_key_cannot_update_another_programs_customer(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    scope: str,
) -> None:
    theirs = await enrol(client, other_program, "victim", name="Original", email="v@example.com")
    before = await snapshot(owner_connection, other_program.id)

    for change in ({"name": "Hijacked"}, {}):  # an empty change takes another path in the use case
        response = await client.patch(f"/v1/customers/{theirs['id']}", json=change, headers=program.auth(scope))
        assert_problem(response, 404, "not-found")

    assert await snapshot(owner_connection, other_program.id) == before
    again = await client.get(f"/v1/customers/{theirs['id']}", headers=other_program.auth("admin"))
    assert again.json()["name"] == "Original"


async def test_a_key_cannot_issue_tokens_for_another_programs_customer(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    theirs = await enrol(client, other_program, "someone")
    response = await client.post(f"/v1/customers/{theirs['id']}/tokens", headers=program.auth("checkout"))
    assert_problem(response, 404, "not-found")
    # the same call with their own key works, so the 404 above is the tenant boundary
    assert await customer_token(client, other_program, theirs["id"])


async def test_an_admin_cannot_revoke_another_programs_key(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    their_key = other_program.keys["checkout"]
    response = await client.delete(f"/v1/api-keys/{key_id(their_key)}", headers=program.auth("admin"))
    assert_problem(response, 404, "not-found")
    still_works = await client.get("/v1/program", headers=bearer(their_key))
    assert still_works.status_code == 200
    assert still_works.json()["id"] == other_program.id


async def test_a_key_used_under_another_program_id_is_refused(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    _, _, own_key_id, secret = program.keys["admin"].split(".")
    moved = f"lk.{other_program.id}.{own_key_id}.{secret}"
    assert_problem(await client.get("/v1/program", headers=bearer(moved)), 401, "unauthorized")


async def test_each_key_sees_its_own_program(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    for fixture in (program, other_program):
        for scope in ("checkout", "admin", "finance"):
            response = await client.get("/v1/program", headers=fixture.auth(scope))
            assert response.status_code == 200, response.text
            assert response.json()["id"] == fixture.id


# --- customer tokens ---------------------------------------------------------------------


async def test_a_customer_token_cannot_read_another_customer(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    ann = await enrol(client, program, "ann")
    bob = await enrol(client, program, "bob")
    token = bearer(await customer_token(client, program, ann["id"]))

    me = await client.get("/v1/me", headers=token)
    assert me.status_code == 200
    assert me.json()["id"] == ann["id"]

    other = await client.get(f"/v1/customers/{bob['id']}", headers=token)
    assert other.status_code in (403, 404)
    assert_problem(other, other.status_code)
    assert bob["external_id"] not in other.text


async def test_a_customer_token_is_bound_to_its_program(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    ann = await enrol(client, program, "ann")
    token = await customer_token(client, program, ann["id"])
    _, _, claims, signature = token.split(".")
    moved = f"ct.{other_program.id}.{claims}.{signature}"
    assert_problem(await client.get("/v1/me", headers=bearer(moved)), 401, "unauthorized")


SHOP_ENDPOINTS = [
    ("GET", "/v1/program", None),
    ("GET", "/v1/customers", None),
    ("POST", "/v1/customers", {"external_id": "made-by-a-customer"}),
    ("GET", "/v1/customers/{self}", None),
    ("PATCH", "/v1/customers/{self}", {"name": "Changed by the customer"}),
    ("PATCH", "/v1/customers/{other}", {"name": "Changed by the customer"}),
    ("POST", "/v1/customers/{self}/tokens", None),
    ("POST", "/v1/customers/{other}/tokens", None),
    ("GET", "/v1/shops", None),
    ("POST", "/v1/shops", {"name": "Customer's shop"}),
    ("GET", "/v1/api-keys", None),
    ("POST", "/v1/api-keys", {"name": "customer key", "scope": "admin"}),
    ("DELETE", "/v1/api-keys/{key}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), SHOP_ENDPOINTS)
async def test_a_customer_token_cannot_call_shop_endpoints(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    ann = await enrol(client, program, "ann")
    bob = await enrol(client, program, "bob")
    token = bearer(await customer_token(client, program, ann["id"]))
    url = path.format(self=ann["id"], other=bob["id"], key=key_id(program.keys["checkout"]))
    before = await snapshot(owner_connection, program.id)

    response = await client.request(method, url, json=body, headers=token)

    assert_problem(response, 403, "forbidden")
    assert await snapshot(owner_connection, program.id) == before


# --- scopes ------------------------------------------------------------------------------

WRITES = [
    ("POST", "/v1/customers", {"external_id": "new-customer"}),
    ("PATCH", "/v1/customers/{customer}", {"name": "Changed"}),
    ("POST", "/v1/customers/{customer}/tokens", None),
    ("POST", "/v1/shops", {"name": "Another shop"}),
    ("POST", "/v1/api-keys", {"name": "escalated", "scope": "admin"}),
    ("DELETE", "/v1/api-keys/{key}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_a_finance_key_cannot_write(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    customer = await enrol(client, program, "existing")
    url = path.format(customer=customer["id"], key=key_id(program.keys["checkout"]))
    before = await snapshot(owner_connection, program.id)

    response = await client.request(method, url, json=body, headers=program.auth("finance"))

    problem = assert_problem(response, 403, "forbidden")
    assert problem["scope"] == "finance"
    assert await snapshot(owner_connection, program.id) == before


async def test_a_finance_key_can_read(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    customer = await enrol(client, program, "readable")
    for path in ("/v1/program", "/v1/customers", f"/v1/customers/{customer['id']}"):
        response = await client.get(path, headers=program.auth("finance"))
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/shops", {"name": "Checkout's shop"}),
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", {"name": "escalated", "scope": "admin"}),
        ("DELETE", "/v1/api-keys/{key}", None),
    ],
)
async def test_a_checkout_key_cannot_administer(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    url = path.format(key=key_id(program.keys["finance"]))
    before = await snapshot(owner_connection, program.id)
    response = await client.request(method, url, json=body, headers=program.auth("checkout"))
    assert_problem(response, 403, "forbidden")
    assert await snapshot(owner_connection, program.id) == before


# --- revocation --------------------------------------------------------------------------


async def test_a_revoked_key_is_refused_on_its_next_request(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    checkout = program.keys["checkout"]
    assert (await client.get("/v1/program", headers=bearer(checkout))).status_code == 200

    revoked = await client.delete(f"/v1/api-keys/{key_id(checkout)}", headers=program.auth("admin"))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["id"] == key_id(checkout)
    assert revoked.json()["revoked_at"] is not None

    body = assert_problem(await client.get("/v1/program", headers=bearer(checkout)), 401, "unauthorized")
    assert "revoked" in body["detail"]
    refused_write = await client.post(
        "/v1/customers", json={"external_id": "after-revocation"}, headers=bearer(checkout)
    )
    assert_problem(refused_write, 401, "unauthorized")

    # the other keys of the program are untouched, and the list shows the revocation
    keys = await client.get("/v1/api-keys", headers=program.auth("admin"))
    assert keys.status_code == 200
    by_id = {key["id"]: key for key in keys.json()}
    assert by_id[key_id(checkout)]["revoked_at"] is not None
    assert by_id[key_id(program.keys["finance"])]["revoked_at"] is None


async def test_an_admin_key_can_revoke_itself(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    admin = program.keys["admin"]
    response = await client.delete(f"/v1/api-keys/{key_id(admin)}", headers=bearer(admin))
    assert response.status_code == 200, response.text
    assert_problem(await client.get("/v1/api-keys", headers=bearer(admin)), 401, "unauthorized")


async def test_a_new_key_works_and_revoking_twice_keeps_the_first_time(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    created = await client.post(
        "/v1/api-keys",
        json={"name": "temporary", "scope": "finance"},
        headers={**program.auth("admin"), "Idempotency-Key": "temporary"},
    )
    assert created.status_code == 201, created.text
    new_key = created.json()["key"]
    assert (await client.get("/v1/program", headers=bearer(new_key))).status_code == 200

    first = await client.delete(f"/v1/api-keys/{created.json()['id']}", headers=program.auth("admin"))
    second = await client.delete(f"/v1/api-keys/{created.json()['id']}", headers=program.auth("admin"))
    assert first.status_code == second.status_code == 200
    assert first.json()["revoked_at"] == second.json()["revoked_at"]
    assert_problem(await client.get("/v1/program", headers=bearer(new_key)), 401)


# --- bad credentials ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged_secret(key: str) -> str:
    prefix, program_id, kid, _ = key.split(".")
    return f"{prefix}.{program_id}.{kid}.{secrets.token_urlsafe(32)}"


BAD_HEADERS: dict[str, Any] = {
    "missing header": lambda p: {},
    "empty bearer": lambda p: {"Authorization": "Bearer "},
    "basic scheme": lambda p: {"Authorization": "Basic " + _b64(b"admin:admin")},
    "key without scheme": lambda p: {"Authorization": p.keys["admin"]},
    "garbage": lambda p: bearer("not-a-key"),
    "too few parts": lambda p: bearer(".".join(p.keys["admin"].split(".")[:3])),
    "too many parts": lambda p: bearer(p.keys["admin"] + ".extra"),
    "wrong prefix": lambda p: bearer("xx" + p.keys["admin"][2:]),
    "forged secret": lambda p: bearer(_forged_secret(p.keys["admin"])),
    "secret of another key": lambda p: bearer(
        p.keys["admin"].rsplit(".", 1)[0] + "." + p.keys["finance"].rsplit(".", 1)[1]
    ),
    "unknown key id": lambda p: bearer(f"lk.{p.id}.key_00000000000000000000000000.{secrets.token_urlsafe(32)}"),
    "unknown program": lambda p: bearer("lk.prg_nope." + ".".join(p.keys["admin"].split(".")[2:])),
    "control character": lambda p: bearer(p.keys["admin"][:10] + "\x00" + p.keys["admin"][10:]),
    "token of unknown program": lambda p: bearer(f"ct.prg_nope.{_b64(b'{}')}.{_b64(b'x' * 32)}"),
    "token with garbage claims": lambda p: bearer(f"ct.{p.id}.@@@.{_b64(b'x' * 32)}"),
    "token with empty signature": lambda p: bearer(f"ct.{p.id}.{_b64(b'{}')}."),
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
async def test_bad_credentials_get_401(client: httpx.AsyncClient, program: ProgramFixture, case: str) -> None:
    headers = BAD_HEADERS[case](program)
    for method, path in (("GET", "/v1/program"), ("GET", "/v1/me"), ("POST", "/v1/customers")):
        response = await client.request(method, path, headers=headers, json={"external_id": "x"})
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers.get("x-request-id"), "a refused request still carries its request id"


async def test_a_forged_customer_token_gets_401(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    ann = await enrol(client, program, "ann")
    bob = await enrol(client, program, "bob")
    token = await customer_token(client, program, ann["id"])
    prefix, program_id, claims, signature = token.split(".")
    assert (await client.get("/v1/me", headers=bearer(token))).status_code == 200

    forged_claims = base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)).replace(
        ann["id"].encode(), bob["id"].encode()
    )
    assert forged_claims != base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4))
    other_customer = f"{prefix}.{program_id}.{_b64(forged_claims)}.{signature}"
    far_future = json.dumps({"customer_id": ann["id"], "expires_at": 9_999_999_999}).encode()
    longer_life = f"{prefix}.{program_id}.{_b64(far_future)}.{signature}"
    new_signature = f"{prefix}.{program_id}.{claims}.{_b64(secrets.token_bytes(32))}"
    for forged in (other_customer, longer_life, new_signature):
        assert_problem(await client.get("/v1/me", headers=bearer(forged)), 401, "unauthorized")


async def test_an_expired_customer_token_gets_401(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    ann = await enrol(client, program, "ann")
    short = bearer(await customer_token(client, program, ann["id"], ttl_seconds=60))
    default = bearer(await customer_token(client, program, ann["id"]))

    clock.advance(timedelta(seconds=59))
    assert (await client.get("/v1/me", headers=short)).status_code == 200

    clock.advance(timedelta(seconds=2))
    body = assert_problem(await client.get("/v1/me", headers=short), 401, "unauthorized")
    assert "expired" in body["detail"]
    assert (await client.get("/v1/me", headers=default)).status_code == 200

    clock.advance(timedelta(seconds=900))
    assert_problem(await client.get("/v1/me", headers=default), 401, "unauthorized")


async def test_public_paths_need_no_credentials(client: httpx.AsyncClient, database: str) -> None:
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200
    assert (await client.get("/schema/openapi.json")).status_code == 200
