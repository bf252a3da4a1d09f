"""Customers through the HTTP API."""

from __future__ import annotations

import json

import asyncpg
import httpx

from tests.api.support import assert_names_field, assert_problem, snapshot
from tests.conftest import ProgramFixture

MAX_ATTRIBUTES_BYTES = 16 * 1024  # docs/api.md


async def test_enrol_read_update_list(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    body = {"external_id": "shop-42", "email": "ann@example.com", "name": "Ann"}
    created = await client.post("/v1/customers", json=body, headers=program.auth("checkout"))
    assert created.status_code == 201, created.text
    customer = created.json()
    assert customer["external_id"] == "shop-42"
    assert customer["id"].startswith("cus_")

    again = await client.post("/v1/customers", json=body, headers=program.auth("checkout"))
    assert again.status_code == 200
    assert again.json()["id"] == customer["id"]

    different = await client.post("/v1/customers", json={**body, "name": "Bob"}, headers=program.auth("checkout"))
    assert different.status_code == 409
    assert different.headers["content-type"].startswith("application/problem+json")

    fetched = await client.get(f"/v1/customers/{customer['id']}", headers=program.auth("finance"))
    assert fetched.json() == customer

    patched = await client.patch(
        f"/v1/customers/{customer['id']}", json={"name": "Ann B."}, headers=program.auth("checkout")
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Ann B."
    assert patched.json()["email"] == "ann@example.com"


async def test_list_is_paginated_by_cursor(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    for index in range(5):
        response = await client.post("/v1/customers", json={"external_id": f"c{index}"}, headers=program.auth("admin"))
        assert response.status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/customers", params=params, headers=program.auth("admin"))).json()
        seen.extend(item["external_id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"c{index}" for index in range(5)]


async def test_customer_token_sees_only_its_customer(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    ann = (await client.post("/v1/customers", json={"external_id": "ann"}, headers=program.auth("checkout"))).json()
    bob = (await client.post("/v1/customers", json={"external_id": "bob"}, headers=program.auth("checkout"))).json()
    issued = await client.post(f"/v1/customers/{ann['id']}/tokens", headers=program.auth("checkout"))
    assert issued.status_code == 201, issued.text
    token = {"Authorization": f"Bearer {issued.json()['token']}"}

    me = await client.get("/v1/me", headers=token)
    assert me.status_code == 200
    assert me.json()["id"] == ann["id"]
    other = await client.get(f"/v1/customers/{bob['id']}", headers=token)
    assert other.status_code == 403


async def test_every_problem_type_resolves(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    refused = await client.post("/v1/customers", json={"external_id": 5}, headers=program.auth("checkout"))
    described = await client.get(refused.json()["type"])
    assert described.status_code == 200
    assert described.json()["status"] == refused.status_code
    catalogue = (await client.get("/problems")).json()
    assert {"insufficient-points", "idempotency-key-reused", "hold-not-open", "unauthorized"} <= {
        item["type"].rsplit("/", 1)[1] for item in catalogue
    }
    assert (await client.get("/problems/no-such-thing")).status_code == 404


def _attributes_of_size(size: int) -> dict[str, str]:
    """Attributes whose compact JSON is `size` bytes: {"note":"xx..."} (11 bytes of frame)."""
    attributes = {"note": "x" * (size - len('{"note":""}'))}
    assert len(json.dumps(attributes, separators=(",", ":")).encode()) == size
    return attributes


async def test_attributes_are_at_most_16_kib_of_json(
    client: httpx.AsyncClient, owner_connection: asyncpg.Connection, program: ProgramFixture
) -> None:
    """Every read answers a customer's attributes (a page of 200 customers at once), so they are
    bounded well under the body limit: 16384 bytes as compact JSON, on enrolment and update."""
    checkout = program.auth("checkout")
    at_limit = _attributes_of_size(MAX_ATTRIBUTES_BYTES)
    over = _attributes_of_size(MAX_ATTRIBUTES_BYTES + 1)
    enrolled = await client.post("/v1/customers", json={"external_id": "big", "attributes": at_limit}, headers=checkout)
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["attributes"] == at_limit
    path = f"/v1/customers/{enrolled.json()['id']}"

    before = await snapshot(owner_connection, program.id)
    refused = await client.post("/v1/customers", json={"external_id": "bigger", "attributes": over}, headers=checkout)
    assert_names_field(assert_problem(refused, 422, "invalid-input"), "attributes")
    patched = await client.patch(path, json={"attributes": over}, headers=checkout)
    assert_names_field(assert_problem(patched, 422, "invalid-input"), "attributes")
    assert await snapshot(owner_connection, program.id) == before

    smaller = {"note": "short"}
    assert (await client.patch(path, json={"attributes": smaller}, headers=checkout)).json()["attributes"] == smaller
    grown = await client.patch(path, json={"attributes": at_limit}, headers=checkout)
    assert grown.status_code == 200, grown.text
    assert grown.json()["attributes"] == at_limit


async def test_the_same_enrolment_again_is_200_whatever_numbers_its_attributes_hold(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    """jsonb keeps numbers as decimals and writes 1e23 back as 100000000000000000000000 (an
    integer, not the float sent): a retry must still be the same enrolment; true is not 1."""
    body = {"external_id": "numbers", "attributes": {"score": 1e23, "ratio": 5.0, "big": 1.5e300, "n": [1, 2.5]}}
    created = await client.post("/v1/customers", json=body, headers=program.auth("checkout"))
    assert created.status_code == 201, created.text
    again = await client.post("/v1/customers", json=body, headers=program.auth("checkout"))
    assert again.status_code == 200, again.text
    assert again.json() == created.json()
    flags = {"external_id": "flags", "attributes": {"vip": 1}}
    assert (await client.post("/v1/customers", json=flags, headers=program.auth("checkout"))).status_code == 201
    other = await client.post(
        "/v1/customers", json={**flags, "attributes": {"vip": True}}, headers=program.auth("checkout")
    )
    assert_problem(other, 409, "conflict")
