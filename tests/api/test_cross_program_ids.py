"""Ids of another program behave as not found on every route that takes one: holds, entries,
finance accounts, balances, quotes, history, tiers, bulk grants and webhook deliveries."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from tests.api.support import assert_problem, snapshot
from tests.conftest import ProgramFixture


async def _enrol(client: httpx.AsyncClient, program: ProgramFixture, external_id: str) -> str:
    response = await client.post("/v1/customers", json={"external_id": external_id}, headers=program.auth("checkout"))
    assert response.status_code == 201, response.text
    customer_id: str = response.json()["id"]
    return customer_id


async def _grant(client: httpx.AsyncClient, program: ProgramFixture, customer_id: str, key: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": customer_id, "amount": 500, "reason": "welcome"},
        headers={**program.auth("admin"), "Idempotency-Key": key},
    )
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry


async def test_ids_of_another_program_are_not_found(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
) -> None:
    theirs = await _enrol(client, other_program, "theirs")
    entry = await _grant(client, other_program, theirs, "g-theirs")
    hold = await client.post(
        "/v1/holds",
        json={"customer_id": theirs, "amount": 100},
        headers={**other_program.auth("checkout"), "Idempotency-Key": "h-theirs"},
    )
    assert hold.status_code == 201, hold.text
    hold_id = hold.json()["id"]
    account_id = entry["postings"][0]["account_id"]
    before = await snapshot(owner_connection, other_program.id)

    admin, checkout, finance = program.auth("admin"), program.auth("checkout"), program.auth("finance")
    reads = [
        ("GET", f"/v1/holds/{hold_id}", checkout, None),
        ("GET", f"/v1/customers/{theirs}/balance", finance, None),
        ("GET", f"/v1/customers/{theirs}/history", finance, None),
        ("GET", f"/v1/finance/accounts/{account_id}/balance", finance, None),
        ("GET", f"/v1/finance/entries/{entry['id']}", finance, None),
        ("POST", f"/v1/holds/{hold_id}/capture", {**checkout, "Idempotency-Key": "c1"}, {}),
        ("POST", f"/v1/holds/{hold_id}/void", {**checkout, "Idempotency-Key": "v1"}, None),
        ("POST", f"/v1/ledger/entries/{entry['id']}/reversal", {**admin, "Idempotency-Key": "r1"}, {"reason": "x"}),
        (
            "POST",
            "/v1/ledger/adjustments",
            {**admin, "Idempotency-Key": "a1"},
            {"customer_id": theirs, "amount": -10, "reason": "x"},
        ),
    ]
    for method, path, headers, body in reads:
        response = await client.request(method, path, headers=headers, json=body)
        assert response.status_code == 404, (method, path, response.status_code, response.text)
    statement = await client.get(
        f"/v1/finance/accounts/{account_id}/statement",
        params={"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
        headers=finance,
    )
    assert statement.status_code == 404, statement.text
    bulk = await client.post(
        "/v1/bulk/awards",
        json={"items": [{"type": "grant", "key": "b1", "customer_id": theirs, "amount": 5, "reason": "x"}]},
        headers=admin,
    )
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["results"][0]["status"] == 404, bulk.text
    assert await snapshot(owner_connection, other_program.id) == before
    assert_problem(await client.get(f"/v1/customers/{theirs}", headers=admin), 404)
