"""The hash chain's links change with any change of content or order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec

from service.domain.chain import GENESIS, SealedEntry, SealedPosting, chain_hash, entry_hash

ENTRY = SealedEntry(
    id=1,
    kind="award",
    posted_at=datetime(2026, 11, 23, 12, tzinfo=UTC),
    actor="key:key_1",
    reverses_entry_id=None,
    metadata={"order_id": "o-1", "reason": "checkout"},
    postings=[SealedPosting(1, 10, "POINTS", -50), SealedPosting(2, 11, "POINTS", 50)],
)


def test_hash_is_canonical() -> None:
    same_instant_other_zone = ENTRY.posted_at.astimezone(timezone(timedelta(hours=1)))
    reordered = SealedEntry(
        id=1,
        kind="award",
        posted_at=same_instant_other_zone,
        actor="key:key_1",
        reverses_entry_id=None,
        metadata={"reason": "checkout", "order_id": "o-1"},
        postings=list(reversed(ENTRY.postings)),
    )
    assert entry_hash(reordered) == entry_hash(ENTRY)


def test_any_change_changes_the_hash() -> None:
    tampered = msgspec.structs.replace(
        ENTRY, postings=[SealedPosting(1, 10, "POINTS", -51), SealedPosting(2, 11, "POINTS", 51)]
    )
    assert entry_hash(tampered) != entry_hash(ENTRY)


def test_links_depend_on_the_previous_link() -> None:
    first = chain_hash(GENESIS, entry_hash(ENTRY))
    assert chain_hash(first, b"x" * 32) != chain_hash(GENESIS, b"x" * 32)
