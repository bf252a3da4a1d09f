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


class ChainLink(msgspec.Struct, frozen=True):
    """A link as verification recomputed it: its position, entry and chain hash (hex). The
    latest one, recorded outside the service, is an anchor: a later verification against it
    shows entries removed from the end or the chain rewritten up to it."""

    seq: int
    entry_id: int
    chain_hash: str


def anchor_break(anchor_seq: int, anchor_hash: str, link: ChainLink | None, last_seq: int) -> ChainBreak | None:
    """Why the recomputed chain does not hold the anchor (`link` is its link at anchor_seq,
    None if the chain has no link there: it ends before it, or skips it), or None if it does."""
    if link is None and last_seq >= anchor_seq:
        return ChainBreak(anchor_seq, 0, f"the chain has no link at the anchored seq {anchor_seq}")
    if link is None:
        return ChainBreak(anchor_seq, 0, f"the chain ends at seq {last_seq}, before the anchored seq {anchor_seq}")
    if link.chain_hash != anchor_hash.lower():
        return ChainBreak(anchor_seq, link.entry_id, "the chain hash at the anchored seq is not the anchored one")
    return None
