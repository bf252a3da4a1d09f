"""Input a lax reading would take: a JSON value of another type than the schema's (Litestar
converts bodies with `strict=False`), and cursors no list returned that reach the database."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.api.support import assert_names_field, assert_problem, enrol_customer
from tests.conftest import ProgramFixture

ENDPOINTS = "/v1/webhooks/endpoints"


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount", "5"), ("amount", 5.0), ("amount", 1e3), ("expires_in_seconds", "60")],
)
async def test_a_number_sent_as_a_string_or_a_float_is_refused_not_coerced(
    client: httpx.AsyncClient, program: ProgramFixture, field: str, value: object
) -> None:
    ann = await enrol_customer(client, program)
    granted = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 100, "reason": "welcome"},
        headers=program.auth("admin") | {"Idempotency-Key": "grant"},
    )
    assert granted.status_code == 201, granted.text
    hold = {"customer_id": ann, "amount": 5, field: value}
    headers = program.auth("checkout") | {"Idempotency-Key": "typed"}
    problem = assert_problem(await client.post("/v1/holds", json=hold, headers=headers), 422, "invalid-input")
    assert_names_field(problem, field)
    balance = (await client.get(f"/v1/customers/{ann}/balance", headers=program.auth("checkout"))).json()
    assert (balance["available"], balance["held"]) == (100, 0)  # nothing held

    adjustment = {"customer_id": ann, "amount": "5", "reason": "typed"}
    headers = program.auth("admin") | {"Idempotency-Key": "typed-adjustment"}
    problem = assert_problem(await client.post("/v1/ledger/adjustments", json=adjustment, headers=headers), 422)
    assert_names_field(problem, "amount")
    balance = (await client.get(f"/v1/customers/{ann}/balance", headers=program.auth("checkout"))).json()
    assert balance["available"] == 100


async def _an_endpoint(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    """The path of a new webhook endpoint."""
    made = await client.post(
        ENDPOINTS,
        json={"url": "https://crm.example.com/hooks", "event_types": ["customer.enrolled"]},
        headers=admin | {"Idempotency-Key": "hooks"},
    )
    assert made.status_code == 201, made.text
    return f"{ENDPOINTS}/{made.json()['id']}"


@pytest.mark.parametrize("enabled", [0, "false", ""])
async def test_a_boolean_sent_as_a_number_or_a_string_is_refused_not_coerced(
    client: httpx.AsyncClient, program: ProgramFixture, enabled: object
) -> None:
    admin = program.auth("admin")
    endpoint = await _an_endpoint(client, admin)
    problem = assert_problem(await client.patch(endpoint, json={"enabled": enabled}, headers=admin), 422)
    assert_names_field(problem, "enabled")
    assert (await client.get(endpoint, headers=admin)).json()["enabled"] is True


async def test_a_seq_cursor_of_unicode_digits_is_422_naming_it(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    admin = program.auth("admin")
    deliveries = f"{await _an_endpoint(client, admin)}/deliveries"
    for digits in ("\u00b2", "\u0661", "\uff11"):  # superscript two, Arabic-Indic one, fullwidth one
        feed = await client.get("/v1/events", params={"after": digits}, headers=admin)
        assert_names_field(assert_problem(feed, 422, "invalid-input"), "after")
        log = await client.get(deliveries, params={"cursor": digits}, headers=admin)
        assert_names_field(assert_problem(log, 422, "invalid-input"), "cursor")


async def test_a_history_cursor_out_of_the_databases_range_is_422(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    ann = await enrol_customer(client, program)
    for raw in ("0001-01-01T00:00:00+05:00|1", "9999-12-31T23:59:59-05:00|1", "1066-10-14T09:00:00+00:00|1"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        response = await client.get(
            f"/v1/customers/{ann}/history", params={"cursor": cursor}, headers=program.auth("admin")
        )
        assert_names_field(assert_problem(response, 422, "invalid-input"), "cursor")


async def test_a_statement_cursor_the_database_cannot_take_is_422(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    finance = program.auth("finance")
    account = (await client.get("/v1/finance/accounts", headers=finance)).json()["items"][0]["account_id"]
    period = {"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}
    statement = f"/v1/finance/accounts/{account}/statement"
    for cursor in (
        "2026-03-01T00:00:00+00:00|99999999999999999999|1",  # past bigint
        "2026-03-01T00:00:00+00:00|1|99999",  # past smallint
        "0001-01-01T00:00:00+05:00|1|1",  # before year 1 in UTC
        "9999-12-31T23:59:59-05:00|1|1",  # after year 9999 in UTC
        "2026-03-01T00:00:00|1|1",  # no offset: the server's local time
    ):
        response = await client.get(statement, params={**period, "cursor": cursor}, headers=finance)
        assert_names_field(assert_problem(response, 422, "invalid-input"), "cursor")
    sound = await client.get(statement, params={**period, "cursor": "2026-03-01T00:00:00+00:00|1|1"}, headers=finance)
    assert sound.status_code == 200, sound.text


async def test_the_tier_history_of_another_programs_customer_is_404(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    stranger = await enrol_customer(client, other_program, "stranger")
    for customer in (stranger, "cus_nobody"):
        response = await client.get(f"/v1/customers/{customer}/tier/history", headers=program.auth("admin"))
        assert assert_problem(response, 404, "not-found")["field"] == "customer_id"
    own = await client.get(f"/v1/customers/{stranger}/tier/history", headers=other_program.auth("admin"))
    assert own.status_code == 200 and own.json() == []
