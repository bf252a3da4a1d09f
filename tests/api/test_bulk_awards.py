"""Bulk awards over HTTP: orders and grants in one request, each answered on its own."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from service.usecases import ledger
from tests.api.orders_support import order_body
from tests.api.support import assert_problem, enrol_customer
from tests.conftest import ProgramFixture


def order_item(program: ProgramFixture, customer_id: str, order_id: str, **changes: Any) -> dict[str, Any]:
    return {"type": "order", "shop_id": program.shop_id, **order_body(customer_id, order_id), **changes}


async def test_each_item_succeeds_or_is_refused_on_its_own_and_retries_are_harmless(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    owner_connection: asyncpg.Connection,
) -> None:
    items = [
        order_item(program, ann, "I-1"),
        {"type": "grant", "key": "goodwill-1", "customer_id": ann, "amount": 100, "reason": "late delivery"},
        order_item(program, "cus_unknown", "I-2"),
        order_item(program, ann, "I-3", currency="USD"),
        {"type": "grant", "key": "goodwill-2", "customer_id": ann, "amount": -5, "reason": "correction"},
        order_item(program, ann, "I-1"),  # the same order twice: one award, the same answer
    ]
    admin = program.auth("admin")
    first = await client.post("/v1/bulk/awards", json={"items": items}, headers=admin)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [r["status"] for r in body["results"]] == [201, 201, 404, 422, 201, 201]
    assert (body["succeeded"], body["refused"]) == (4, 2)
    results = body["results"]
    assert results[0]["order"]["points"] == 18 and results[0]["order"] == results[5]["order"]
    assert results[1]["entry"]["kind"] == "adjustment.grant"
    assert results[2]["problem"]["field"] == "customer_id"
    assert results[3]["problem"]["type"] == "/problems/invalid-input"
    assert results[3]["problem"]["field"] == "currency"

    retry = await client.post("/v1/bulk/awards", json={"items": items}, headers=admin)
    assert retry.json() == body
    entries = await owner_connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", program.id)
    assert entries == 3  # one award, one grant, one deduction
    balance = await client.get(f"/v1/customers/{ann}/balance", headers=admin)
    assert (balance.json()["pending"], balance.json()["available"]) == (18, 95)


async def test_a_malformed_item_refuses_the_request_and_names_it(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    owner_connection: asyncpg.Connection,
) -> None:
    items = [order_item(program, ann, "J-1"), {"type": "gift", "customer_id": ann}]
    response = await client.post("/v1/bulk/awards", json={"items": items}, headers=program.auth("admin"))
    body = assert_problem(response, 422, "invalid-input")
    assert body["field"].startswith("items[1]"), body
    assert await owner_connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", program.id) == 0
    denied = await client.post("/v1/bulk/awards", json={"items": items[:1]}, headers=program.auth("checkout"))
    assert_problem(denied, 403)
    too_many = await client.post("/v1/bulk/awards", json={"items": items[:1] * 1001}, headers=program.auth("admin"))
    assert assert_problem(too_many, 422)["field"] == "items"


async def test_a_lost_database_mid_way_is_a_503_to_retry_not_a_500(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    ann: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Items run in a task group, which wraps what fails in an ExceptionGroup: the request
    must still answer what the failure is ('503 ... no connection came free in time; retry
    after Retry-After seconds'), as every other route does."""

    async def no_connection(*args: object, **kwargs: object) -> None:
        raise TimeoutError("no connection came free in time")  # as the pool reports it

    monkeypatch.setattr(ledger, "adjust", no_connection)
    items = [{"type": "grant", "key": "goodwill-503", "customer_id": ann, "amount": 100, "reason": "late delivery"}]
    response = await client.post("/v1/bulk/awards", json={"items": items}, headers=program.auth("admin"))
    assert_problem(response, 503, "unavailable")
    assert response.headers["Retry-After"] == "1"


async def test_items_sharing_a_key_are_applied_in_the_order_given_whatever_their_customers(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str
) -> None:
    """Items of different customers run concurrently, but two with one grant key (or one
    order id) are one key's first use and its reuse: the first in the request must win, not
    whichever task gets there first."""
    bob = await enrol_customer(client, program, "bob")
    items = [
        {"type": "grant", "key": "welcome", "customer_id": ann, "amount": 10, "reason": "welcome"},
        {"type": "grant", "key": "welcome", "customer_id": bob, "amount": 10, "reason": "welcome"},
        {"type": "grant", "key": "spend", "customer_id": ann, "amount": -10, "reason": "spent"},
        order_item(program, ann, "K-1"),
        order_item(program, bob, "K-1"),
    ]
    response = await client.post("/v1/bulk/awards", json={"items": items}, headers=program.auth("admin"))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 409, 201, 201, 409], results
    assert results[1]["problem"]["type"] == "/problems/idempotency-key-reused"
    assert results[1]["problem"]["field"] == "key"  # the item's, not a header the request did not send
    assert results[4]["problem"]["field"] == "order_id"
    assert results[3]["order"]["customer_id"] == ann
