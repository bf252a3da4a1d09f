"""Idempotency records: what a key's first request produced, kept so a retry gets it again."""

from __future__ import annotations

from typing import Any, TypeVar

import asyncpg
import msgspec

from service.domain.errors import DomainError, IdempotencyKeyReused, NotFound

T = TypeVar("T")


class StoredRefusal(msgspec.Struct, frozen=True):
    problem_type: str
    detail: str
    status: int
    field: str | None = None
    extra: dict[str, Any] = {}


def _refusal_classes() -> dict[str, type[DomainError]]:
    classes: dict[str, type[DomainError]] = {}
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        cls = pending.pop()
        classes.setdefault(cls.problem_type, cls)
        pending.extend(cls.__subclasses__())
    return classes


def replay_refusal(stored: StoredRefusal) -> DomainError:
    """The refusal remembered under a key, as the same error class it was first raised as."""
    cls = _refusal_classes().get(stored.problem_type, DomainError)
    return cls(stored.detail, field=stored.field, **stored.extra)


Stored = tuple[bytes, int, bytes]  # fingerprint, status code, response


def encode_outcome(outcome: object) -> tuple[int, bytes]:
    """What is remembered under a key: 200 and the result, or the refusal's status and problem."""
    if isinstance(outcome, DomainError):
        stored = StoredRefusal(
            problem_type=outcome.problem_type,
            detail=outcome.detail,
            status=outcome.status,
            field=outcome.field,
            extra=outcome.extra,
        )
        return outcome.status, msgspec.json.encode(stored)
    return 200, msgspec.json.encode(outcome)


def replay(stored: Stored, key: str, request_fingerprint: bytes, result_type: type[T]) -> T | DomainError:
    """The remembered answer for a retry, or a refusal if the key was used for another request."""
    stored_fingerprint, status, body = stored
    if stored_fingerprint != request_fingerprint:
        return IdempotencyKeyReused(
            f"idempotency key {key!r} was used for a different request", field="Idempotency-Key"
        )
    if status == 200:
        return msgspec.json.decode(body, type=result_type)
    return replay_refusal(msgspec.json.decode(body, type=StoredRefusal))


def _stored(rows: list[asyncpg.Record]) -> dict[str, Stored]:
    return {row["key"]: (bytes(row["fingerprint"]), row["status_code"], bytes(row["response"])) for row in rows}


async def lock_keys(connection: asyncpg.Connection, program_id: str, keys: list[str]) -> dict[str, Stored]:
    """Take the keys' transaction locks (in a fixed order) and return those already used,
    in one round trip."""
    rows = await connection.fetch(
        "SELECT key, fingerprint, status_code, response FROM lock_idempotency_keys($1, $2::text[])"
        " WHERE key IS NOT NULL",
        program_id,
        keys,
    )
    return _stored(rows)


async def lock_keys_reading_program(
    connection: asyncpg.Connection, program_id: str, keys: list[str]
) -> tuple[dict[str, Stored], asyncpg.Record]:
    """lock_keys and a read of the program's ledger settings, in one round trip."""
    rows = await connection.fetch("SELECT * FROM lock_idempotency_keys($1, $2::text[])", program_id, keys)
    if not rows:
        raise NotFound(f"program {program_id} not found")
    return _stored([row for row in rows if row["key"] is not None]), rows[0]


async def remember(
    connection: asyncpg.Connection,
    program_id: str,
    keys: list[tuple[str, bytes]],
    outcomes: list[Any],
) -> None:
    """Store each key's fingerprint and outcome (result or refusal)."""
    encoded = [encode_outcome(outcome) for outcome in outcomes]
    await connection.execute(
        "INSERT INTO idempotency_keys (program_id, key, fingerprint, status_code, response)"
        " SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::int[], $5::bytea[])",
        program_id,
        [key for key, _ in keys],
        [fingerprint for _, fingerprint in keys],
        [status for status, _ in encoded],
        [body for _, body in encoded],
    )
