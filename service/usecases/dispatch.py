"""The webhook dispatcher: publish the outbox, claim due deliveries, send them signed, record
what happened (retry with back-off, give up after the retry period, disable a failing endpoint).

At-least-once: a delivery is claimed with `FOR UPDATE SKIP LOCKED` and a lease (its
`claimed_until`) in a short transaction, sent outside any transaction, and confirmed in
another. A dispatcher that dies between the two leaves the lease to run out, and the
delivery is due again: receivers de-duplicate by `webhook-id` (the event id). Several
dispatchers may run at once; a claimed delivery is invisible to the others until its lease
ends. A customer's events reach an endpoint in order: a delivery is not claimed while an
earlier event of the same customer to the same endpoint is still pending.

Each send resolves the endpoint's host, refuses it if any address it resolves to is not
allowed (`service/domain/destinations.py`), and connects to a checked address itself: the
request goes to the IP, with the host name in `Host`, in TLS SNI and in the certificate
check, so a second DNS answer (rebinding) cannot send it elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec

from service.config import Settings
from service.db import events as event_rows
from service.db.programs import program_ids
from service.db.transaction import in_transaction
from service.domain.clock import Clock
from service.domain.destinations import (
    PUBLIC_ONLY,
    DestinationPolicy,
    address_allowed,
    parse_address,
    refused_address,
    url_problem,
)
from service.domain.errors import described
from service.domain.webhooks import RetryPolicy, headers, is_success, next_attempt, secrets_in_force, should_disable
from service.usecases.webhooks import destination_policy

log = logging.getLogger("loyalty.webhooks")


USER_AGENT = "loyalty-webhooks/1"
MAX_ERROR_CHARS = 500


class DispatchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the dispatcher sends: timeouts, retries, when to disable, batch sizes."""

    timeout_s: float = 5.0
    retry: RetryPolicy = RetryPolicy()
    disable_after: int = 50  # consecutive failed attempts
    batch: int = 100  # deliveries claimed at once per program
    concurrency: int = 16  # requests in flight per dispatcher
    interval_s: float = 1.0  # pause when there is nothing to do
    publish_batch: int = 1000
    destinations: DestinationPolicy = PUBLIC_ONLY

    @property
    def lease(self) -> timedelta:
        """How long a claim lasts: well past the longest its batch may take to send. The batch
        is sent `concurrency` at a time, so its last sends start only after the waves before
        them: a lease of one send's time ran out while they waited, and another dispatcher
        took them and sent them at the same moment as this one."""
        waves = -(-self.batch // self.concurrency)
        return timedelta(seconds=self.timeout_s * 2 * waves + 30)

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchConfig:
        return cls(
            timeout_s=settings.webhook_timeout_s,
            retry=RetryPolicy(
                base_delay_s=settings.webhook_retry_base_s,
                max_delay_s=settings.webhook_retry_max_delay_s,
                retry_for_s=settings.webhook_retry_for_s,
            ),
            disable_after=settings.webhook_disable_after,
            interval_s=settings.webhook_interval_s,
            destinations=destination_policy(settings),
        )


class DispatchReport(msgspec.Struct, kw_only=True):
    published: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    gave_up: int = 0
    endpoints_disabled: int = 0
    errors: int = 0  # deliveries the dispatcher itself failed on (recorded as failed attempts)
    unreadable: int = 0  # deliveries claimed whose event this version cannot read (kept pending)
    failed: list[str] = msgspec.field(default_factory=list)  # "<program>: <step>" that failed


class Claimed(msgspec.Struct, frozen=True, kw_only=True):
    program_id: str
    delivery_id: str
    claim: str
    claimed_until: datetime  # the lease: no send may start that could outlast it
    url: str
    secret: str
    previous_secret: str | None = None  # also signs until previous_secret_until (a rotation)
    previous_secret_until: datetime | None = None
    event_id: str
    body: bytes


async def publish_events(program_id: str, clock: Clock, batch: int = 1000) -> int:
    """Publish the program's outbox (numbered into the feed, fanned out to deliveries)."""
    total = 0
    while True:
        published = await in_transaction(
            lambda connection: event_rows.publish_batch(connection, program_id, clock.now(), batch)
        )
        total += published
        if published < batch:
            return total


_CLAIM = """
WITH due AS (
    SELECT d.id FROM webhook_deliveries d
      JOIN webhook_endpoints w ON w.program_id = d.program_id AND w.id = d.endpoint_id
     WHERE d.program_id = $1 AND d.status = 'pending' AND d.next_attempt_at <= $2
       AND (d.claimed_until IS NULL OR d.claimed_until <= $2) AND w.enabled
       AND (d.customer_id IS NULL OR NOT EXISTS (
            SELECT FROM webhook_deliveries earlier
             WHERE earlier.program_id = d.program_id AND earlier.endpoint_id = d.endpoint_id
               AND earlier.customer_id = d.customer_id AND earlier.status = 'pending'
               AND earlier.event_seq < d.event_seq))
     ORDER BY d.next_attempt_at, d.event_seq
     LIMIT $3
       FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries d SET claimed_until = $4, claim = $5, updated_at = $2
  FROM due, events e, webhook_endpoints w
 WHERE d.program_id = $1 AND d.id = due.id
   AND e.program_id = d.program_id AND e.seq = d.event_seq
   AND w.program_id = d.program_id AND w.id = d.endpoint_id
RETURNING d.id AS delivery_id, w.url, w.secret, w.previous_secret, w.previous_secret_until,
          e.seq, e.id, e.type, e.customer_id, e.payload, e.occurred_at
"""


async def claim_due(program_id: str, clock: Clock, config: DispatchConfig) -> tuple[list[Claimed], int]:
    """Claim up to a batch of due deliveries of a program for this dispatcher; returns those to
    send, and how many were claimed whose event this version cannot read.

    Such a delivery (a newer version's event, during a rolling deploy) is neither sent nor
    skipped nor dropped: each customer's events reach an endpoint in order (docs/events.md),
    so it stays pending, its customer's later events to the endpoint waiting behind it, for
    a version that reads it. It keeps its lease (this version meets it again when the lease
    ends, not at every pass), its `last_error` says why it waits, and it is counted: in the
    report, in `loyalty jobs run` and in /metrics. It does not stop the rest of the batch."""
    now = clock.now()
    claim = secrets.token_hex(8)

    async def work(connection: asyncpg.Connection) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await connection.fetch(
            _CLAIM, program_id, now, config.batch, now + config.lease, claim
        )
        return rows

    claimed = []
    unreadable: list[tuple[str, str]] = []
    for row in await in_transaction(work):
        try:
            body = msgspec.json.encode(event_rows.event_from_row(row))
        except msgspec.ValidationError as error:
            log.error(
                "event %s of program %s cannot be read by this version: delivery %s is not sent and stays pending"
                " for a version that reads it; customer %s's later events to the endpoint wait behind it",
                row["id"],
                program_id,
                row["delivery_id"],
                row["customer_id"],
                exc_info=error,
            )
            unreadable.append((row["delivery_id"], described(error, MAX_ERROR_CHARS // 2)))
            continue
        claimed.append(
            Claimed(
                program_id=program_id,
                delivery_id=row["delivery_id"],
                claim=claim,
                claimed_until=now + config.lease,
                url=row["url"],
                secret=row["secret"],
                previous_secret=row["previous_secret"],
                previous_secret_until=row["previous_secret_until"],
                event_id=row["id"],
                body=body,
            )
        )
    if unreadable:
        try:
            await in_transaction(
                lambda connection: event_rows.mark_unreadable(connection, program_id, claim, unreadable, now)
            )
        except Exception:  # the deliveries are counted in the report all the same; the rest is sent
            log.exception("the unreadable deliveries of program %s could not be marked", program_id)
    return claimed, len(unreadable)


async def unreadable_deliveries() -> dict[str, int]:
    """Per program, the pending deliveries whose event a dispatcher could not read (and that
    hold their customers' later events back), whoever holds them now."""
    return await in_transaction(event_rows.unreadable_pending)


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of a host name, in the system resolver's order (off the event loop)."""
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(answer[4][0]) for answer in answers))


class DestinationRefused(Exception):
    """The destination is not allowed; nothing was sent."""


async def _addresses(url: httpx.URL, policy: DestinationPolicy, resolver: Resolver) -> list[str]:
    """The addresses to connect to for a URL, every one of them allowed."""
    literal = parse_address(url.host)
    if literal is not None:
        found = [literal]
    else:
        host = url.raw_host.decode("ascii")
        try:
            answers = await resolver(host, url.port or (443 if url.scheme == "https" else 80))
        except OSError as error:  # socket.gaierror
            raise DestinationRefused(f"could not resolve {host}: {error.strerror or error}") from None
        found = [address for address in map(parse_address, answers) if address is not None]
        if not found or len(found) != len(answers):
            raise DestinationRefused(f"could not resolve {host} to IP addresses")
    for address in found:
        if not address_allowed(address, policy):
            raise DestinationRefused(refused_address(address))
    return [str(address) for address in found]


async def _post(
    client: httpx.AsyncClient, url: httpx.URL, addresses: list[str], body: bytes, request_headers: dict[str, str]
) -> int:
    """POST to the URL at the first of its addresses that takes a connection, as if to its
    host: `Host`, and for https the SNI and the certificate check, keep the host name."""
    pinned_headers = {**request_headers, "host": url.netloc.decode("ascii")}
    by_name = url.scheme == "https" and parse_address(url.host) is None
    extensions: dict[str, Any] = {"sni_hostname": url.raw_host.decode("ascii").rstrip(".")} if by_name else {}

    async def post(address: str) -> int:
        target = url.copy_with(host=address)
        async with client.stream(
            "POST", target, content=body, headers=pinned_headers, extensions=extensions, follow_redirects=False
        ) as answer:
            return answer.status_code

    *others, last = addresses
    for address in others:
        with contextlib.suppress(httpx.ConnectError):  # nothing was sent: try the next address
            return await post(address)
    return await post(last)


async def send(
    client: httpx.AsyncClient, claimed: Claimed, clock: Clock, config: DispatchConfig, resolver: Resolver = resolve
) -> tuple[int | None, str]:
    """POST one signed message to a checked address of the endpoint; (status code, error):
    a code of None means no answer, or a refused destination that was not contacted."""
    now = clock.now()
    timestamp = int(now.timestamp())
    signing = secrets_in_force(claimed.secret, claimed.previous_secret, claimed.previous_secret_until, now)
    request_headers = {
        **headers(signing, claimed.event_id, timestamp, claimed.body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "connection": "close",  # one request per connection (see new_client)
    }
    try:
        async with asyncio.timeout(config.timeout_s):  # a bound on the whole exchange, DNS included
            problem = url_problem(claimed.url, config.destinations)  # the rules may have changed since it was stored
            if problem is not None:
                raise DestinationRefused(problem)
            url = httpx.URL(claimed.url)
            addresses = await _addresses(url, config.destinations, resolver)
            status = await _post(client, url, addresses, claimed.body, request_headers)
            return status, ("" if is_success(status) else f"HTTP {status}")
    except DestinationRefused as refusal:
        return None, str(refusal)[:MAX_ERROR_CHARS]
    except TimeoutError:
        return None, f"no answer within {config.timeout_s:g} s"
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as error:
        return None, described(error, MAX_ERROR_CHARS)


async def record(
    claimed: Claimed, status: int | None, error: str, clock: Clock, config: DispatchConfig, receivers: bool = True
) -> str:
    """Store the outcome of an attempt: `delivered`, `retry`, `failed`, or `stale` when this
    dispatcher's claim was lost (its lease ran out and another took the delivery). A failure
    that is not the receiver's (`receivers` false: the dispatcher's own error) does not count
    towards disabling its endpoint."""
    now = clock.now()

    async def work(connection: asyncpg.Connection) -> str:
        row = await connection.fetchrow(
            "SELECT endpoint_id, attempts, retry_from FROM webhook_deliveries"
            " WHERE program_id = $1 AND id = $2 AND claim = $3 FOR UPDATE",
            claimed.program_id,
            claimed.delivery_id,
            claimed.claim,
        )
        if row is None:
            return "stale"
        attempts = row["attempts"] + 1
        if status is not None and is_success(status):
            await connection.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = $3, delivered_at = $4,"
                " last_attempt_at = $4, last_status_code = $5, last_error = NULL, claimed_until = NULL,"
                " claim = NULL, updated_at = $4 WHERE program_id = $1 AND id = $2",
                claimed.program_id,
                claimed.delivery_id,
                attempts,
                now,
                status,
            )
            await connection.execute(
                "UPDATE webhook_endpoints SET consecutive_failures = 0"
                " WHERE program_id = $1 AND id = $2 AND consecutive_failures <> 0",
                claimed.program_id,
                row["endpoint_id"],
            )
            return "delivered"
        retry_at = next_attempt(config.retry, attempts, row["retry_from"], now)
        await connection.execute(
            "UPDATE webhook_deliveries SET status = $3, attempts = $4, next_attempt_at = coalesce($5, next_attempt_at),"
            " last_attempt_at = $6, last_status_code = $7, last_error = $8, claimed_until = NULL, claim = NULL,"
            " updated_at = $6 WHERE program_id = $1 AND id = $2",
            claimed.program_id,
            claimed.delivery_id,
            "pending" if retry_at else "failed",
            attempts,
            retry_at,
            now,
            status,
            error,
        )
        if not receivers:
            return "retry" if retry_at else "failed"
        failures = await connection.fetchval(
            "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1"
            " WHERE program_id = $1 AND id = $2 RETURNING consecutive_failures",
            claimed.program_id,
            row["endpoint_id"],
        )
        if failures is not None and should_disable(failures, config.disable_after):
            disabled = await connection.fetchval(
                "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $3, updated_at = $4"
                " WHERE program_id = $1 AND id = $2 AND enabled RETURNING true",
                claimed.program_id,
                row["endpoint_id"],
                f"{failures} consecutive failed attempts; the last: {error}"[:MAX_ERROR_CHARS],
                now,
            )
            if disabled:
                log.warning("webhook endpoint %s disabled after %d failures", row["endpoint_id"], failures)
                return "disabled"
        return "retry" if retry_at else "failed"

    return await in_transaction(work)


async def _round(
    program_id: str, clock: Clock, config: DispatchConfig, client: httpx.AsyncClient, resolver: Resolver
) -> DispatchReport | None:
    """Claim a batch of the program's due deliveries and send it; None when nothing was due."""
    claimed, unreadable = await claim_due(program_id, clock, config)
    if not claimed:
        return DispatchReport(unreadable=unreadable) if unreadable else None
    limit = asyncio.Semaphore(config.concurrency)
    errors: list[str] = []

    async def deliver(claimed: Claimed) -> str:
        async with limit:
            if clock.now() + timedelta(seconds=config.timeout_s) > claimed.claimed_until:
                return "stale"  # the lease could run out mid-send: left to whoever claims it next
            receivers = True
            try:
                status, error = await send(client, claimed, clock, config, resolver)
            except Exception as failure:
                # a delivery the dispatcher cannot send (not the receiver's failure) is one
                # failed attempt of it, retried with back-off and given up like any other;
                # the rest of the batch goes on
                log.exception("delivery %s of program %s could not be sent", claimed.delivery_id, program_id)
                status, error = None, ("dispatcher error: " + described(failure, MAX_ERROR_CHARS))[:MAX_ERROR_CHARS]
                errors.append(claimed.delivery_id)
                receivers = False  # ours, not the endpoint's: it does not count towards disabling it
        return await _record_or_log(claimed, status, error, clock, config, receivers)

    outcomes = await asyncio.gather(*(deliver(one) for one in claimed))
    return DispatchReport(
        delivered=outcomes.count("delivered"),
        failed_attempts=len(outcomes) - outcomes.count("delivered") - outcomes.count("stale"),
        gave_up=outcomes.count("failed"),
        endpoints_disabled=outcomes.count("disabled"),
        errors=len(errors) + outcomes.count("unrecorded"),
        unreadable=unreadable,
    )


async def _record_or_log(
    claimed: Claimed, status: int | None, error: str, clock: Clock, config: DispatchConfig, receivers: bool
) -> str:
    """`record`, or "unrecorded" when even that fails: logged, and the delivery keeps its lease
    and is due again when it runs out, while the rest of the batch goes on."""
    try:
        return await record(claimed, status, error, clock, config, receivers)
    except Exception:
        log.exception(
            "the attempt of delivery %s of program %s could not be recorded; due again when its lease ends",
            claimed.delivery_id,
            claimed.program_id,
        )
        return "unrecorded"


def _add(total: DispatchReport, report: DispatchReport) -> None:
    for field in msgspec.structs.fields(DispatchReport):
        setattr(total, field.name, getattr(total, field.name) + getattr(report, field.name))


async def dispatch_program(
    program_id: str,
    clock: Clock,
    config: DispatchConfig,
    client: httpx.AsyncClient,
    max_rounds: int = 50,
    resolver: Resolver = resolve,
) -> DispatchReport:
    """Publish a program's outbox and send its due deliveries, round after round while some
    were due (the next event of a customer becomes due when the one before it is delivered)."""
    report = DispatchReport(published=await publish_events(program_id, clock, config.publish_batch))
    for _ in range(max_rounds):
        sent = await _round(program_id, clock, config, client, resolver)
        if sent is None:
            break
        _add(report, sent)
    return report


def new_client(config: DispatchConfig) -> httpx.AsyncClient:
    """The HTTP client of a dispatcher: no redirects, no proxies from the environment, no
    idle connections kept (a connection to an address is for the one host name it was made for)."""
    return httpx.AsyncClient(
        timeout=config.timeout_s,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


async def dispatch_once(
    clock: Clock, config: DispatchConfig, client: httpx.AsyncClient | None = None, max_rounds: int = 50
) -> DispatchReport:
    """One pass over every program: publish each outbox, then send round after round while some
    were due, the programs taking turns (a batch each), so that a program with a long queue or
    slow receivers holds the others' webhooks up for one batch at a time, not until it is done."""
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(new_client(config))
        total = DispatchReport()
        turns: list[str] = []
        for program_id in await in_transaction(program_ids):
            try:
                total.published += await publish_events(program_id, clock, config.publish_batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # one program's failure does not hold up the others' webhooks, nor the program's
                # deliveries already published: they are still sent
                log.exception("publishing the events of program %s failed; the next pass tries again", program_id)
                total.failed.append(f"{program_id}: publish")
            turns.append(program_id)
        for _ in range(max_rounds):
            still_due = []
            for program_id in turns:
                try:
                    sent = await _round(program_id, clock, config, client, resolve)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook dispatch failed for program %s; the next pass tries again", program_id)
                    total.failed.append(f"{program_id}: send")
                    continue
                if sent is not None:
                    _add(total, sent)
                    still_due.append(program_id)
            turns = still_due
            if not turns:
                break
        return total


async def dispatch_forever(clock: Clock, config: DispatchConfig) -> None:
    """The dispatcher loop of the scheduler: a pass, then a pause of `interval_s`."""
    async with new_client(config) as client:
        while True:
            try:
                report = await dispatch_once(clock, config, client)
                if report.failed_attempts or report.endpoints_disabled or report.failed or report.unreadable:
                    log.info("webhooks dispatched", extra={"fields": msgspec.structs.asdict(report)})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook dispatch failed; retrying next round")
            await asyncio.sleep(config.interval_s)
