"""Creating a shop, an API key or a webhook endpoint is idempotent by its `Idempotency-Key`:
concurrent sends of one request make one object, a refusal is remembered, and an API key's
secret is never kept, so a retried key create is a 409 naming the key made first."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.support import assert_names_field, assert_problem, snapshot
from tests.conftest import ProgramFixture

SENDS = 10
HOOKS = {"url": "https://crm.example.com/hooks", "event_types": ["customer.enrolled", "points.earned"]}


async def _send_together(
    client: httpx.AsyncClient, program: ProgramFixture, path: str, body: dict[str, Any], key: str
) -> list[httpx.Response]:
    headers = {**program.auth("admin"), "Idempotency-Key": key}
    return list(await asyncio.gather(*(client.post(path, json=body, headers=headers) for _ in range(SENDS))))


async def _count(connection: asyncpg.Connection, table: str, program_id: str) -> int:
    count: int = await connection.fetchval(f"SELECT count(*) FROM {table} WHERE program_id = $1", program_id)
    return count


async def test_concurrent_shop_creates_with_one_key_make_one_shop(
    client: httpx.AsyncClient, program: ProgramFixture, owner_connection: asyncpg.Connection
) -> None:
    before = await _count(owner_connection, "shops", program.id)
    responses = await _send_together(client, program, "/v1/shops", {"name": "Web shop"}, "shop-web")
    assert {response.status_code for response in responses} == {201}, [r.text for r in responses]
    assert len({response.text for response in responses}) == 1  # the same shop, id and created_at
    assert await _count(owner_connection, "shops", program.id) == before + 1
    listed = await client.get("/v1/shops", headers=program.auth("admin"))
    assert [shop["name"] for shop in listed.json()].count("Web shop") == 1


async def test_concurrent_endpoint_creates_with_one_key_make_one_endpoint_and_answer_its_secret(
    client: httpx.AsyncClient, program: ProgramFixture, owner_connection: asyncpg.Connection
) -> None:
    responses = await _send_together(client, program, "/v1/webhooks/endpoints", HOOKS, "hooks-crm")
    assert {response.status_code for response in responses} == {201}, [r.text for r in responses]
    assert len({response.text for response in responses}) == 1  # the same id and the same secret
    assert await _count(owner_connection, "webhook_endpoints", program.id) == 1
    stored = await owner_connection.fetchval("SELECT secret FROM webhook_endpoints WHERE program_id = $1", program.id)
    assert responses[0].json()["secret"] == stored


async def test_concurrent_key_creates_with_one_key_make_one_key_whose_secret_is_shown_once(
    client: httpx.AsyncClient, program: ProgramFixture, owner_connection: asyncpg.Connection
) -> None:
    before = await _count(owner_connection, "api_keys", program.id)
    body = {"name": "till 2", "scope": "checkout", "shop_id": program.shop_id}
    responses = await _send_together(client, program, "/v1/api-keys", body, "key-till-2")

    [made] = [response.json() for response in responses if response.status_code == 201]
    retries = [assert_problem(r, 409, "api-key-secret-shown-once") for r in responses if r.status_code != 201]
    assert len(retries) == SENDS - 1
    assert await _count(owner_connection, "api_keys", program.id) == before + 1
    record = {name: value for name, value in made.items() if name != "key"} | {"revoked_at": None}
    for problem in retries:
        assert problem["field"] == "Idempotency-Key"
        assert problem["api_key"] == record
        assert made["id"] in problem["detail"]
        assert made["key"] not in str(problem)
    # the secret is not kept at rest: only its hash, and the record without it under the key
    remembered = await owner_connection.fetchval(
        "SELECT response FROM idempotency_keys WHERE program_id = $1 AND key = $2", program.id, "key-till-2"
    )
    secret = made["key"].rsplit(".", 1)[1]
    assert made["id"].encode() in remembered and secret.encode() not in remembered
    assert (await client.get("/v1/program", headers={"Authorization": f"Bearer {made['key']}"})).status_code == 200


async def test_a_retried_key_create_names_the_key_as_it_is_now(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    """The client that lost the answer revokes the key it cannot use and makes another."""
    admin = program.auth("admin")
    body = {"name": "audit", "scope": "finance"}
    first = await client.post("/v1/api-keys", json=body, headers={**admin, "Idempotency-Key": "audit-1"})
    assert first.status_code == 201, first.text
    retry = await client.post("/v1/api-keys", json=body, headers={**admin, "Idempotency-Key": "audit-1"})
    problem = assert_problem(retry, 409, "api-key-secret-shown-once")
    key_id = problem["api_key"]["id"]
    assert key_id == first.json()["id"]
    described = await client.get(problem["type"])  # the type resolves to what it means
    assert described.status_code == 200 and described.json()["status"] == 409
    assert "revoke" in described.json()["description"]

    revoked = await client.delete(f"/v1/api-keys/{key_id}", headers=admin)
    again = await client.post("/v1/api-keys", json=body, headers={**admin, "Idempotency-Key": "audit-1"})
    assert (
        assert_problem(again, 409, "api-key-secret-shown-once")["api_key"]["revoked_at"] == revoked.json()["revoked_at"]
    )
    another = await client.post("/v1/api-keys", json=body, headers={**admin, "Idempotency-Key": "audit-2"})
    assert another.status_code == 201 and another.json()["id"] != key_id


async def test_a_refused_key_create_is_remembered_under_its_key(
    client: httpx.AsyncClient, program: ProgramFixture, owner_connection: asyncpg.Connection
) -> None:
    headers = {**program.auth("admin"), "Idempotency-Key": "till-elsewhere"}
    body = {"name": "till", "scope": "checkout", "shop_id": "shp_not_ours"}
    before = await snapshot(owner_connection, program.id)
    for _ in range(2):
        refused = await client.post("/v1/api-keys", json=body, headers=headers)
        assert_names_field(assert_problem(refused, 422, "invalid-input"), "shop_id")
    other = await client.post("/v1/api-keys", json={"name": "till", "scope": "checkout"}, headers=headers)
    assert assert_problem(other, 409, "idempotency-key-reused")["field"] == "Idempotency-Key"
    assert await snapshot(owner_connection, program.id) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/shops", {"name": "Web shop"}),
        ("/v1/api-keys", {"name": "x", "scope": "admin"}),
        ("/v1/webhooks/endpoints", HOOKS),
    ],
)
async def test_a_create_without_the_header_is_refused_and_makes_nothing(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    path: str,
    body: dict[str, Any],
) -> None:
    before = await snapshot(owner_connection, program.id)
    endpoints = await _count(owner_connection, "webhook_endpoints", program.id)
    response = await client.post(path, json=body, headers=program.auth("admin"))
    assert_names_field(assert_problem(response, 422, "invalid-input"), "Idempotency-Key")
    assert await snapshot(owner_connection, program.id) == before
    assert await _count(owner_connection, "webhook_endpoints", program.id) == endpoints
