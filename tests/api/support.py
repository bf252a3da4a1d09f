"""Helpers shared by the HTTP tests: enrolment, problem+json checks and database snapshots."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from tests.conftest import ProgramFixture

PROBLEM_JSON = "application/problem+json"


async def enrol_customer(client: httpx.AsyncClient, program: ProgramFixture, external_id: str = "ann") -> str:
    """Enrol a customer with the program's checkout key; their id."""
    response = await client.post("/v1/customers", json={"external_id": external_id}, headers=program.auth("checkout"))
    assert response.status_code == 201, response.text
    customer_id: str = response.json()["id"]
    return customer_id


def assert_problem(response: httpx.Response, status: int, problem_type: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status; return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    assert body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if problem_type is not None:
        assert body["type"] == f"/problems/{problem_type}", body
    return body


def assert_client_error(response: httpx.Response) -> dict[str, Any]:
    """Any 4xx problem (never a 500, never a success)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return assert_problem(response, response.status_code)


def assert_names_field(body: dict[str, Any], field: str) -> None:
    """The problem names the offending field, in `field` and in its `errors` list."""
    assert body.get("field") == field, body
    assert any(error.get("field") == field for error in body["errors"]), body


async def snapshot(connection: asyncpg.Connection, program_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every customer, shop and API key row of a program, to compare before and after."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table in ("customers", "shops", "api_keys"):
        rows = await connection.fetch(
            f"SELECT * FROM {table} WHERE program_id = $1 ORDER BY id",
            program_id,
        )
        tables[table] = [dict(row) for row in rows]
    return tables
