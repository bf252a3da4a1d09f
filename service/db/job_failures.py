"""The work items of the scheduled jobs that failed, each with its back-off (migration 0025).

A job that works item by item (a hold to expire, a customer to review, a delivery to send)
runs each item on its own, so that one item that fails every time does not stop the items
behind it. The failure is logged with the item's id and recorded here: the item is left out
of its job's rounds until `retry_at` (a minute after the first failure, doubling to an hour
at most, for as long as it keeps failing), and its row is removed in the transaction that
finally does it. The rows are what the job reports name as failing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import asyncpg
import msgspec

from service.db.transaction import RETRYABLE, UNAVAILABLE, in_transaction, transaction, with_retry
from service.domain.errors import described

T = TypeVar("T")
Item = TypeVar("Item")

FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)
MAX_ERROR_CHARS = 500

log = logging.getLogger("loyalty.jobs")

# Not the item's fault: the database went away or restarted, no connection came in time, or a
# deadlock outlived its retries. Recorded, it would hold back every item tried meanwhile by a
# back-off they do not deserve (and try each in turn against a database that is gone): it
# ends the job's round instead, reported as a failed job, and the next round tries again.
TRANSIENT: tuple[type[Exception], ...] = (*UNAVAILABLE, asyncpg.InterfaceError, *RETRYABLE)


class FailingItem(msgspec.Struct, frozen=True, kw_only=True):
    """A work item of a job that failed and waits for its retry."""

    job: str
    item: str
    attempts: int
    first_failed_at: datetime
    retry_at: datetime
    last_error: str


class ItemFailed(msgspec.Struct, frozen=True):
    """What `run_item` returns for an item that failed (logged and recorded)."""

    attempts: int


def retry_delay(attempts: int) -> timedelta:
    """The back-off after `attempts` consecutive failures: 1, 2, 4 ... minutes, an hour at most."""
    delay: timedelta = FIRST_RETRY * 2 ** min(attempts - 1, 16)
    return min(delay, LONGEST_RETRY)


def describe(error: BaseException) -> str:
    return described(error, MAX_ERROR_CHARS)


async def waiting(connection: asyncpg.Connection, program_id: str, job: str) -> dict[str, datetime]:
    """The items of a job with a failure on record, each with the instant of its retry."""
    rows = await connection.fetch(
        "SELECT item, retry_at FROM job_failures WHERE program_id = $1 AND job = $2", program_id, job
    )
    return {row["item"]: row["retry_at"] for row in rows}


async def clear(connection: asyncpg.Connection, program_id: str, job: str, item: str) -> None:
    """In the transaction that did the item: it fails no more."""
    await connection.execute(
        "DELETE FROM job_failures WHERE program_id = $1 AND job = $2 AND item = $3", program_id, job, item
    )


async def forget(connection: asyncpg.Connection, program_id: str, job: str, items: Sequence[str]) -> None:
    """Remove the failures of items no longer owed (a round that read every item due did not meet them)."""
    await connection.execute(
        "DELETE FROM job_failures WHERE program_id = $1 AND job = $2 AND item = ANY($3::text[])",
        program_id,
        job,
        list(items),
    )


async def record(program_id: str, job: str, item: str, error: BaseException, now: datetime) -> int:
    """Record a failure of an item in a transaction of its own; returns its consecutive failures."""

    async def work(connection: asyncpg.Connection) -> int:
        attempts: int = await connection.fetchval(
            "INSERT INTO job_failures AS f (program_id, job, item, attempts, first_failed_at, last_failed_at,"
            " retry_at, last_error) VALUES ($1, $2, $3, 1, $4::timestamptz, $4, $4 + $5::interval, $6)"
            " ON CONFLICT (program_id, job, item) DO UPDATE SET attempts = f.attempts + 1,"
            " last_failed_at = $4::timestamptz,"
            " retry_at = $4 + least($5::interval * 2 ^ least(f.attempts, 16), $7::interval), last_error = $6"
            " RETURNING attempts",
            program_id,
            job,
            item,
            now,
            FIRST_RETRY,
            describe(error),
            LONGEST_RETRY,
        )
        return attempts

    return await in_transaction(work)


async def run_item(
    program_id: str,
    job: str,
    item: str,
    work: Callable[[asyncpg.Connection], Awaitable[T]],
    now: datetime,
    failed_before: Container[str],
) -> T | ItemFailed:
    """Do one item in a transaction of its own (retried on deadlock), removing its failure
    record if it had one (`failed_before`). An error is logged with the item's id, recorded
    with its back-off and returned as `ItemFailed`, not raised: the caller goes on with the
    next item. Cancellation is not an error of the item and goes through."""

    async def attempt(connection: asyncpg.Connection) -> T:
        done = await work(connection)
        if item in failed_before:
            await clear(connection, program_id, job, item)
        return done

    try:
        return await in_transaction(attempt)
    except TRANSIENT:
        raise
    except Exception as error:
        return await failed(program_id, job, item, error, now)


async def drain(
    program_id: str,
    job: str,
    claim: Callable[[asyncpg.Connection, Sequence[str]], Awaitable[Item | None]],
    item_id: Callable[[Item], str],
    handle: Callable[[asyncpg.Connection, Item], Awaitable[object]],
    now: datetime,
    limit: int,
) -> int:
    """Work through a queue one item per transaction: claim one (with SKIP LOCKED, so several
    workers share the queue), handle it, commit; until none is left or `limit` were done.
    Returns how many were done.

    `claim` must leave out the items waiting for a retry (`not_waiting` with `job` and `now`)
    and those it is given (the items that failed in this run, in case their failure could not
    be recorded). An item whose handling fails rolls back alone (its claim too), is logged and
    recorded with its back-off like `run_item`'s, and the queue goes on behind it; its row
    goes in the transaction that finally does it. A failing claim (the queue cannot be read)
    is raised, and so is a `TRANSIENT` error of the handling (not the item's fault)."""
    failed_before = await in_transaction(lambda connection: waiting(connection, program_id, job))
    failed_now: list[str] = []
    claimed: list[str] = []  # the item of the last attempt, once claimed

    async def next_item() -> bool:
        claimed.clear()
        async with transaction() as connection:
            item = await claim(connection, failed_now)
            if item is None:
                return False
            claimed.append(item_id(item))
            await handle(connection, item)
            if claimed[0] in failed_before:
                await clear(connection, program_id, job, claimed[0])
            return True

    done = 0
    while done < limit:
        try:
            if not await with_retry(next_item):
                break
        except TRANSIENT:
            raise  # not the item's: the round ends, as in `run_item`
        except Exception as error:
            if not claimed:
                raise
            await failed(program_id, job, claimed[0], error, now)
            failed_now.append(claimed[0])
            continue
        done += 1
    return done


async def run_items(
    program_id: str,
    job: str,
    now: datetime,
    due: Callable[[asyncpg.Connection], Awaitable[list[str]]],
    pending: str,
    work: Callable[[str], Callable[[asyncpg.Connection], Awaitable[T]]],
    *pending_args: object,
) -> list[T]:
    """A round of a job that works item by item: in one transaction the `due` items are read
    and the failures of items no longer `pending` forgotten (`forget_gone`, with
    `pending_args`); then each item's `work` runs on its own (`run_item`). Returns the
    outcomes of the items done; the failed ones are logged, recorded and left out."""

    async def read(connection: asyncpg.Connection) -> tuple[list[str], dict[str, datetime]]:
        items = await due(connection)
        await forget_gone(connection, program_id, job, pending, *pending_args)
        return items, await waiting(connection, program_id, job)

    items, failed_before = await in_transaction(read)
    outcomes: list[T] = []
    for item in items:
        outcome = await run_item(program_id, job, item, work(item), now, failed_before)
        if not isinstance(outcome, ItemFailed):
            outcomes.append(outcome)
    return outcomes


async def failed(program_id: str, job: str, item: str, error: Exception, now: datetime) -> ItemFailed:
    """Log the failure of an item with its id and record it with its back-off."""
    try:
        attempts = await record(program_id, job, item, error, now)
    except Exception:
        log.exception("job %s could not record the failure of item %s of program %s", job, item, program_id)
        attempts = 0
    log.error(
        "job %s failed on item %s of program %s (failure %d in a row); retried after %s, the other items go on",
        job,
        item,
        program_id,
        attempts,
        retry_delay(max(attempts, 1)),
        exc_info=error,
    )
    return ItemFailed(attempts)


async def failing(connection: asyncpg.Connection, program_id: str) -> list[FailingItem]:
    """Every item of the program's jobs with a failure on record, the longest failing first."""
    rows = await connection.fetch(
        "SELECT job, item, attempts, first_failed_at, retry_at, last_error FROM job_failures"
        " WHERE program_id = $1 ORDER BY first_failed_at, job, item",
        program_id,
    )
    return [FailingItem(**dict(row)) for row in rows]


async def forget_gone(connection: asyncpg.Connection, program_id: str, job: str, pending: str, *args: object) -> None:
    """Remove the failures of a job's items that are no longer pending (done another way, or
    gone): `pending` is a condition on `f.item` ($1 the program, ${3...} `args`). Otherwise
    their rows would stay forever, named in every report and failing `loyalty jobs run`."""
    await connection.execute(
        f"DELETE FROM job_failures f WHERE f.program_id = $1 AND f.job = $2 AND NOT ({pending})",
        program_id,
        job,
        *args,
    )


# Left out of a job's queue while it waits: `NOT EXISTS` of this with the job's name as
# ${job}, the program as $1, the round's instant as ${now} and the item's id as `{item}`.
def not_waiting(job: str, now: str, item: str) -> str:
    """A condition for a job's queue: the item is not waiting for a retry after a failure."""
    return (
        f"NOT EXISTS (SELECT FROM job_failures f WHERE f.program_id = $1 AND f.job = {job}"
        f" AND f.item = {item} AND f.retry_at > {now})"
    )
