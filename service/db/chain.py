"""The hash chain in the database: sealing queued entries and verifying the chain."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import msgspec

from service.domain.chain import (
    GENESIS,
    ChainBreak,
    ChainLink,
    SealedEntry,
    SealedPosting,
    chain_hash,
    entry_hash,
)

_ENTRY_CONTENT = (
    "SELECT e.id, e.kind, e.posted_at, e.actor, e.reverses_entry_id, e.metadata,"
    " array_agg(p.line ORDER BY p.line) AS lines, array_agg(p.account_id ORDER BY p.line) AS accounts,"
    " array_agg(p.unit ORDER BY p.line) AS units, array_agg(p.amount ORDER BY p.line) AS amounts"
    " FROM entries e JOIN postings p ON p.program_id = e.program_id AND p.entry_id = e.id"
    " WHERE e.program_id = $1 AND e.id = ANY($2::bigint[])"
    " GROUP BY e.id, e.kind, e.posted_at, e.actor, e.reverses_entry_id, e.metadata"
)


# What the hash leaves out but balances as of an instant and statements read: each posting's
# time (its entry's), and on a customer account its balance_after and account_version (the
# running sum of the account's amounts and the count of its postings, in version order).
# The first sealed entry whose postings do not follow from what is hashed, by seq.
_FIRST_UNDERIVED = (
    "SELECT s.seq, s.entry_id, d.reason FROM ("
    " SELECT p.entry_id, CASE"
    " WHEN p.posted_at IS DISTINCT FROM e.posted_at THEN 'a posting''s time does not match its entry''s'"
    " WHEN a.customer_id IS NULL AND (p.balance_after IS NOT NULL OR p.account_version IS NOT NULL)"
    "  OR a.customer_id IS NOT NULL AND (p.balance_after IS DISTINCT FROM sum(p.amount) OVER running"
    "   OR p.account_version IS DISTINCT FROM row_number() OVER running)"
    " THEN 'a balance after does not match the amounts posted before it' END AS reason"
    " FROM postings p JOIN entries e ON e.program_id = p.program_id AND e.id = p.entry_id"
    " LEFT JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id"
    " WHERE p.program_id = $1"
    " WINDOW running AS (PARTITION BY p.account_id ORDER BY p.account_version, p.entry_id, p.line"
    " ROWS UNBOUNDED PRECEDING)"
    ") AS d JOIN entry_seals s ON s.program_id = $1 AND s.entry_id = d.entry_id"
    " WHERE d.reason IS NOT NULL ORDER BY s.seq LIMIT 1"
)


def _sealed_entry(row: asyncpg.Record) -> SealedEntry:
    return SealedEntry(
        id=row["id"],
        kind=row["kind"],
        posted_at=row["posted_at"],
        actor=row["actor"],
        reverses_entry_id=row["reverses_entry_id"],
        metadata=json.loads(row["metadata"]),
        postings=[
            SealedPosting(line, account, unit, amount)
            for line, account, unit, amount in zip(
                row["lines"], row["accounts"], row["units"], row["amounts"], strict=True
            )
        ],
    )


class Unsealable(msgspec.Struct, frozen=True):
    """A queued entry the sealer cannot hash (its content is missing or cannot be encoded)."""

    entry_id: int
    reason: str


class SealedBatch(msgspec.Struct, frozen=True):
    """The ids a batch sealed, in chain order, and the entry it stopped at, if one stopped it."""

    ids: list[int]
    stuck: Unsealable | None = None


async def seal_batch(connection: asyncpg.Connection, program_id: str, limit: int, after: int = 0) -> SealedBatch:
    """Seal up to `limit` committed entries queued with an id above `after`, in entry order;
    one sealer per program at a time.

    The chain is the entries in id order and may not skip one: an entry that cannot be
    hashed ends the batch. The entries before it are sealed and it is returned as `stuck`;
    it and every entry after it stay queued until it is mended."""
    got_lock = await connection.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended('seal:' || $1, 0))", program_id
    )
    if not got_lock:
        return SealedBatch([])
    # by key in the primary key's order, whatever the statistics say (migration 0014)
    queued = await connection.fetch(
        "SELECT q.entry_id FROM take_seal_batch($1, $2, $3) AS q (entry_id)", program_id, after, limit
    )
    if not queued:
        return SealedBatch([])
    ids = sorted(row["entry_id"] for row in queued)
    last = await connection.fetchrow(
        "SELECT seq, chain_hash FROM entry_seals WHERE program_id = $1 ORDER BY seq DESC LIMIT 1",
        program_id,
    )
    seq, previous = (last["seq"], bytes(last["chain_hash"])) if last else (0, GENESIS)
    contents: dict[int, SealedEntry | Unsealable] = {}
    for row in await connection.fetch(_ENTRY_CONTENT, program_id, ids):
        try:
            contents[row["id"]] = _sealed_entry(row)
        except (ValueError, TypeError, msgspec.ValidationError) as error:
            contents[row["id"]] = Unsealable(row["id"], f"{type(error).__name__}: {error}")
    seqs, entry_ids, entry_hashes, chain_hashes = [], [], [], []
    stuck: Unsealable | None = None
    for entry_id in ids:
        content = contents.get(entry_id, Unsealable(entry_id, "the entry or its postings are missing"))
        try:
            digest = content if isinstance(content, Unsealable) else entry_hash(content)
        except (ValueError, TypeError, msgspec.EncodeError) as error:
            digest = Unsealable(entry_id, f"{type(error).__name__}: {error}")
        if isinstance(digest, Unsealable):
            stuck = digest
            break
        previous = chain_hash(previous, digest)
        seq += 1
        seqs.append(seq)
        entry_ids.append(entry_id)
        entry_hashes.append(digest)
        chain_hashes.append(previous)
    if entry_ids:
        await connection.execute(
            "INSERT INTO entry_seals (program_id, seq, entry_id, entry_hash, chain_hash)"
            " SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bytea[], $5::bytea[])",
            program_id,
            seqs,
            entry_ids,
            entry_hashes,
            chain_hashes,
        )
    if stuck is not None:  # taken from the queue with the batch: they go back, unsealed
        await connection.execute(
            "INSERT INTO seal_queue (program_id, entry_id) SELECT $1, unnest($2::bigint[])",
            program_id,
            ids[len(entry_ids) :],
        )
    return SealedBatch(entry_ids, stuck)


async def oldest_unsealed(connection: asyncpg.Connection, program_id: str) -> asyncpg.Record | None:
    """The first entry in the program's seal queue (the one the chain waits for): its id and
    `posted_at`, or None when everything is sealed."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT e.id, e.posted_at FROM entries e WHERE e.program_id = $1 AND e.id = ("
        " SELECT q.entry_id FROM seal_queue q WHERE q.program_id = $1 ORDER BY q.entry_id LIMIT 1)",
        program_id,
    )
    return row


async def iter_chain_breaks(
    connection: asyncpg.Connection, program_id: str, page: int = 2000, watch: int | None = None
) -> AsyncIterator[ChainBreak | ChainLink | tuple[int, ChainLink | None]]:
    """Walk the chain in seq order, recomputing every hash; yield breaks, the recomputed link
    at seq `watch` when the walk passes it, and at the end (links walked, the last link) if
    no break stopped the walk. A sealed entry whose postings' unhashed columns do not follow
    from what is hashed breaks it too."""
    previous, seq, count = GENESIS, 0, 0
    last: ChainLink | None = None
    underived = await connection.fetchrow(_FIRST_UNDERIVED, program_id)
    while True:
        seals = await connection.fetch(
            "SELECT seq, entry_id, entry_hash, chain_hash FROM entry_seals"
            " WHERE program_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            program_id,
            seq,
            page,
        )
        if not seals:
            break
        contents = {
            row["id"]: _sealed_entry(row)
            for row in await connection.fetch(_ENTRY_CONTENT, program_id, [s["entry_id"] for s in seals])
        }
        for seal in seals:
            count += 1
            if seal["seq"] != seq + 1:
                yield ChainBreak(seal["seq"], seal["entry_id"], f"sequence jumps from {seq} to {seal['seq']}")
            seq = seal["seq"]
            content = contents.get(seal["entry_id"])
            if content is None:
                yield ChainBreak(seq, seal["entry_id"], "entry or its postings are missing")
                return
            digest = entry_hash(content)
            if digest != bytes(seal["entry_hash"]):
                yield ChainBreak(seq, seal["entry_id"], "entry content does not match its sealed hash")
                return
            previous = chain_hash(previous, digest)
            if previous != bytes(seal["chain_hash"]):
                yield ChainBreak(seq, seal["entry_id"], "chain hash does not follow from the previous link")
                return
            if underived is not None and underived["seq"] == seq:
                yield ChainBreak(seq, seal["entry_id"], underived["reason"])
                return
            last = ChainLink(seq, seal["entry_id"], previous.hex())
            if seq == watch:
                yield last
    yield (count, last if count else None)
