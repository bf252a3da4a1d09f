"""The webhook dispatcher against a real HTTP receiver on loopback: signed deliveries, retries
after 5xx and timeouts, giving up, disabling a failing endpoint, a dispatcher killed mid-batch,
two dispatchers at once, and each customer's events in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
import pytest

from service.db.events import emit
from service.db.transaction import transaction
from service.domain.clock import ManualClock
from service.domain.events import EventType, PointsExpired
from service.domain.webhooks import RetryPolicy, verify
from service.usecases import dispatch as dispatcher
from service.usecases import webhooks
from service.usecases.dispatch import (
    DispatchConfig,
    DispatchReport,
    dispatch_once,
    dispatch_program,
    new_client,
    publish_events,
)
from service.usecases.webhooks import EndpointChange
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import enrol
from tests.webhook_receiver import LOOPBACK_ALLOWED, Received, answers, delivery_rows, receiver, sleeps_first

CONFIG = DispatchConfig(
    timeout_s=2.0,  # receivers answer at once; a busy CI machine may still take a while
    retry=RetryPolicy(base_delay_s=1.0, max_delay_s=4.0, retry_for_s=60.0),
    disable_after=1000,
    batch=50,
    concurrency=8,
    destinations=LOOPBACK_ALLOWED,
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with new_client(CONFIG) as http:
        yield http


async def subscribe(program: ProgramFixture, url: str, clock: ManualClock, *types: EventType) -> tuple[str, str]:
    """An endpoint for these types (all by default); returns (endpoint id, secret)."""
    made = await webhooks.create_endpoint(program.id, url, list(types or EventType), "tests", clock, LOOPBACK_ALLOWED)
    return made.endpoint.id, made.secret


async def dispatch(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, config: DispatchConfig = CONFIG
) -> DispatchReport:
    return await dispatch_program(program.id, clock, config, client)


async def emit_expired(program_id: str, customer_id: str, points: int, clock: ManualClock) -> None:
    async with transaction() as connection:
        payload = PointsExpired(customer_id=customer_id, points=points, entry_id=points)
        await emit(connection, program_id, EventType.POINTS_EXPIRED, payload, customer_id, occurred_at=clock.now())


def now_s(clock: ManualClock) -> int:
    return int(clock.now().timestamp())


async def test_deliveries_are_signed_by_the_standard_webhooks_scheme(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    async with receiver() as hooks:
        _, secret = await subscribe(program, hooks.url, clock)
        ann = await enrol(program.id, "ann", clock)
        report = await dispatch(program, clock, client)
        assert (report.published, report.delivered) == (1, 1)

    [request] = hooks.requests
    assert request.method == "POST" and request.path == "/hooks"
    assert request.headers["content-type"] == "application/json"
    assert verify(secret, request.headers, request.body, now_s(clock))
    assert request.headers["webhook-signature"].startswith("v1,")
    body = request.json()
    assert body["type"] == "customer.enrolled" and body["customer_id"] == ann and body["seq"] == 1
    assert request.webhook_id == body["id"]
    assert int(request.headers["webhook-timestamp"]) == now_s(clock)
    # a receiver refuses what was tampered with, signed with another secret, or replayed late
    assert not verify(secret, request.headers, request.body.replace(b"ann", b"bob"), now_s(clock))
    other = (
        await webhooks.create_endpoint(program.id, hooks.url, [EventType.POINTS_EXPIRED], "", clock, LOOPBACK_ALLOWED)
    ).secret
    assert not verify(other, request.headers, request.body, now_s(clock))
    assert not verify(secret, request.headers, request.body, now_s(clock) + 3600)


async def test_a_5xx_is_retried_with_back_off_until_delivered(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, owner_connection: asyncpg.Connection
) -> None:
    async with receiver(answers(500, 503)) as hooks:
        endpoint_id, secret = await subscribe(program, hooks.url, clock)
        await enrol(program.id, "ann", clock)
        report = await dispatch(program, clock, client)
        assert (report.delivered, report.failed_attempts) == (0, 1)
        [row] = await delivery_rows(owner_connection, endpoint_id)
        assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == (
            "pending",
            1,
            500,
            "HTTP 500",
        )
        assert clock.now() + timedelta(seconds=0.5) <= row["next_attempt_at"] <= clock.now() + timedelta(seconds=1)

        assert (await dispatch(program, clock, client)).failed_attempts == 0  # not due yet: nothing sent
        clock.advance(timedelta(seconds=1))
        assert (await dispatch(program, clock, client)).failed_attempts == 1  # 503; the next wait is up to 2 s
        clock.advance(timedelta(seconds=2))
        assert (await dispatch(program, clock, client)).delivered == 1

    assert len(hooks.requests) == 3 and len(set(hooks.ids)) == 1  # one event, the same id each time
    assert hooks.verified(secret, now_s(clock))
    [row] = await delivery_rows(owner_connection, endpoint_id)
    assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == ("delivered", 3, 200, None)
    endpoint = await webhooks.get_endpoint(program.id, endpoint_id)
    assert endpoint.enabled and endpoint.consecutive_failures == 0


async def test_a_timeout_is_retried(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, owner_connection: asyncpg.Connection
) -> None:
    async with receiver(sleeps_first(4.0)) as hooks:
        endpoint_id, _ = await subscribe(program, hooks.url, clock)
        await enrol(program.id, "ann", clock)
        report = await dispatch(program, clock, client)
        assert (report.delivered, report.failed_attempts) == (0, 1)
        [row] = await delivery_rows(owner_connection, endpoint_id)
        assert row["status"] == "pending" and row["last_status_code"] is None
        assert row["last_error"] == "no answer within 2 s"
        clock.advance(timedelta(seconds=1))
        assert (await dispatch(program, clock, client)).delivered == 1
    assert len(hooks.requests) == 2 and len(set(hooks.ids)) == 1


async def test_retries_stop_after_the_retry_period(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, owner_connection: asyncpg.Connection
) -> None:
    config = DispatchConfig(
        timeout_s=2.0,
        retry=RetryPolicy(base_delay_s=1.0, max_delay_s=2.0, retry_for_s=5.0),
        destinations=LOOPBACK_ALLOWED,
    )
    async with receiver(answers(then=500)) as hooks:
        endpoint_id, _ = await subscribe(program, hooks.url, clock)
        await enrol(program.id, "ann", clock)
        gave_up = 0
        for _ in range(10):
            gave_up += (await dispatch(program, clock, client, config)).gave_up
            clock.advance(timedelta(seconds=2))
        [row] = await delivery_rows(owner_connection, endpoint_id)
        assert row["status"] == "failed" and gave_up == 1
        attempts = row["attempts"]  # an attempt that timed out on a busy machine may not have arrived
        received = len(hooks.requests)
        assert 3 <= attempts <= 7 and 1 <= received <= attempts
        clock.advance(timedelta(hours=1))
        await dispatch(program, clock, client, config)
        assert len(hooks.requests) == received  # failed is final (until re-delivered by hand)

        # a manual re-delivery gets a fresh retry period
        await webhooks.redeliver(program.id, endpoint_id, row["id"], clock)
        hooks.behaviour = answers()
        assert (await dispatch(program, clock, client, config)).delivered == 1
    [row] = await delivery_rows(owner_connection, endpoint_id)
    assert row["status"] == "delivered" and row["attempts"] == attempts + 1


async def test_an_endpoint_that_keeps_failing_is_disabled_and_resumes_when_enabled(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, owner_connection: asyncpg.Connection
) -> None:
    config = DispatchConfig(timeout_s=2.0, retry=CONFIG.retry, disable_after=3, destinations=LOOPBACK_ALLOWED)
    async with receiver(answers(then=500)) as hooks:
        endpoint_id, _ = await subscribe(program, hooks.url, clock)
        for name in ("ann", "bob", "cas", "dan"):
            await enrol(program.id, name, clock)
        report = await dispatch(program, clock, client, config)
        assert report.endpoints_disabled == 1 and report.delivered == 0
        endpoint = await webhooks.get_endpoint(program.id, endpoint_id)
        assert not endpoint.enabled
        assert endpoint.disabled_reason is not None and "consecutive failed attempts" in endpoint.disabled_reason
        assert "HTTP 500" in endpoint.disabled_reason
        sent = len(hooks.requests)

        clock.advance(timedelta(minutes=5))
        await dispatch(program, clock, client, config)
        assert len(hooks.requests) == sent  # disabled: nothing is sent
        await enrol(program.id, "eve", clock)
        await dispatch(program, clock, client, config)  # published while disabled: not fanned out to it
        assert len(await delivery_rows(owner_connection, endpoint_id)) == 4

        hooks.behaviour = answers()
        enabled = await webhooks.update_endpoint(program.id, endpoint_id, EndpointChange(enabled=True), clock)
        assert enabled.enabled and enabled.disabled_reason is None and enabled.consecutive_failures == 0
        assert (await dispatch(program, clock, client, config)).delivered == 4
    assert {row["status"] for row in await delivery_rows(owner_connection, endpoint_id)} == {"delivered"}


async def test_an_endpoint_enabled_again_after_its_retry_period_retries_its_deliveries_afresh(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, owner_connection: asyncpg.Connection
) -> None:
    config = DispatchConfig(timeout_s=2.0, retry=CONFIG.retry, disable_after=3, destinations=LOOPBACK_ALLOWED)
    async with receiver(answers(then=500)) as hooks:
        endpoint_id, _ = await subscribe(program, hooks.url, clock)
        for name in ("ann", "bob", "cas"):
            await enrol(program.id, name, clock)
        assert (await dispatch(program, clock, client, config)).endpoints_disabled == 1
        # the receiver is mended a day later, longer than a delivery's retry period (60 s here)
        clock.advance(timedelta(days=1))
        await webhooks.update_endpoint(program.id, endpoint_id, EndpointChange(enabled=True), clock)
        hooks.behaviour = answers(503, 503)  # still warming up: two of the three first attempts fail
        report = await dispatch(program, clock, client, config)
        assert (report.delivered, report.failed_attempts, report.gave_up) == (1, 2, 0)  # retried, not given up
        clock.advance(timedelta(seconds=2))
        assert (await dispatch(program, clock, client, config)).delivered == 2
    assert {row["status"] for row in await delivery_rows(owner_connection, endpoint_id)} == {"delivered"}


async def test_a_dispatcher_killed_mid_batch_loses_nothing(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, owner_connection: asyncpg.Connection
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hang(_: Received) -> int:
        if len(hooks.requests) == 3:
            arrived.set()  # all three are in flight
        await release.wait()
        return 200

    async with receiver(hang) as hooks:
        endpoint_id, _ = await subscribe(program, hooks.url, clock)
        customers = [await enrol(program.id, name, clock) for name in ("ann", "bob", "cas")]
        # the receiver keeps the requests waiting; the dispatcher is killed while it sends
        patient = DispatchConfig(timeout_s=5.0, destinations=LOOPBACK_ALLOWED)
        dispatcher = asyncio.create_task(dispatch(program, clock, client, patient))
        await asyncio.wait_for(arrived.wait(), 5)
        dispatcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dispatcher
        release.set()

        rows = await delivery_rows(owner_connection, endpoint_id)
        assert [row["status"] for row in rows] == ["pending"] * 3
        assert all(row["claimed_until"] is not None and row["attempts"] == 0 for row in rows)
        hooks.behaviour = answers()
        assert (await dispatch(program, clock, client)).delivered == 0  # still claimed: nobody sends twice now
        clock.advance(patient.lease + timedelta(seconds=1))
        assert (await dispatch(program, clock, client)).delivered == 3  # the lease ran out: sent again

    assert len(hooks.requests) == 6
    events = {request.json()["id"] for request in hooks.requests}
    assert set(hooks.ids) == events and len(events) == 3  # the receiver de-duplicates by webhook-id
    assert {request.json()["customer_id"] for request in hooks.requests} == set(customers)
    assert {row["status"] for row in await delivery_rows(owner_connection, endpoint_id)} == {"delivered"}


async def test_two_dispatchers_never_both_send_one_delivery(program: ProgramFixture, clock: ManualClock) -> None:
    async def slow_ok(_: Received) -> int:
        await asyncio.sleep(0.02)
        return 200

    async with receiver(slow_ok) as hooks:
        await subscribe(program, hooks.url, clock)
        async with transaction() as connection:
            for number in range(40):
                payload = PointsExpired(customer_id=f"cus_{number}", points=number + 1, entry_id=number)
                await emit(
                    connection, program.id, EventType.POINTS_EXPIRED, payload, f"cus_{number}", occurred_at=clock.now()
                )
        assert await publish_events(program.id, clock) == 40  # all due at once, for every dispatcher
        config = DispatchConfig(timeout_s=2.0, batch=5, concurrency=4, destinations=LOOPBACK_ALLOWED)
        async with new_client(config) as first, new_client(config) as second:
            reports = await asyncio.gather(
                dispatch_program(program.id, clock, config, first),
                dispatch_program(program.id, clock, config, second),
                dispatch_program(program.id, clock, config, first),
            )
    assert sum(report.delivered for report in reports) == 40
    assert len(hooks.requests) == 40 and len(set(hooks.ids)) == 40
    assert sum(1 for report in reports if report.delivered) >= 2  # they really shared the work


async def test_each_customers_events_arrive_in_order(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    first_fails = answers(500)
    async with receiver(first_fails) as hooks:
        await subscribe(program, hooks.url, clock, EventType.POINTS_EXPIRED)
        for points in range(1, 6):
            await emit_expired(program.id, "cus_ann", points, clock)
        await emit_expired(program.id, "cus_bob", 100, clock)

        report = await dispatch(program, clock, client)
        # ann's first event failed: her later ones wait behind it; bob's is not held up
        assert (report.delivered, report.failed_attempts) == (1, 1)
        assert await dispatch(program, clock, client) == DispatchReport()
        clock.advance(timedelta(seconds=2))
        assert (await dispatch(program, clock, client)).delivered == 5

    by_customer: dict[str, list[int]] = {}
    for request in hooks.requests:
        body = request.json()
        data = body["data"]
        assert isinstance(data, dict)
        by_customer.setdefault(str(body["customer_id"]), []).append(data["points"])
    assert by_customer == {"cus_ann": [1, 1, 2, 3, 4, 5], "cus_bob": [100]}


async def test_only_subscribed_types_are_delivered(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    async with receiver() as hooks:
        await subscribe(program, hooks.url, clock, EventType.POINTS_EXPIRED)
        await enrol(program.id, "ann", clock)
        await emit_expired(program.id, "cus_ann", 7, clock)
        assert (await dispatch(program, clock, client)).delivered == 1
    assert [request.json()["type"] for request in hooks.requests] == ["points.expired"]


async def test_a_claim_lasts_until_the_last_send_of_its_batch_not_the_first(
    program: ProgramFixture, clock: ManualClock
) -> None:
    """A dispatcher claims a batch and sends it `concurrency` at a time: the batch's last
    sends start waves after the claim. While it waits for them, its claims must not run out
    and let a second dispatcher send the same deliveries at the same moment."""
    config = DispatchConfig(timeout_s=10.0, batch=8, concurrency=1, destinations=LOOPBACK_ALLOWED)
    second_may_run = asyncio.Event()
    second_done = asyncio.Event()

    async def slow_within_timeout(_: Received) -> int:
        clock.advance(timedelta(seconds=9))  # each answer takes 9 s of the 10 s allowed
        if len(hooks.requests) == 6:  # 54 s after the claim: past one send's lease (timeout * 2 + 30)
            second_may_run.set()
            await asyncio.wait_for(second_done.wait(), 10)
        return 200

    async def second_dispatcher(client: httpx.AsyncClient) -> DispatchReport:
        await asyncio.wait_for(second_may_run.wait(), 10)
        try:
            return await dispatch_program(program.id, clock, config, client)
        finally:
            second_done.set()

    async with receiver(slow_within_timeout) as hooks:
        await subscribe(program, hooks.url, clock)
        async with transaction() as connection:
            for number in range(8):
                payload = PointsExpired(customer_id=f"cus_{number}", points=number + 1, entry_id=number)
                await emit(
                    connection, program.id, EventType.POINTS_EXPIRED, payload, f"cus_{number}", occurred_at=clock.now()
                )
        async with new_client(config) as first, new_client(config) as second:
            await asyncio.gather(dispatch_program(program.id, clock, config, first), second_dispatcher(second))
    assert len(set(hooks.ids)) == 8
    assert len(hooks.ids) == 8, "a delivery was sent by both dispatchers"


async def add_unreadable_event(connection: asyncpg.Connection, program_id: str, customer_id: str) -> None:
    """An event this version cannot read (a newer version's payload, or one changed by hand)."""
    await connection.execute(
        "INSERT INTO event_outbox (program_id, id, type, customer_id, payload, occurred_at)"
        " VALUES ($1, 'evt_unreadable_' || $1, 'points.expired', $2, '{\"points\": \"many\"}', now())",
        program_id,
        customer_id,
    )


async def test_an_event_that_cannot_be_read_does_not_stop_the_others(
    program: ProgramFixture, clock: ManualClock, client: httpx.AsyncClient, owner_connection: asyncpg.Connection
) -> None:
    async with receiver() as hooks:
        endpoint_id, _ = await subscribe(program, hooks.url, clock)
        await add_unreadable_event(owner_connection, program.id, "cus_bad")
        good = await enrol(program.id, "ann", clock)
        for _ in range(2):  # the next round too, once the unreadable one's lease has run out
            await dispatch(program, clock, client)
            clock.advance(CONFIG.lease + timedelta(seconds=1))
    assert [request.json()["customer_id"] for request in hooks.requests] == [good]
    rows = await delivery_rows(owner_connection, endpoint_id)
    assert [row["status"] for row in rows] == ["pending", "delivered"]  # kept for a version that reads it


async def test_a_program_whose_dispatch_fails_does_not_stop_the_others(
    program: ProgramFixture,
    other_program: ProgramFixture,
    clock: ManualClock,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def programs(_: asyncpg.Connection) -> list[str]:
        return [program.id, other_program.id]

    original = dispatcher.publish_events

    async def publish(program_id: str, clock: ManualClock, batch: int = 1000) -> int:
        if program_id == program.id:
            raise asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")
        return await original(program_id, clock, batch)

    monkeypatch.setattr(dispatcher, "program_ids", programs)
    monkeypatch.setattr(dispatcher, "publish_events", publish)
    async with receiver() as hooks:
        await subscribe(program, hooks.url, clock)
        await subscribe(other_program, hooks.url, clock)
        await enrol(program.id, "ann", clock)
        other = await enrol(other_program.id, "bob", clock)
        report = await dispatch_once(clock, CONFIG, client)
    assert report.delivered == 1
    assert [request.json()["customer_id"] for request in hooks.requests] == [other]


async def test_one_programs_backlog_does_not_hold_up_the_others_webhooks(
    program: ProgramFixture, other_program: ProgramFixture, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Programs take turns, a claimed batch each: a program with a long queue (or a receiver that
    answers only at the timeout, so that each of its batches takes the longest a batch may) does
    not make another program's webhooks wait until it is done."""

    async def programs(_: asyncpg.Connection) -> list[str]:
        return [program.id, other_program.id]

    monkeypatch.setattr(dispatcher, "program_ids", programs)
    sent: list[str] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(200)

    config = DispatchConfig(timeout_s=2.0, batch=2, concurrency=2)  # public addresses only, as deployed
    for fixture, path in ((program, "/busy"), (other_program, "/quiet")):
        made = await webhooks.create_endpoint(
            fixture.id, f"http://93.184.216.34{path}", [EventType.CUSTOMER_ENROLLED], "tests", clock
        )
        assert made.endpoint.enabled
    for name in ("ann", "bob", "cat", "dan", "eve", "fay"):
        await enrol(program.id, name, clock)
    await enrol(other_program.id, "gus", clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), follow_redirects=False) as client:
        report = await dispatch_once(clock, config, client)
    assert report.delivered == 7
    assert sorted(sent) == ["/busy"] * 6 + ["/quiet"]
    assert sent.index("/quiet") == 2, sent  # after the busy program's first batch, not its last
