"""Customer tokens name the API key that issued them, and end with it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx

from service.domain.access import sign_customer_token
from service.domain.clock import ManualClock
from tests.api.support import assert_problem
from tests.conftest import ProgramFixture


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def key_id(key: str) -> str:
    """The id part of `lk.<program>.<key id>.<secret>`."""
    return key.split(".")[2]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(_unb64(token.split(".")[2]))
    return claims


def with_claims(token: str, claims: dict[str, Any]) -> str:
    """The token with other claims and its own (now wrong) signature."""
    prefix, program_id, _, signature = token.split(".")
    return f"{prefix}.{program_id}.{_b64(json.dumps(claims).encode())}.{signature}"


async def enrol(client: httpx.AsyncClient, program: ProgramFixture, external_id: str) -> str:
    response = await client.post("/v1/customers", json={"external_id": external_id}, headers=program.auth("checkout"))
    assert response.status_code == 201, response.text
    customer_id: str = response.json()["id"]
    return customer_id


async def new_key(client: httpx.AsyncClient, program: ProgramFixture, name: str, scope: str = "checkout") -> str:
    response = await client.post(
        "/v1/api-keys",
        json={"name": name, "scope": scope},
        headers={**program.auth("admin"), "Idempotency-Key": f"key-{name}"},
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


async def token_from(client: httpx.AsyncClient, key: str, customer_id: str) -> str:
    response = await client.post(f"/v1/customers/{customer_id}/tokens", headers=bearer(key))
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def revoke(client: httpx.AsyncClient, program: ProgramFixture, key: str) -> None:
    response = await client.delete(f"/v1/api-keys/{key_id(key)}", headers=program.auth("admin"))
    assert response.status_code == 200, response.text


async def token_secret(owner_connection: asyncpg.Connection, program_id: str) -> bytes:
    secret: bytes = await owner_connection.fetchval("SELECT token_secret FROM programs WHERE id = $1", program_id)
    return secret


def legacy_token(program_id: str, customer_id: str, expires_at: datetime, secret: bytes) -> str:
    """A token as issued before tokens named their key: `{"customer_id", "expires_at"}` only."""
    claims = json.dumps({"customer_id": customer_id, "expires_at": int(expires_at.timestamp())}).encode()
    body = f"ct.{program_id}.{_b64(claims)}"
    return f"{body}.{_b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())}"


def assert_refused(response: httpx.Response) -> dict[str, Any]:
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    return body


async def test_a_token_names_the_key_that_issued_it(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    ann = await enrol(client, program, "ann")
    token = await token_from(client, program.keys["checkout"], ann)
    assert claims_of(token)["key_id"] == key_id(program.keys["checkout"])
    assert claims_of(token)["customer_id"] == ann


async def test_revoking_a_key_ends_the_tokens_it_issued_and_no_others(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    ann = await enrol(client, program, "ann")
    leaked, other = program.keys["checkout"], await new_key(client, program, "other till")
    from_leaked = bearer(await token_from(client, leaked, ann))
    from_other = bearer(await token_from(client, other, ann))
    for token in (from_leaked, from_other):
        assert (await client.get("/v1/me", headers=token)).status_code == 200

    await revoke(client, program, leaked)

    for method, path in (("GET", "/v1/me"), ("GET", "/v1/me/balance"), ("POST", "/v1/me/referral")):
        body = assert_refused(await client.request(method, path, headers=from_leaked, json={"code": "X"}))
        assert "revoked" in body["detail"]
    still = await client.get("/v1/me", headers=from_other)
    assert still.status_code == 200, still.text
    assert still.json()["id"] == ann


async def test_a_revocation_made_elsewhere_ends_the_tokens_at_once(
    client: httpx.AsyncClient, program: ProgramFixture, owner_connection: asyncpg.Connection
) -> None:
    """Another process revoking the key (here: straight in the database) is seen on the next
    request: nothing about the key is kept in this process."""
    ann = await enrol(client, program, "ann")
    token = bearer(await token_from(client, program.keys["checkout"], ann))
    assert (await client.get("/v1/me", headers=token)).status_code == 200

    await owner_connection.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE program_id = $1 AND id = $2",
        program.id,
        key_id(program.keys["checkout"]),
    )
    assert_refused(await client.get("/v1/me", headers=token))


async def test_a_tampered_claim_is_refused(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    ann = await enrol(client, program, "ann")
    leaked, other = program.keys["checkout"], await new_key(client, program, "other till")
    token = await token_from(client, leaked, ann)
    claims = claims_of(token)
    assert claims["key_id"] == key_id(leaked)
    await revoke(client, program, leaked)

    tampered = [
        {**claims, "key_id": key_id(other)},  # blame a key still in force
        {key: value for key, value in claims.items() if key != "key_id"},  # pass as an older token
        {**claims, "key_id": None},
    ]
    for forged in tampered:
        body = assert_refused(await client.get("/v1/me", headers=bearer(with_claims(token, forged))))
        assert "signature" in body["detail"]


async def test_a_token_signed_for_a_key_or_customer_that_does_not_permit_it_is_refused(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    clock: ManualClock,
) -> None:
    """Even with a valid signature (the program's own secret), a token is only as good as its
    key: a key that is not a checkout key of this program, or a customer the program lacks."""
    ann = await enrol(client, program, "ann")
    secret = await token_secret(owner_connection, program.id)
    expires_at = clock.now() + timedelta(minutes=15)

    def signed(customer_id: str, issuer: str) -> dict[str, str]:
        return bearer(sign_customer_token(program.id, customer_id, expires_at, secret, key_id=issuer))

    assert (await client.get("/v1/me", headers=signed(ann, key_id(program.keys["checkout"])))).status_code == 200
    for issuer in (
        key_id(program.keys["admin"]),  # admin and finance keys issue no tokens
        key_id(program.keys["finance"]),
        key_id(other_program.keys["checkout"]),  # a key of another program
        "key_00000000000000000000000000",
    ):
        assert_refused(await client.get("/v1/me", headers=signed(ann, issuer)))
    assert_refused(
        await client.get("/v1/me", headers=signed("cus_00000000000000000000000000", key_id(program.keys["checkout"])))
    )


async def test_an_older_token_without_its_key_works_until_a_checkout_key_is_revoked(
    client: httpx.AsyncClient, program: ProgramFixture, owner_connection: asyncpg.Connection, clock: ManualClock
) -> None:
    """A token issued before tokens named their key (by a process of the previous version,
    during a rolling deploy) cannot be tied to its key: it is refused once any checkout key of
    its program is revoked that might have issued it, and works otherwise."""
    ann = await enrol(client, program, "ann")
    secret = await token_secret(owner_connection, program.id)
    older = bearer(legacy_token(program.id, ann, clock.now() + timedelta(minutes=15), secret))
    assert (await client.get("/v1/me", headers=older)).status_code == 200

    await revoke(client, program, await new_key(client, program, "finance desk", scope="finance"))
    assert (await client.get("/v1/me", headers=older)).status_code == 200, "a finance key issues no tokens"

    await revoke(client, program, program.keys["checkout"])
    body = assert_refused(await client.get("/v1/me", headers=older))
    assert "revoked" in body["detail"]

    # a day later: an older token that expires within a day of the revocation (plus a margin
    # for clocks) may have been issued before it, one that expires later cannot have been
    clock.advance(timedelta(days=1))
    may_be_from_before = bearer(legacy_token(program.id, ann, clock.now() + timedelta(minutes=1), secret))
    assert_refused(await client.get("/v1/me", headers=may_be_from_before))
    issued_since = bearer(legacy_token(program.id, ann, clock.now() + timedelta(minutes=15), secret))
    assert (await client.get("/v1/me", headers=issued_since)).status_code == 200
