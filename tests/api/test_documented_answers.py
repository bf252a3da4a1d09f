"""Answers a developer reading docs/api.md relies on, checked against what the service serves."""

from __future__ import annotations

import httpx

from tests.api.orders_support import order_body
from tests.api.support import assert_problem
from tests.conftest import ProgramFixture


async def test_an_order_or_refund_id_reused_with_other_content_names_that_id(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str
) -> None:
    """Orders and refunds are idempotent by the shop's own ids, not by an `Idempotency-Key`
    header (none is sent): a reuse names the id the client chose, not a header or a digest."""
    till = program.auth("checkout")
    path = f"/v1/shops/{program.shop_id}/orders"
    assert (await client.post(path, json=order_body(ann), headers=till)).status_code == 201
    other = assert_problem(
        await client.post(path, json=order_body(ann, currency="USD"), headers=till), 409, "idempotency-key-reused"
    )
    assert other["field"] == "order_id", other
    assert "W-1" in other["detail"] and "\x1f" not in other["detail"], other

    refunds = f"{path}/W-1/refunds"
    assert (await client.post(refunds, json={"refund_id": "R-1", "amount": 100}, headers=till)).status_code == 201
    again = await client.post(refunds, json={"refund_id": "R-1", "amount": 200}, headers=till)
    reused = assert_problem(again, 409, "idempotency-key-reused")
    assert reused["field"] == "refund_id", reused
    assert "R-1" in reused["detail"] and "\x1f" not in reused["detail"], reused


async def test_a_statement_cursor_can_be_sent_back_as_it_came(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str
) -> None:
    """`cursor` set to the previous page's `next_cursor` reads the next page, also when the
    cursor is put in the URL as it is (curl, a string template): it needs no escaping."""
    admin = {**program.auth("admin")}
    for number in range(3):
        grant = {"customer_id": ann, "amount": 10 + number, "reason": "welcome"}
        headers = {**admin, "Idempotency-Key": f"grant-{number}"}
        assert (await client.post("/v1/ledger/adjustments", json=grant, headers=headers)).status_code == 201
    finance = program.auth("finance")
    accounts = (await client.get("/v1/finance/accounts", params={"customer_id": ann}, headers=finance)).json()
    account = next(item["account_id"] for item in accounts["items"] if item["kind"] == "available")
    query = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=2"
    statement = f"/v1/finance/accounts/{account}/statement?{query}"
    first = (await client.get(statement, headers=finance)).json()
    cursor = first["next_cursor"]
    assert cursor is not None and httpx.URL(f"/?cursor={cursor}").params["cursor"] == cursor, cursor
    second = await client.get(f"{statement}&cursor={cursor}", headers=finance)
    assert second.status_code == 200, second.text
    assert [line["amount"] for line in first["lines"] + second.json()["lines"]] == [10, 11, 12]
    assert second.json()["next_cursor"] is None


async def test_the_metrics_scrape_has_one_content_type_a_scraper_can_parse(client: httpx.AsyncClient) -> None:
    """Prometheus reads the exposition format from Content-Type; a parameter given twice
    (`charset=utf-8; charset=utf-8`) is not a valid media type."""
    scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    content_type = scraped.headers["content-type"]
    parameters = [part.split("=")[0].strip().lower() for part in content_type.split(";")[1:]]
    assert content_type.startswith("text/plain;") and len(parameters) == len(set(parameters)), content_type
