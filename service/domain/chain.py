"""Tamper evidence: each program's entries form a hash chain."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import msgspec

GENESIS = bytes(32)


class SealedPosting(msgspec.Struct, frozen=True, array_like=True):
    line: int
    account_id: int
    unit: str
    amount: int


class SealedEntry(msgspec.Struct, frozen=True):
    """Everything about an entry that the chain vouches for."""

    id: int
    kind: str
    posted_at: datetime
    actor: str
    reverses_entry_id: int | None
    metadata: dict[str, Any]
    postings: list[SealedPosting]


_encoder = msgspec.json.Encoder(order="sorted")


def entry_hash(entry: SealedEntry) -> bytes:
    """SHA-256 of the entry's canonical JSON (sorted keys, UTC timestamps)."""
    canonical = msgspec.structs.replace(
        entry,
        posted_at=entry.posted_at.astimezone(UTC),
        postings=sorted(entry.postings, key=lambda posting: posting.line),
    )
    return hashlib.sha256(_encoder.encode(canonical)).digest()


def chain_hash(previous: bytes, current_entry_hash: bytes) -> bytes:
    """The link: SHA-256 of the previous link and this entry's hash."""
    return hashlib.sha256(previous + current_entry_hash).digest()


class ChainBreak(msgspec.Struct, frozen=True):
    seq: int
    entry_id: int
    reason: str
