"""Writing one entry per idempotency key: credit-only entries in one statement, the rest
with group commit.

A credit-only entry (a grant: see `credited_only`) needs nothing decided against the
account's state, so it is written, its key claimed and its outcome remembered by one
autocommitted statement (`write_credits_once`): one round trip.

Any other entry goes through group commit: concurrent ledger writes of one program share
a transaction. Each request still gets its own entry, its own idempotency record and its
own answer (a refused entry changes nothing and does not stop the others); what is shared
is the commit, the lock statement and one statement per table. While one batch commits,
the next gathers, so a lone writer waits for nobody and a busy program writes in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from service.db.idempotency import lock_keys_reading_program, remember, replay
from service.db.ledger import (
    EntryToWrite,
    SettingsChanged,
    WrittenEntry,
    is_credit_only,
    write_credits_once,
    write_entries,
    write_entry,
)
from service.db.transaction import UNAVAILABLE, autocommit, transaction, with_retry
from service.domain.errors import DomainError
from service.domain.ledger import EntryDraft
from service.usecases.idempotency import run_once
from service.usecases.ledger_settings import (
    ProgramLedgerSettings,
    forget_settings,
    known_settings,
    ledger_settings,
    settings_from_row,
)

DraftBuilder = Callable[[ProgramLedgerSettings, datetime], EntryDraft]  # pure: it may run more than once
MAX_BATCH = 200
WORKERS = 4  # batches of one program in flight at once: one commits while others build
GRANT_WORKERS = 2  # the same for grants (one statement a batch): fewer, fuller batches measured faster
SETTINGS_ATTEMPTS = 3  # a grant whose settings keep changing under it goes the general way


@dataclass
class PendingEntry:
    """One entry to write once under its idempotency key."""

    key: str
    fingerprint: bytes
    build: DraftBuilder
    actor: str
    now: datetime


@dataclass
class Submission(PendingEntry):
    outcome: asyncio.Future[WrittenEntry] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EntryBatcher:
    """One per program and event loop: turns queued submissions into batched transactions."""

    workers_count = WORKERS

    def __init__(self, program_id: str) -> None:
        self.program_id = program_id
        self.queue: asyncio.Queue[Submission] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.workers = [  # a clean context: never the context (or transaction) of the first caller
            loop.create_task(self._run(), name=f"group-commit:{program_id}:{n}", context=contextvars.Context())
            for n in range(self.workers_count)
        ]

    async def submit(self, submission: Submission) -> WrittenEntry:
        await self.queue.put(submission)
        return await asyncio.shield(submission.outcome)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._commit_isolating_failures(batch)
            except BaseException:  # cancelled at shutdown: nobody may wait forever
                _fail(batch, RuntimeError("the service is shutting down; retry with the same key"))
                raise

    async def _commit_isolating_failures(self, batch: list[Submission]) -> None:
        """Commit the batch; if it fails for a reason other than a refusal, commit each
        request on its own, so one bad request fails alone (unless the database is
        unavailable: then every request gets the failure at once, and may be retried)."""
        try:
            await with_retry(functools.partial(self._commit, batch))
        except Exception as error:
            if len(batch) == 1 or isinstance(error, UNAVAILABLE):
                _fail(batch, error)
                return
            for submission in batch:
                try:
                    await with_retry(functools.partial(self._commit, [submission]))
                except Exception as alone:
                    _fail([submission], alone)

    def fail_queued(self, error: Exception) -> None:
        """Answer everything still queued with error."""
        while not self.queue.empty():
            _fail([self.queue.get_nowait()], error)

    async def _commit(self, batch: list[Submission]) -> None:
        leaders: dict[str, Submission] = {}
        for submission in batch:
            leaders.setdefault(submission.key, submission)
        outcomes: dict[str, WrittenEntry | DomainError] = {}
        async with transaction() as connection:
            stored, program = await lock_keys_reading_program(connection, self.program_id, list(leaders))
            fresh = [s for key, s in leaders.items() if key not in stored]
            if fresh:
                outcomes.update(await self._write(connection, fresh, settings_from_row(program)))
        for submission in batch:
            if submission.outcome.done():
                continue
            leader = leaders[submission.key]
            outcome: WrittenEntry | DomainError
            if submission.key in stored:
                outcome = replay(stored[submission.key], submission.key, submission.fingerprint, WrittenEntry)
            elif submission is leader or submission.fingerprint == leader.fingerprint:
                outcome = outcomes[submission.key]
            else:
                outcome = replay(
                    (leader.fingerprint, 0, b""),
                    submission.key,
                    submission.fingerprint,
                    WrittenEntry,
                )
            _answer(submission, outcome)

    async def _write(
        self,
        connection: asyncpg.Connection,
        fresh: list[Submission],
        settings: ProgramLedgerSettings,
    ) -> dict[str, WrittenEntry | DomainError]:
        """Write the batch; every outcome is remembered under its key in the same statement."""
        now = max(s.now for s in fresh)
        results: dict[str, WrittenEntry | DomainError] = {}
        items: list[EntryToWrite] = []
        built: list[Submission] = []
        refused: list[Submission] = []
        for submission in fresh:
            try:
                items.append(EntryToWrite(submission.build(settings, now), submission.actor))
                built.append(submission)
            except DomainError as refusal:
                results[submission.key] = refusal
                refused.append(submission)
        if refused:
            await remember(
                connection,
                self.program_id,
                [(s.key, s.fingerprint) for s in refused],
                [results[s.key] for s in refused],
            )
        if items:
            keys = [(s.key, s.fingerprint) for s in built]
            written = await write_entries(connection, self.program_id, items, now=now, keys=keys)
            for submission, result in zip(built, written, strict=True):
                results[submission.key] = result
        return results


class GrantBatcher(EntryBatcher):
    """One per program and event loop: concurrent grants (credit-only entries) written by one
    autocommitted statement per batch, which also claims their keys (`write_credits_once`).

    A submission whose entry turns out not to be credit-only goes to the program's
    EntryBatcher. A second request with a key already in the batch gets the first one's
    outcome if it is the same request; if not, it waits for the next batch, where the
    record stored under its key answers it."""

    workers_count = GRANT_WORKERS

    async def _commit(self, batch: list[Submission]) -> None:
        leaders: dict[str, Submission] = {}
        for submission in batch:
            leaders.setdefault(submission.key, submission)
        now = max(s.now for s in leaders.values())
        by_key = await write_credits_at_known_settings(self.program_id, list(leaders.values()), now)
        for submission in batch:
            if submission.outcome.done():
                continue
            if submission.key not in by_key:
                await _batcher(EntryBatcher, self.program_id).queue.put(submission)
            elif submission is leaders[submission.key] or submission.fingerprint == leaders[submission.key].fingerprint:
                _answer(submission, by_key[submission.key])
            else:
                await self.queue.put(submission)


async def write_credits_at_known_settings(
    program_id: str, leaders: Sequence[PendingEntry], now: datetime
) -> dict[str, WrittenEntry | DomainError]:
    """Write the credit-only entries of `leaders` (distinct keys) in one autocommitted
    statement (`write_credits_once`), at the settings this process knows for the program;
    when the database finds them changed (LY001), read them again and build again, up to
    SETTINGS_ATTEMPTS times. The outcomes by key: a key left out (its entry is refused or not
    credit-only, or the settings kept changing) is for the general path, which reads the
    settings in its own transaction and remembers a refusal."""
    for _ in range(SETTINGS_ATTEMPTS):
        settings = await known_settings(program_id)
        requests: list[tuple[str, bytes, EntryToWrite]] = []
        for leader in leaders:
            try:
                item = EntryToWrite(leader.build(settings, now), leader.actor)
            except DomainError:
                continue
            if is_credit_only(item):
                requests.append((leader.key, leader.fingerprint, item))
        if not requests:
            return {}
        try:
            async with autocommit() as connection:
                outcomes = await write_credits_once(
                    connection,
                    program_id,
                    requests,
                    now=now,
                    time_zone=settings.time_zone,
                    expiry=settings.expiry,
                )
        except SettingsChanged:
            forget_settings(program_id)
            continue
        return {key: outcome for (key, _, _), outcome in zip(requests, outcomes, strict=True)}
    return {}


def _answer(submission: Submission, outcome: WrittenEntry | DomainError) -> None:
    if isinstance(outcome, DomainError):
        submission.outcome.set_exception(outcome)
    else:
        submission.outcome.set_result(outcome)


def _fail(submissions: list[Submission], error: BaseException) -> None:
    for submission in submissions:
        if not submission.outcome.done():
            submission.outcome.set_exception(error)


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[type[EntryBatcher], str], EntryBatcher]] = (
    weakref.WeakKeyDictionary()
)


def _batcher(kind: type[EntryBatcher], program_id: str) -> EntryBatcher:
    """The running batcher of that kind for the program, on this event loop."""
    batchers = _batchers.setdefault(asyncio.get_running_loop(), {})
    batcher = batchers.get((kind, program_id))
    if batcher is None or any(worker.done() for worker in batcher.workers):
        batcher = batchers[(kind, program_id)] = kind(program_id)
    return batcher


async def write_once(
    program_id: str, key: str, fingerprint: bytes, build: DraftBuilder, actor: str, now: datetime
) -> WrittenEntry:
    """Write the entry `build` makes, once per idempotency key, in a transaction of its own
    (shared with nobody): a credit-only entry in one autocommitted statement, any other
    through `run_once` and `write_entry`."""
    pending = PendingEntry(key, fingerprint, build, actor, now)
    written = await with_retry(functools.partial(write_credits_at_known_settings, program_id, [pending], now))
    if key in written:
        outcome = written[key]
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    async def work(connection: asyncpg.Connection) -> WrittenEntry:
        draft = build(await ledger_settings(connection, program_id), now)
        return await write_entry(connection, program_id, draft, actor=actor, now=now)

    return await run_once(program_id, key, fingerprint, WrittenEntry, work)


async def post_once(
    program_id: str, key: str, fingerprint: bytes, build: DraftBuilder, actor: str, now: datetime
) -> WrittenEntry:
    """Write the entry `build` makes, once per idempotency key, sharing the work with
    whatever else this program is writing at the same moment: a credit-only entry in one
    statement with the other grants, any other in one transaction with the other entries."""
    settings = await known_settings(program_id)
    try:
        credit_only = is_credit_only(EntryToWrite(build(settings, now), actor))
    except DomainError:
        credit_only = False
    kind = GrantBatcher if credit_only else EntryBatcher
    return await _batcher(kind, program_id).submit(Submission(key, fingerprint, build, actor, now))


async def close_batchers() -> None:
    """Stop the workers of this event loop (at shutdown)."""
    batchers = _batchers.pop(asyncio.get_running_loop(), {})
    for batcher in batchers.values():
        for worker in batcher.workers:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    for batcher in batchers.values():
        batcher.fail_queued(RuntimeError("the service is shutting down; retry with the same key"))
