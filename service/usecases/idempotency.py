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
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{program_id}/{key}"
            )
            row = await connection.fetchrow(
                "SELECT fingerprint, status_code, response FROM idempotency_keys"
                " WHERE program_id = $1 AND key = $2",
                program_id,
                key,
            )
            if row is not None:
                if row["fingerprint"] != request_fingerprint:
                    return IdempotencyKeyReused(
                        f"idempotency key {key!r} was used for a different request",
                        field="Idempotency-Key",
                    )
                if row["status_code"] == 200:
                    return msgspec.json.decode(row["response"], type=result_type)
                return replay_refusal(msgspec.json.decode(row["response"], type=StoredRefusal))
            outcome: T | DomainError
            try:
                async with connection.transaction():  # a savepoint: a refusal undoes only the work
                    outcome = await work(connection)
                status, body = 200, msgspec.json.encode(outcome)
            except DomainError as refusal:
                outcome = refusal
                stored = StoredRefusal(
                    problem_type=refusal.problem_type,
                    detail=refusal.detail,
                    status=refusal.status,
                    field=refusal.field,
                    extra=refusal.extra,
                )
                status, body = refusal.status, msgspec.json.encode(stored)
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
