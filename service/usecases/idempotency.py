"""Idempotent writes: one effect per key, and the same answer (success or refusal) on retry."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import msgspec

from service.db.transaction import transaction, with_retry
from service.domain.errors import DomainError, IdempotencyKeyReused

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


def fingerprint(operation: str, request: object) -> bytes:
    """A digest of the operation and its request body."""
    return hashlib.sha256(operation.encode() + b"\0" + msgspec.json.encode(request)).digest()


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


async def lock_keys(connection: asyncpg.Connection, program_id: str, keys: list[str]) -> dict[str, Stored]:
    """Take the keys' transaction locks (in a fixed order) and return those already used."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended($1 || '/' || k, 0) AS h"
        " FROM unnest($2::text[]) AS k ORDER BY 1) AS ordered",
        program_id,
        keys,
    )
    rows = await connection.fetch(
        "SELECT key, fingerprint, status_code, response FROM idempotency_keys"
        " WHERE program_id = $1 AND key = ANY($2::text[])",
        program_id,
        keys,
    )
    return {row["key"]: (bytes(row["fingerprint"]), row["status_code"], bytes(row["response"])) for row in rows}


async def run_once(
    program_id: str,
    key: str,
    request_fingerprint: bytes,
    result_type: type[T],
    work: Callable[[asyncpg.Connection], Awaitable[T]],
) -> T:
    """Run work once per (program, key); replay its result or refusal for the same request."""

    async def attempt() -> T | DomainError:
        async with transaction() as connection:
            stored = (await lock_keys(connection, program_id, [key])).get(key)
            if stored is not None:
                return replay(stored, key, request_fingerprint, result_type)
            outcome: T | DomainError
            try:
                async with connection.transaction():  # a savepoint: a refusal undoes only the work
                    outcome = await work(connection)
            except DomainError as refusal:
                outcome = refusal
            status, body = encode_outcome(outcome)
            await connection.execute(
                "INSERT INTO idempotency_keys (program_id, key, fingerprint, status_code, response)"
                " VALUES ($1, $2, $3, $4, $5)",
                program_id,
                key,
                request_fingerprint,
                status,
                body,
            )
            return outcome

    outcome = await with_retry(attempt)
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome
