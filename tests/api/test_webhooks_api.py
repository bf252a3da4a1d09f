"""Webhook endpoints, their delivery log and re-delivery, the events feed and the catalogue over HTTP."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar

from service.domain.clock import ManualClock
from service.domain.events import EventType
from service.usecases.dispatch import DispatchConfig, dispatch_program, new_client
from tests.api.support import assert_names_field, assert_problem
from tests.conftest import ProgramFixture
from tests.webhook_receiver import answers, receiver

ENDPOINTS = "/v1/webhooks/endpoints"
CONFIG = DispatchConfig(timeout_s=0.5)


async def make_endpoint(client: httpx.AsyncClient, program: ProgramFixture, **body: Any) -> dict[str, Any]:
    body = {"url": "https://crm.example.com/hooks", "event_types": ["customer.enrolled"]} | body
    response = await client.post(ENDPOINTS, json=body, headers=program.auth("admin"))
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


async def enrol(client: httpx.AsyncClient, program: ProgramFixture, external_id: str) -> str:
    response = await client.post("/v1/customers", json={"external_id": external_id}, headers=program.auth("checkout"))
    assert response.status_code == 201, response.text
    customer_id: str = response.json()["id"]
    return customer_id


async def test_endpoints_are_created_listed_changed_and_deleted(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    admin = program.auth("admin")
    made = await make_endpoint(client, program, description="CRM", event_types=["points.earned", "purchase.first"])
    assert made["secret"].startswith("whsec_")
    assert made["id"].startswith("whe_")
    assert made["event_types"] == ["points.earned", "purchase.first"]
    assert made["enabled"] is True

    listed = await client.get(ENDPOINTS, headers=admin)
    assert [endpoint["id"] for endpoint in listed.json()] == [made["id"]]
    fetched = await client.get(f"{ENDPOINTS}/{made['id']}", headers=admin)
    assert fetched.status_code == 200
    assert "secret" not in fetched.json()  # shown once, at creation
    assert fetched.json()["disabled_reason"] is None

    patch = {"enabled": False, "event_types": ["customer.win_back_due"]}
    changed = await client.patch(f"{ENDPOINTS}/{made['id']}", json=patch, headers=admin)
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False and changed.json()["disabled_reason"] == "disabled by an admin"
    assert changed.json()["event_types"] == ["customer.win_back_due"]
    assert changed.json()["url"] == made["url"]
    enabled = await client.patch(f"{ENDPOINTS}/{made['id']}", json={"enabled": True}, headers=admin)
    assert enabled.json()["enabled"] is True and enabled.json()["disabled_reason"] is None

    deleted = await client.delete(f"{ENDPOINTS}/{made['id']}", headers=admin)
    assert deleted.status_code == 204
    assert_problem(await client.get(f"{ENDPOINTS}/{made['id']}", headers=admin), 404, "not-found")
    assert_problem(await client.delete(f"{ENDPOINTS}/{made['id']}", headers=admin), 404, "not-found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://crm.example.com/x", "event_types": ["customer.enrolled"]}, "url"),
        ({"url": "https://crm.example.com/x", "event_types": ["customer.born"]}, "event_types[0]"),
        ({"url": "https://crm.example.com/x", "event_types": []}, "event_types"),
        ({"url": "https://crm.example.com/x", "event_types": ["customer.enrolled"], "secret": "x"}, "secret"),
        ({"event_types": ["customer.enrolled"]}, "url"),
    ],
)
async def test_a_bad_endpoint_is_refused_naming_the_field(
    client: httpx.AsyncClient, program: ProgramFixture, body: dict[str, Any], field: str
) -> None:
    response = await client.post(ENDPOINTS, json=body, headers=program.auth("admin"))
    assert_names_field(assert_problem(response, 422, "invalid-input"), field)
    assert (await client.get(ENDPOINTS, headers=program.auth("admin"))).json() == []


async def test_only_admins_manage_endpoints_and_other_programs_see_nothing(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    made = await make_endpoint(client, program)
    assert_problem(await client.get(ENDPOINTS, headers=program.auth("checkout")), 403, "forbidden")
    body = {"url": "https://x.example/h", "event_types": ["customer.enrolled"]}
    assert_problem(await client.post(ENDPOINTS, json=body, headers=program.auth("finance")), 403, "forbidden")
    elsewhere = other_program.auth("admin")
    assert_problem(await client.get(f"{ENDPOINTS}/{made['id']}", headers=elsewhere), 404, "not-found")
    assert (await client.get(ENDPOINTS, headers=elsewhere)).json() == []


async def test_the_delivery_log_pages_and_a_delivery_can_be_sent_again(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    admin = program.auth("admin")
    async with receiver(answers(500)) as hooks, new_client(CONFIG) as http:
        made = await make_endpoint(client, program, url=hooks.url)
        for name in ("ann", "bob", "cas"):
            await enrol(client, program, name)
        await dispatch_program(program.id, clock, CONFIG, http)
        log = f"{ENDPOINTS}/{made['id']}/deliveries"

        first = await client.get(log, params={"limit": 2}, headers=admin)
        assert first.status_code == 200, first.text
        page = first.json()
        assert [item["event_seq"] for item in page["items"]] == [3, 2]
        assert page["next_cursor"] == "2"
        rest = (await client.get(log, params={"limit": 2, "cursor": page["next_cursor"]}, headers=admin)).json()
        assert [item["event_seq"] for item in rest["items"]] == [1] and rest["next_cursor"] is None
        failing = (await client.get(log, params={"status": "pending"}, headers=admin)).json()["items"]
        assert len(failing) == 1 and failing[0]["last_status_code"] == 500 and failing[0]["attempts"] == 1
        assert failing[0]["event_type"] == "customer.enrolled"
        delivered = (await client.get(log, params={"status": "delivered"}, headers=admin)).json()["items"]
        assert len(delivered) == 2

        again = await client.post(f"{log}/{delivered[0]['id']}/redeliver", headers=admin)
        assert again.status_code == 202, again.text
        assert again.json()["status"] == "pending"
        assert again.json()["next_attempt_at"] is not None
        clock.advance(timedelta(seconds=60))
        await dispatch_program(program.id, clock, CONFIG, http)
    assert len(hooks.requests) == 5  # 3, the retry of the failed one, the re-delivery
    assert hooks.ids.count(delivered[0]["event_id"]) == 2
    missing = await client.post(f"{log}/dlv_nothing/redeliver", headers=admin)
    assert assert_problem(missing, 404, "not-found")["field"] == "delivery_id"
    bad_cursor = await client.get(log, params={"cursor": "abc"}, headers=admin)
    assert_names_field(assert_problem(bad_cursor, 422, "invalid-input"), "cursor")


async def test_the_feed_pages_by_cursor_for_checkout_and_admin_keys(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    for name in ("ann", "bob", "cas", "dan", "eve"):
        await enrol(client, program, name)
    async with new_client(CONFIG) as http:
        await dispatch_program(program.id, clock, CONFIG, http)  # publishes the outbox
    till = program.auth("checkout")
    seen: list[int] = []
    cursor = None
    for _ in range(3):
        params: dict[str, Any] = {"limit": 2} | ({"after": cursor} if cursor else {})
        response = await client.get("/v1/events", params=params, headers=till)
        assert response.status_code == 200, response.text
        seen += [event["seq"] for event in response.json()["items"]]
        cursor = response.json()["next_cursor"]
    assert seen == [1, 2, 3, 4, 5] and cursor == "5"
    empty = (await client.get("/v1/events", params={"after": cursor}, headers=program.auth("admin"))).json()
    assert empty == {"items": [], "next_cursor": "5", "has_more": False}

    typed = await client.get("/v1/events", params={"types": ["customer.enrolled", "points.earned"]}, headers=till)
    event = typed.json()["items"][0]
    assert event["type"] == "customer.enrolled" and event["id"].startswith("evt_")
    assert set(event) == {"type", "id", "seq", "timestamp", "customer_id", "data"}
    assert event["data"]["external_id"] == "ann"

    assert_problem(await client.get("/v1/events", headers=program.auth("finance")), 403, "forbidden")
    bad_type = await client.get("/v1/events", params={"types": "customer.born"}, headers=till)
    assert_problem(bad_type, 422, "invalid-input")
    bad_cursor = await client.get("/v1/events", params={"after": "-1"}, headers=till)
    assert_names_field(assert_problem(bad_cursor, 422, "invalid-input"), "after")


async def test_the_catalogue_lists_every_type_with_its_payload_schema(
    client: httpx.AsyncClient, program: ProgramFixture, app: Litestar
) -> None:
    response = await client.get("/v1/events/catalogue", headers=program.auth("finance"))
    assert response.status_code == 200
    catalogue = {item["type"]: item for item in response.json()}
    assert set(catalogue) == {event_type.value for event_type in EventType}
    enrolled = catalogue["customer.enrolled"]
    assert enrolled["emitted"] is True and enrolled["flow"] == "welcome"
    assert "external_id" in str(enrolled["payload_schema"])
    assert catalogue["tier.upgraded"]["emitted"] is True

    schemas = app.openapi_schema.to_schema()["components"]["schemas"]
    for name in ("CustomerEnrolledEvent", "PurchaseFirstEvent", "PointsEarned", "WinBackDue"):
        assert name in schemas
    assert schemas["PurchaseRepeatEvent"]["properties"]["type"]["const"] == "purchase.repeat"
