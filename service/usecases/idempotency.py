"""Idempotent writes: one effect per key, and the same answer (success or refusal) on retry."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import asyncpg
import msgspec

from service.db.idempotency import lock_keys, remember, replay
from service.db.transaction import in_transaction, transaction, with_retry
from service.domain.errors import DomainError, IdempotencyKeyReused

T = TypeVar("T")


def derived_key(kind: str, *ids: str) -> str:
    """The idempotency key of a request identified by ids its client chose (a shop's order id,
    a refund id): a digest of them, so ids of any length and content fit and no two
    requests share a key; its first character is one no `Idempotency-Key` header can carry."""
    return f"\x1f{kind}:" + hashlib.sha256(msgspec.json.encode([kind, *ids])).hexdigest()


def fingerprint(operation: str, request: object) -> bytes:
    """A digest of the operation and its request body."""
    return hashlib.sha256(operation.encode() + b"\0" + msgspec.json.encode(request)).digest()


@contextmanager
def reuse_named(detail: str, field: str) -> Iterator[None]:
    """Refuse the reuse of a key the client chose in the body (an order or refund id behind a
    `derived_key`, a bulk grant's `key`) by that `field`, not by an `Idempotency-Key` header
    the client did not send (nor a derived key's digest)."""
    try:
        yield
    except IdempotencyKeyReused:
        raise IdempotencyKeyReused(detail, field=field) from None


class _Refused(Exception):
    """Carries a refusal out of the transaction of the work, so that rolls back."""

    def __init__(self, refusal: DomainError) -> None:
        self.refusal = refusal


async def run_once(
    program_id: str,
    key: str,
    request_fingerprint: bytes,
    result_type: type[T],
    work: Callable[[asyncpg.Connection], Awaitable[T]],
) -> T:
    """Run work once per (program, key); replay its result or refusal for the same request.

    The work and its record commit together. A refusal rolls the work back and is recorded
    in a transaction of its own (unless the key was used meanwhile: then that record
    answers), so success, the common case, needs no savepoint."""

    async def attempt() -> T | DomainError:
        async with transaction() as connection:
            stored = (await lock_keys(connection, program_id, [key])).get(key)
            if stored is not None:
                return replay(stored, key, request_fingerprint, result_type)
            try:
                outcome = await work(connection)
            except DomainError as refusal:
                if not refusal.remembered:
                    raise
                raise _Refused(refusal) from refusal
            await remember(connection, program_id, [(key, request_fingerprint)], [outcome])
            return outcome

    async def record(refusal: DomainError) -> T | DomainError:
        async with transaction() as connection:
            stored = (await lock_keys(connection, program_id, [key])).get(key)
            if stored is not None:
                return replay(stored, key, request_fingerprint, result_type)
            await remember(connection, program_id, [(key, request_fingerprint)], [refusal])
            return refusal

    try:
        outcome = await with_retry(attempt)
    except _Refused as refused:
        outcome = await with_retry(functools.partial(record, refused.refusal))
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


async def run_once_if_keyed(
    program_id: str,
    key: str | None,
    request_fingerprint: Callable[[], bytes],
    result_type: type[T],
    work: Callable[[asyncpg.Connection], Awaitable[T]],
) -> T:
    """`run_once` under `key`; without one (callers inside the service: the CLI, the demo
    seeding) the work runs once in a transaction of its own."""
    if key is None:
        return await in_transaction(work)
    return await run_once(program_id, key, request_fingerprint(), result_type, work)
