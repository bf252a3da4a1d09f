"""Redemption quotes over HTTP: the program's point value, the customer's available points."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.support import assert_client_error, assert_names_field, assert_problem, enrol_customer
from tests.conftest import ProgramFixture, make_program

QUOTE = "/v1/redemptions/quote"


@pytest.fixture
async def priced(database: str) -> ProgramFixture:
    """A program where a point is worth 5 cents."""
    return await make_program("Five cents a point", point_value_minor=5)


async def _post(client: httpx.AsyncClient, program: ProgramFixture, scope: str, path: str, key: str, body: Any) -> Any:
    response = await client.post(path, json=body, headers={**program.auth(scope), "Idempotency-Key": key})
    assert response.status_code == 201, response.text
    return response.json()


async def _quote(client: httpx.AsyncClient, program: ProgramFixture, body: Any, scope: str = "checkout") -> Any:
    response = await client.post(QUOTE, json=body, headers=program.auth(scope))
    assert response.status_code == 200, response.text
    return response.json()


async def test_quotes_by_point_value_and_available_points(
    client: httpx.AsyncClient, priced: ProgramFixture, owner_connection: asyncpg.Connection
) -> None:
    ann = await enrol_customer(client, priced, "ann")
    await _post(
        client, priced, "admin", "/v1/ledger/adjustments", "g", {"customer_id": ann, "amount": 730, "reason": "w"}
    )
    credit = {"customer_id": ann, "amount": 10_000, "reason": "w", "unit": "CREDIT"}
    await _post(client, priced, "admin", "/v1/ledger/adjustments", "c", credit)  # credit is not points
    await _post(
        client, priced, "checkout", "/v1/holds", "h", {"customer_id": ann, "amount": 100}
    )  # held: not available
    entries_before = await owner_connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", priced.id)

    assert await _quote(client, priced, {"customer_id": ann}) == {
        "customer_id": ann,
        "point_value_minor": 5,
        "available": 630,
        "points_for_discount": None,
        "affordable": None,
        "max_points": 630,
        "max_discount_minor": 3150,
    }
    basket = await _quote(client, priced, {"customer_id": ann, "discount_minor": 501, "order_total_minor": 1234})
    assert (basket["points_for_discount"], basket["affordable"]) == (101, True)  # 100.2 points, rounded up
    assert (basket["max_points"], basket["max_discount_minor"]) == (246, 1230)  # 246.8 points, rounded down
    whole = await _quote(client, priced, {"customer_id": ann, "discount_minor": 1234, "order_total_minor": 1234})
    assert (whole["points_for_discount"], whole["affordable"]) == (247, False)
    too_much = await _quote(client, priced, {"customer_id": ann, "discount_minor": 3151}, scope="admin")
    assert (too_much["points_for_discount"], too_much["affordable"], too_much["max_points"]) == (631, False, 630)
    exactly = await _quote(client, priced, {"customer_id": ann, "discount_minor": 3150})
    assert (exactly["points_for_discount"], exactly["affordable"]) == (630, True)
    free = await _quote(client, priced, {"customer_id": ann, "order_total_minor": 0})
    assert (free["max_points"], free["max_discount_minor"]) == (0, 0)

    # a quote changes nothing
    entries_after = await owner_connection.fetchval("SELECT count(*) FROM entries WHERE program_id = $1", priced.id)
    assert entries_after == entries_before
    balance = (await client.get(f"/v1/customers/{ann}/balance", headers=priced.auth("checkout"))).json()
    assert (balance["available"], balance["held"]) == (630, 100)


async def test_a_new_customer_can_redeem_nothing(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    bob = await enrol_customer(client, program, "bob")
    quote = await _quote(client, program, {"customer_id": bob, "discount_minor": 1, "order_total_minor": 999})
    assert quote == {
        "customer_id": bob,
        "point_value_minor": 1,
        "available": 0,
        "points_for_discount": 1,
        "affordable": False,
        "max_points": 0,
        "max_discount_minor": 0,
    }


async def test_bad_quotes_are_problems_naming_the_field(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    ann = await enrol_customer(client, program, "ann")
    stranger = await enrol_customer(client, other_program, "stranger")
    headers = program.auth("checkout")
    for body, field in (
        ({"customer_id": ann, "discount_minor": 0}, "discount_minor"),
        ({"customer_id": ann, "discount_minor": -5}, "discount_minor"),
        ({"customer_id": ann, "discount_minor": "ten"}, "discount_minor"),
        ({"customer_id": ann, "discount_minor": 1.5}, "discount_minor"),
        ({"customer_id": ann, "order_total_minor": -1}, "order_total_minor"),
        ({"customer_id": ann, "points": 10}, "points"),
        ({"discount_minor": 10}, "customer_id"),
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": "c" * 65}, "customer_id"),
    ):
        problem = assert_problem(await client.post(QUOTE, json=body, headers=headers), 422, "invalid-input")
        assert_names_field(problem, field)
    assert_client_error(
        await client.post(QUOTE, content=b"[1]", headers={**headers, "Content-Type": "application/json"})
    )
    for unknown in ("cus_nope", stranger):
        problem = assert_problem(await client.post(QUOTE, json={"customer_id": unknown}, headers=headers), 404)
        assert problem["field"] == "customer_id"


@pytest.mark.parametrize(("scope", "status"), [("checkout", 200), ("admin", 200), ("finance", 403), ("token", 403)])
async def test_who_may_ask_for_a_quote(
    client: httpx.AsyncClient, program: ProgramFixture, scope: str, status: int
) -> None:
    ann = await enrol_customer(client, program, "ann")
    headers = program.auth("checkout" if scope == "token" else scope)
    if scope == "token":
        token = await client.post(f"/v1/customers/{ann}/tokens", headers=headers)
        headers = {"Authorization": f"Bearer {token.json()['token']}"}
    response = await client.post(QUOTE, json={"customer_id": ann}, headers=headers)
    assert response.status_code == status, response.text
    assert (await client.post(QUOTE, json={"customer_id": ann})).status_code == 401
