"""Webhook endpoints, secret rotation, their delivery log and re-delivery, the events feed and
the catalogue over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar import Litestar

from service.app import create_app
from service.config import Settings
from service.domain.clock import ManualClock
from service.domain.events import EventType
from service.domain.webhooks import verify
from service.usecases.dispatch import DispatchConfig, dispatch_program, new_client
from tests.api.support import assert_names_field, assert_problem, enrol_customer
from tests.conftest import ProgramFixture
from tests.webhook_receiver import LOOPBACK_ALLOWED, answers, receiver

ENDPOINTS = "/v1/webhooks/endpoints"
CONFIG = DispatchConfig(timeout_s=0.5, destinations=LOOPBACK_ALLOWED)
KEYS = itertools.count()


def keyed(headers: dict[str, str]) -> dict[str, str]:
    """The headers with a new Idempotency-Key: each create here is a new request."""
    return {**headers, "Idempotency-Key": f"endpoint-{next(KEYS)}"}


def app_with(settings: Settings, database: str, clock: ManualClock, **webhook_settings: bool) -> Litestar:
    """The app with these webhook destination settings (whatever the environment says)."""
    changes = {"webhook_allow_private": False, "webhook_https_only": False} | webhook_settings
    return create_app(msgspec.structs.replace(settings, **changes), database, clock)


@pytest.fixture(scope="module")
def loopback_app(settings: Settings, database: str, clock: ManualClock) -> Litestar:
    """LOYALTY_WEBHOOK_ALLOW_PRIVATE on: the test receivers listen on loopback."""
    return app_with(settings, database, clock, webhook_allow_private=True)


@pytest.fixture(scope="module")
def public_only_app(settings: Settings, database: str, clock: ManualClock) -> Litestar:
    """LOYALTY_WEBHOOK_ALLOW_PRIVATE off, as in production."""
    return app_with(settings, database, clock, webhook_allow_private=False)


@pytest.fixture
async def loopback_client(loopback_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=loopback_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
async def public_only_client(public_only_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=public_only_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def make_endpoint(client: httpx.AsyncClient, program: ProgramFixture, **body: Any) -> dict[str, Any]:
    body = {"url": "https://crm.example.com/hooks", "event_types": ["customer.enrolled"]} | body
    response = await client.post(ENDPOINTS, json=body, headers=keyed(program.auth("admin")))
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


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
    response = await client.post(ENDPOINTS, json=body, headers=keyed(program.auth("admin")))
    assert_names_field(assert_problem(response, 422, "invalid-input"), field)
    assert (await client.get(ENDPOINTS, headers=program.auth("admin"))).json() == []


PRIVATE_OR_WORSE = [
    "http://127.0.0.1:8080/hooks",
    "http://127.9.9.9/hooks",
    "http://10.0.0.5/hooks",
    "http://172.16.0.1/hooks",
    "http://192.168.1.10/hooks",
    "http://100.64.0.1/hooks",  # shared (CGNAT) space
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
    "http://0.0.0.0:8000/",
    "http://[::1]:8080/hooks",
    "http://[fd00::1]/hooks",
    "http://[fe80::1]/hooks",
    "http://[::ffff:127.0.0.1]/hooks",  # IPv4-mapped loopback
    "http://[::ffff:a9fe:a9fe]/hooks",  # IPv4-mapped metadata service
    "http://[64:ff9b::a00:5]/hooks",  # NAT64 of 10.0.0.5
    "http://[2002:a00:5::1]/hooks",  # 6to4 of 10.0.0.5
    "https://224.0.0.1/hooks",
    "https://192.0.2.10/hooks",  # documentation
]
SPELLED_OTHERWISE = [
    "http://2130706433/hooks",  # 127.0.0.1 as one number
    "http://127.1/hooks",
    "http://0x7f.0.0.1/hooks",
    "http://0177.0.0.1/hooks",
    "http://user:secret@crm.example.com/hooks",
    "https://crm.example.com@127.0.0.1/hooks",
    "https://crm.example.com\\@127.0.0.1/hooks",
    "https://crm.example.com:0/hooks",
]


@pytest.mark.parametrize("url", PRIVATE_OR_WORSE + SPELLED_OTHERWISE)
async def test_an_endpoint_into_private_networks_is_refused_and_nothing_is_stored(
    public_only_client: httpx.AsyncClient, program: ProgramFixture, url: str
) -> None:
    body = {"url": url, "event_types": ["customer.enrolled"]}
    response = await public_only_client.post(ENDPOINTS, json=body, headers=keyed(program.auth("admin")))
    problem = assert_problem(response, 422, "invalid-input")
    assert_names_field(problem, "url")
    assert (await public_only_client.get(ENDPOINTS, headers=program.auth("admin"))).json() == []


async def test_the_refusal_names_the_address(public_only_client: httpx.AsyncClient, program: ProgramFixture) -> None:
    body = {"url": "http://169.254.169.254/latest/meta-data/", "event_types": ["customer.enrolled"]}
    response = await public_only_client.post(ENDPOINTS, json=body, headers=keyed(program.auth("admin")))
    assert response.json()["detail"] == "destination address 169.254.169.254 is not allowed"


async def test_changing_the_url_to_a_private_address_is_refused_and_changes_nothing(
    public_only_client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    admin = program.auth("admin")
    made = await make_endpoint(public_only_client, program)
    for url in ("http://10.0.0.5/hooks", "http://[::1]/hooks", "http://u:p@crm.example.com/hooks"):
        changed = await public_only_client.patch(
            f"{ENDPOINTS}/{made['id']}", json={"url": url, "enabled": False}, headers=admin
        )
        assert_names_field(assert_problem(changed, 422, "invalid-input"), "url")
    kept = (await public_only_client.get(f"{ENDPOINTS}/{made['id']}", headers=admin)).json()
    assert (kept["url"], kept["enabled"]) == (made["url"], True)


async def test_allowing_private_destinations_still_refuses_link_local_and_metadata(
    loopback_client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    admin = program.auth("admin")
    for url in ("http://127.0.0.1:8080/hooks", "http://10.0.0.5/hooks", "http://[::1]/hooks", "http://[fd12::1]/"):
        await make_endpoint(loopback_client, program, url=url)
    for url in ("http://169.254.169.254/", "http://[fe80::1]/", "http://0.0.0.0/", "http://100.100.100.200/"):
        body = {"url": url, "event_types": ["customer.enrolled"]}
        response = await loopback_client.post(ENDPOINTS, json=body, headers=keyed(admin))
        assert_names_field(assert_problem(response, 422, "invalid-input"), "url")
    assert len((await loopback_client.get(ENDPOINTS, headers=admin)).json()) == 4


async def test_https_only_refuses_http_urls(
    settings: Settings, database: str, clock: ManualClock, program: ProgramFixture
) -> None:
    strict = app_with(settings, database, clock, webhook_https_only=True)
    transport = httpx.ASGITransport(app=strict)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        body = {"url": "http://crm.example.com/hooks", "event_types": ["customer.enrolled"]}
        refused = assert_problem(await client.post(ENDPOINTS, json=body, headers=keyed(program.auth("admin"))), 422)
        assert refused["field"] == "url" and "https://" in refused["detail"]
        await make_endpoint(client, program, url="https://crm.example.com/hooks")


async def test_a_host_name_of_loopback_is_accepted_but_never_sent_to(
    public_only_client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    admin = program.auth("admin")
    public_only = DispatchConfig(timeout_s=0.5)  # LOYALTY_WEBHOOK_ALLOW_PRIVATE off
    async with receiver() as hooks, new_client(public_only) as http:
        # host names are not resolved at registration: their answers may change by send time
        made = await make_endpoint(public_only_client, program, url=f"http://localhost:{hooks.port}/hooks")
        await enrol_customer(public_only_client, program, "ann")
        report = await dispatch_program(program.id, clock, public_only, http)
        assert (report.delivered, report.failed_attempts) == (0, 1)
        log = await public_only_client.get(f"{ENDPOINTS}/{made['id']}/deliveries", headers=admin)
    [delivery] = log.json()["items"]
    assert delivery["status"] == "pending" and delivery["attempts"] == 1  # a failed attempt, retried later
    assert delivery["last_status_code"] is None
    assert re.fullmatch(r"destination address (127\.0\.0\.1|::1) is not allowed", delivery["last_error"])
    assert hooks.requests == []


async def test_only_admins_manage_endpoints_and_other_programs_see_nothing(
    client: httpx.AsyncClient, program: ProgramFixture, other_program: ProgramFixture
) -> None:
    made = await make_endpoint(client, program)
    assert_problem(await client.get(ENDPOINTS, headers=program.auth("checkout")), 403, "forbidden")
    body = {"url": "https://x.example/h", "event_types": ["customer.enrolled"]}
    assert_problem(await client.post(ENDPOINTS, json=body, headers=keyed(program.auth("finance"))), 403, "forbidden")
    elsewhere = other_program.auth("admin")
    assert_problem(await client.get(f"{ENDPOINTS}/{made['id']}", headers=elsewhere), 404, "not-found")
    assert (await client.get(ENDPOINTS, headers=elsewhere)).json() == []


async def test_the_delivery_log_pages_and_a_delivery_can_be_sent_again(
    loopback_client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    client = loopback_client
    admin = program.auth("admin")
    async with receiver(answers(500)) as hooks, new_client(CONFIG) as http:
        made = await make_endpoint(client, program, url=hooks.url)
        for name in ("ann", "bob", "cas"):
            await enrol_customer(client, program, name)
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


async def rotate(
    client: httpx.AsyncClient, program: ProgramFixture, endpoint_id: str, key: str, **body: Any
) -> httpx.Response:
    headers = program.auth("admin") | {"Idempotency-Key": key}
    return await client.post(f"{ENDPOINTS}/{endpoint_id}/rotate-secret", json=body, headers=headers)


async def secrets_of(connection: asyncpg.Connection, endpoint_id: str) -> tuple[str, str | None, Any]:
    row = await connection.fetchrow(
        "SELECT secret, previous_secret, previous_secret_until FROM webhook_endpoints WHERE id = $1", endpoint_id
    )
    assert row is not None
    return row["secret"], row["previous_secret"], row["previous_secret_until"]


async def deliver_one(client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock, external_id: str) -> None:
    """Enrol a customer and dispatch: one message to the program's endpoint."""
    await enrol_customer(client, program, external_id)
    async with new_client(CONFIG) as http:
        report = await dispatch_program(program.id, clock, CONFIG, http)
    assert report.delivered == 1, report


async def test_a_rotated_secret_is_shown_once_and_both_secrets_sign_during_the_grace_period(
    loopback_client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    client, admin = loopback_client, program.auth("admin")
    async with receiver() as hooks:
        made = await make_endpoint(client, program, url=hooks.url)
        old = made["secret"]
        rotated = await rotate(client, program, made["id"], "rotate-1", previous_valid_for_s=3600)
        assert rotated.status_code == 200, rotated.text
        answer = rotated.json()
        new = answer["secret"]
        assert new.startswith("whsec_") and new != old
        assert answer["id"] == made["id"]
        assert answer["previous_secret_expires_at"] is not None
        assert clock.now() + timedelta(hours=1) == datetime.fromisoformat(answer["previous_secret_expires_at"])
        for shown in (
            (await client.get(f"{ENDPOINTS}/{made['id']}", headers=admin)).json(),
            *(await client.get(ENDPOINTS, headers=admin)).json(),
        ):
            assert "secret" not in shown and "previous_secret" not in shown
            assert old not in str(shown) and new not in str(shown)

        await deliver_one(client, program, clock, "ann")
        [during] = hooks.requests
        now = int(clock.now().timestamp())
        assert len(during.headers["webhook-signature"].split()) == 2
        assert verify(new, during.headers, during.body, now) and verify(old, during.headers, during.body, now)
        assert during.headers["webhook-signature"].split()[0].startswith("v1,")

        clock.advance(timedelta(hours=1))  # the grace period is over
        await deliver_one(client, program, clock, "bob")
        after = hooks.requests[1]
        now = int(clock.now().timestamp())
        assert len(after.headers["webhook-signature"].split()) == 1
        assert verify(new, after.headers, after.body, now) and not verify(old, after.headers, after.body, now)


async def test_a_rotation_with_no_grace_period_signs_with_the_new_secret_only(
    loopback_client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    client = loopback_client
    async with receiver() as hooks:
        made = await make_endpoint(client, program, url=hooks.url)
        rotated = await rotate(client, program, made["id"], "rotate-now", previous_valid_for_s=0)
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["previous_secret_expires_at"] is None
        await deliver_one(client, program, clock, "ann")
    [request] = hooks.requests
    now = int(clock.now().timestamp())
    assert verify(rotated.json()["secret"], request.headers, request.body, now)
    assert not verify(made["secret"], request.headers, request.body, now)


async def test_rotating_again_in_the_grace_period_keeps_only_the_secret_it_replaces(
    loopback_client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    client = loopback_client
    async with receiver() as hooks:
        made = await make_endpoint(client, program, url=hooks.url)
        first = (await rotate(client, program, made["id"], "rotate-a")).json()
        assert datetime.fromisoformat(first["previous_secret_expires_at"]) == clock.now() + timedelta(hours=24)
        second = (await rotate(client, program, made["id"], "rotate-b")).json()
        await deliver_one(client, program, clock, "ann")
    [request] = hooks.requests
    now = int(clock.now().timestamp())
    assert verify(second["secret"], request.headers, request.body, now)
    assert verify(first["secret"], request.headers, request.body, now)
    assert not verify(made["secret"], request.headers, request.body, now)
    assert len(request.headers["webhook-signature"].split()) == 2


async def test_a_retried_rotation_answers_the_same_and_rotates_once(
    client: httpx.AsyncClient, program: ProgramFixture, owner_connection: asyncpg.Connection
) -> None:
    made = await make_endpoint(client, program)
    first = await rotate(client, program, made["id"], "rotate-once", previous_valid_for_s=600)
    again = await rotate(client, program, made["id"], "rotate-once", previous_valid_for_s=600)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    before = await secrets_of(owner_connection, made["id"])
    assert before[:2] == (first.json()["secret"], made["secret"])  # rotated once: the original is the previous
    other = await rotate(client, program, made["id"], "rotate-once", previous_valid_for_s=0)
    assert assert_problem(other, 409, "idempotency-key-reused")["field"] == "Idempotency-Key"
    assert await secrets_of(owner_connection, made["id"]) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"previous_valid_for_s": -1}, "previous_valid_for_s"),
        ({"previous_valid_for_s": 604_801}, "previous_valid_for_s"),
        ({"previous_valid_for_s": "1h"}, "previous_valid_for_s"),
        ({"secret": "whsec_Zm9v"}, "secret"),
    ],
)
async def test_a_bad_rotation_is_refused_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    body: dict[str, Any],
    field: str,
) -> None:
    made = await make_endpoint(client, program)
    response = await rotate(client, program, made["id"], f"bad-{field}", **body)
    assert_names_field(assert_problem(response, 422, "invalid-input"), field)
    assert await secrets_of(owner_connection, made["id"]) == (made["secret"], None, None)


async def test_rotating_an_unknown_or_foreign_endpoint_is_not_found_and_changes_nothing(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
) -> None:
    made = await make_endpoint(client, program)
    missing = await rotate(client, program, "whe_nothing", "rotate-missing")
    assert assert_problem(missing, 404, "not-found")["field"] == "endpoint_id"
    foreign = await rotate(client, other_program, made["id"], "rotate-foreign")
    assert_problem(foreign, 404, "not-found")
    no_key = await client.post(f"{ENDPOINTS}/{made['id']}/rotate-secret", json={}, headers=program.auth("admin"))
    assert_names_field(assert_problem(no_key, 422, "invalid-input"), "Idempotency-Key")
    checkout = program.auth("checkout") | {"Idempotency-Key": "rotate-till"}
    till = await client.post(f"{ENDPOINTS}/{made['id']}/rotate-secret", json={}, headers=checkout)
    assert_problem(till, 403, "forbidden")
    assert await secrets_of(owner_connection, made["id"]) == (made["secret"], None, None)


async def test_the_feed_pages_by_cursor_for_checkout_and_admin_keys(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    for name in ("ann", "bob", "cas", "dan", "eve"):
        await enrol_customer(client, program, name)
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


async def test_an_adjustment_granting_points_is_in_the_feed_as_points_earned(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    customer = await enrol_customer(client, program, "ann")
    admin = program.auth("admin")
    for key, amount in (("grant-1", 250), ("grant-1", 250), ("deduct-1", -50)):  # a retry, then a deduction
        body = {"customer_id": customer, "amount": amount, "reason": "goodwill"}
        answer = await client.post("/v1/ledger/adjustments", json=body, headers=admin | {"Idempotency-Key": key})
        assert answer.status_code == 201, answer.text
        if amount > 0:
            grant = answer.json()
    async with new_client(CONFIG) as http:
        await dispatch_program(program.id, clock, CONFIG, http)  # publishes the outbox
    feed = await client.get("/v1/events", params={"types": "points.earned"}, headers=program.auth("checkout"))
    [event] = feed.json()["items"]
    assert event["customer_id"] == customer and event["timestamp"] == grant["posted_at"]
    assert event["data"] | {"expires_at": None} == {
        "customer_id": customer,
        "points": 250,
        "source": "grant",
        "shop_id": None,
        "order_id": None,
        "entry_id": grant["id"],
        "available_from": grant["posted_at"],
        "expires_at": None,
    }


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
    earned = catalogue["points.earned"]["payload_schema"]["$defs"]["PointsEarned"]["properties"]
    assert earned["order_id"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}  # null: not from an order

    schemas = app.openapi_schema.to_schema()["components"]["schemas"]
    for name in ("CustomerEnrolledEvent", "PurchaseFirstEvent", "PointsEarned", "WinBackDue"):
        assert name in schemas
    assert schemas["PurchaseRepeatEvent"]["properties"]["type"]["const"] == "purchase.repeat"


async def test_the_feed_stops_before_an_event_it_cannot_read_and_never_passes_it(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    """An event this version cannot read (a newer version's, during a rolling deploy) ends
    the page before it; asked for it first, the feed answers 503 with Retry-After instead
    of a 500 or of skipping it: a consumer's cursor never passes an event it did not get."""
    await enrol_customer(client, program, "ann")
    await owner_connection.execute(
        "INSERT INTO event_outbox (program_id, id, type, customer_id, payload, occurred_at)"
        " VALUES ($1, 'evt_from_a_newer_version', 'points.expired', NULL, '{\"points\": \"many\"}', now())",
        program.id,
    )
    await enrol_customer(client, program, "bob")
    async with new_client(CONFIG) as http:
        await dispatch_program(program.id, clock, CONFIG, http)  # publishes the outbox
    admin = program.auth("admin")
    first = await client.get("/v1/events", headers=admin)
    assert first.status_code == 200, first.text
    assert [event["seq"] for event in first.json()["items"]] == [1] and first.json()["next_cursor"] == "1"
    stuck = await client.get("/v1/events", params={"after": "1"}, headers=admin)
    assert_problem(stuck, 503, "event-unreadable")
    assert stuck.headers["retry-after"] == "5"
    past = await client.get("/v1/events", params={"after": "2"}, headers=admin)  # a reader of seq 2 goes on
    assert [event["data"]["external_id"] for event in past.json()["items"]] == ["bob"]


MAX_ENDPOINTS = 20  # docs/api.md


async def _endpoint_rows(owner_connection: asyncpg.Connection, program_id: str) -> list[dict[str, Any]]:
    rows = await owner_connection.fetch("SELECT * FROM webhook_endpoints WHERE program_id = $1 ORDER BY id", program_id)
    return [dict(row) for row in rows]


async def test_a_program_has_at_most_20_endpoints_and_a_refused_create_is_not_remembered(
    client: httpx.AsyncClient, owner_connection: asyncpg.Connection, program: ProgramFixture
) -> None:
    """Each event fans out to every endpoint taking its type: the 21st is a 409 naming `url`
    that stores nothing, disabled endpoints count too (they can be enabled again), and the
    refusal is not kept under its key: the same request succeeds once an endpoint is gone."""
    made = [await make_endpoint(client, program, url=f"https://crm.example.com/{n}") for n in range(MAX_ENDPOINTS)]
    admin = program.auth("admin")
    disabled = await client.patch(f"{ENDPOINTS}/{made[0]['id']}", json={"enabled": False}, headers=admin)
    assert disabled.status_code == 200, disabled.text
    before = await _endpoint_rows(owner_connection, program.id)
    assert len(before) == MAX_ENDPOINTS

    headers = keyed(admin)
    body = {"url": "https://crm.example.com/one-more", "event_types": ["customer.enrolled"]}
    refused = assert_problem(await client.post(ENDPOINTS, json=body, headers=headers), 409, "conflict")
    assert refused["field"] == "url"
    assert refused["limit"] == MAX_ENDPOINTS
    assert await _endpoint_rows(owner_connection, program.id) == before

    deleted = await client.delete(f"{ENDPOINTS}/{made[0]['id']}", headers=admin)
    assert deleted.status_code == 204
    again = await client.post(ENDPOINTS, json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert len(await _endpoint_rows(owner_connection, program.id)) == MAX_ENDPOINTS


async def test_concurrent_creates_never_pass_the_endpoint_cap(
    client: httpx.AsyncClient, owner_connection: asyncpg.Connection, program: ProgramFixture
) -> None:
    """Creates racing for the last free places: as many succeed as there were places, the
    others are refused, and the program never holds more than the cap."""
    for n in range(MAX_ENDPOINTS - 3):
        await make_endpoint(client, program, url=f"https://crm.example.com/{n}")
    admin = program.auth("admin")

    async def create(n: int) -> httpx.Response:
        body = {"url": f"https://racer.example.com/{n}", "event_types": ["customer.enrolled"]}
        return await client.post(ENDPOINTS, json=body, headers=keyed(admin))

    answers = await asyncio.gather(*(create(n) for n in range(8)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * 3 + [409] * 5, statuses
    assert len(await _endpoint_rows(owner_connection, program.id)) == MAX_ENDPOINTS
    answers = await asyncio.gather(*(create(n) for n in range(8, 12)))  # at the cap: every one refused
    assert [answer.status_code for answer in answers] == [409] * 4
    assert len(await _endpoint_rows(owner_connection, program.id)) == MAX_ENDPOINTS


async def test_the_feed_filters_by_at_most_as_many_types_as_the_catalogue_has(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    """`types` is repeated once per type: up to as many times as the catalogue has types."""
    admin = program.auth("admin")
    every = [event_type.value for event_type in EventType]
    assert (await client.get("/v1/events", params={"types": every}, headers=admin)).status_code == 200
    refused = await client.get("/v1/events", params={"types": [*every, every[0]]}, headers=admin)
    assert_names_field(assert_problem(refused, 422, "invalid-input"), "types")
