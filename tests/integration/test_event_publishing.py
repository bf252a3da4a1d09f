"""Publishing the event outbox: by key however long the outbox, and late commits too."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from service.db.events import publish_batch
from service.db.transaction import in_transaction
from service.domain.clock import ManualClock
from service.usecases.dispatch import publish_events
from tests.conftest import ProgramFixture

BACKLOG = 50_000  # outbox rows behind the batch
FAR = 10**15  # a position above any real one, so the batch takes the real rows first
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


async def add_outbox_rows(
    connection: asyncpg.Connection, program_id: str, count: int, position: int | None, tag: str = "near"
) -> None:
    """`count` outbox rows (ids `evt_test_<tag>_<n>`), at the sequence's next positions or at
    position + 1, + 2, ..."""
    await connection.execute(
        "INSERT INTO event_outbox (program_id, id, position, type, customer_id, payload, occurred_at)"
        " SELECT $1, 'evt_test_' || $4::text || '_' || g,"
        " CASE WHEN $3::bigint IS NULL THEN nextval('event_position_seq') ELSE $3::bigint + g END,"
        " 'customer.enrolled', NULL, '{}'::jsonb, $5 FROM generate_series(1, $2) g",
        program_id,
        count,
        position,
        tag,
        NOW,
    )


async def outbox_rows_read(connection: asyncpg.Connection) -> int:
    """Rows of event_outbox this backend has read and not yet reported, whatever the plan."""
    count: int = await connection.fetchval(
        "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'event_outbox'"
    )
    return count


@pytest.mark.parametrize("statistics", ["none", "stale", "fresh"])
async def test_a_batch_takes_its_outbox_rows_by_key_behind_a_long_backlog(
    program: ProgramFixture, owner_connection: asyncpg.Connection, statistics: str
) -> None:
    connection = owner_connection
    outer = connection.transaction()
    await outer.start()
    try:  # everything is rolled back at the end
        if statistics == "stale":  # taken before the backlog: the outbox looks nearly empty
            await connection.execute("ANALYZE event_outbox")
        await add_outbox_rows(connection, program.id, 1000, None)
        await add_outbox_rows(connection, program.id, BACKLOG, FAR, tag="far")
        if statistics == "fresh":
            await connection.execute("ANALYZE event_outbox")
        before = await outbox_rows_read(connection)
        published = await publish_batch(connection, program.id, NOW, 1000)
        rows_read = await outbox_rows_read(connection) - before
        numbered = await connection.fetchval(
            "SELECT count(*) FROM events WHERE program_id = $1 AND id LIKE 'evt_test_near_%'", program.id
        )
    finally:
        await outer.rollback()
    assert (published, numbered) == (1000, 1000)
    assert rows_read <= 2 * 1000, f"{rows_read} outbox rows read to take 1000 of {BACKLOG + 1000}"


async def test_an_event_that_commits_late_is_published_by_the_next_run_in_a_gap_free_feed(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    async def add(connection: asyncpg.Connection, count: int, tag: str) -> None:
        await add_outbox_rows(connection, program.id, count, None, tag)

    async with owner_connection.transaction():  # draws its position first, commits last
        await add(owner_connection, 1, "late")
        await in_transaction(lambda connection: add(connection, 3, "early"))
        first_run = await publish_events(program.id, clock, batch=2)
    second_run = await publish_events(program.id, clock, batch=2)
    seqs = await owner_connection.fetchval(
        "SELECT array_agg(seq ORDER BY seq) FROM events WHERE program_id = $1", program.id
    )
    assert (first_run, second_run) == (3, 1)
    assert seqs == [1, 2, 3, 4]  # the feed stays a gap-free prefix
