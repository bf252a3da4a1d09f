"""Group commit: concurrent ledger writes of one program share a transaction.

Each request still gets its own entry, its own idempotency record and its own answer
(a refused entry changes nothing and does not stop the others); what is shared is the
commit, the lock statement and one statement per table. While one batch commits, the
next gathers, so a lone writer waits for nobody and a busy program writes in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from service.db.ledger import EntryToWrite, WrittenEntry, write_entries
from service.db.transaction import transaction, with_retry
from service.domain.errors import DomainError
from service.domain.ledger import EntryDraft
from service.usecases.idempotency import encode_outcome, lock_keys, replay
from service.usecases.ledger_settings import ProgramLedgerSettings, ledger_settings

DraftBuilder = Callable[[ProgramLedgerSettings, datetime], EntryDraft]
MAX_BATCH = 200


@dataclass
class Submission:
    key: str
    fingerprint: bytes
    build: DraftBuilder
    actor: str
    now: datetime
    outcome: asyncio.Future[WrittenEntry] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class EntryBatcher:
    """One per program and event loop: turns queued submissions into batched transactions."""

    def __init__(self, program_id: str) -> None:
        self.program_id = program_id
        self.queue: asyncio.Queue[Submission] = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._run(), name=f"group-commit:{program_id}")

    async def submit(self, submission: Submission) -> WrittenEntry:
        await self.queue.put(submission)
        return await asyncio.shield(submission.outcome)

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await with_retry(lambda: self._commit(batch))
            except Exception as error:  # noqa: BLE001 - each waiter gets the failure
                for submission in batch:
                    if not submission.outcome.done():
                        submission.outcome.set_exception(error)

    async def _commit(self, batch: list[Submission]) -> None:
        leaders: dict[str, Submission] = {}
        for submission in batch:
            leaders.setdefault(submission.key, submission)
        outcomes: dict[str, WrittenEntry | DomainError] = {}
        async with transaction() as connection:
            stored = await lock_keys(connection, self.program_id, list(leaders))
            fresh = [s for key, s in leaders.items() if key not in stored]
            if fresh:
                written = await self._write(connection, fresh)
                outcomes.update(written)
                await _remember(connection, self.program_id, fresh, written)
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
                outcome = replay((leader.fingerprint, 0, b""), submission.key, submission.fingerprint, WrittenEntry)
            if isinstance(outcome, DomainError):
                submission.outcome.set_exception(outcome)
            else:
                submission.outcome.set_result(outcome)

    async def _write(
        self, connection: asyncpg.Connection, fresh: list[Submission]
    ) -> dict[str, WrittenEntry | DomainError]:
        settings = await ledger_settings(connection, self.program_id)
        now = max(s.now for s in fresh)
        results: dict[str, WrittenEntry | DomainError] = {}
        items: list[EntryToWrite] = []
        keys: list[str] = []
        for submission in fresh:
            try:
                items.append(EntryToWrite(submission.build(settings, now), submission.actor))
                keys.append(submission.key)
            except DomainError as refusal:
                results[submission.key] = refusal
        for key, result in zip(keys, await write_entries(connection, self.program_id, items, now=now), strict=True):
            results[key] = result
        return results


async def _remember(
    connection: asyncpg.Connection,
    program_id: str,
    fresh: list[Submission],
    outcomes: dict[str, WrittenEntry | DomainError],
) -> None:
    encoded = [encode_outcome(outcomes[s.key]) for s in fresh]
    await connection.execute(
        "INSERT INTO idempotency_keys (program_id, key, fingerprint, status_code, response)"
        " SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::int[], $5::bytea[])",
        program_id,
        [s.key for s in fresh],
        [s.fingerprint for s in fresh],
        [status for status, _ in encoded],
        [body for _, body in encoded],
    )


_batchers: dict[tuple[int, str], EntryBatcher] = {}


async def post_once(
    program_id: str, key: str, fingerprint: bytes, build: DraftBuilder, actor: str, now: datetime
) -> WrittenEntry:
    """Write the entry `build` makes, once per idempotency key, sharing the commit with
    whatever else this program is writing at the same moment."""
    loop_id = id(asyncio.get_running_loop())
    batcher = _batchers.get((loop_id, program_id))
    if batcher is None or batcher.worker.done():
        batcher = _batchers[(loop_id, program_id)] = EntryBatcher(program_id)
    return await batcher.submit(Submission(key, fingerprint, build, actor, now))


async def close_batchers() -> None:
    """Stop the workers of this event loop (at shutdown)."""
    loop_id = id(asyncio.get_running_loop())
    for (owner, program_id), batcher in list(_batchers.items()):
        if owner != loop_id:
            continue
        batcher.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batcher.worker
        del _batchers[(owner, program_id)]
