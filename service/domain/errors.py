"""Domain errors. Each names a stable problem type and the HTTP status it maps to."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """A refusal by the rules of the product; changes nothing."""

    problem_type: ClassVar[str] = "domain-error"
    title: ClassVar[str] = "Request refused"
    status: ClassVar[int] = 422

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra


class InvalidInput(DomainError):
    problem_type = "invalid-input"
    title = "Invalid input"
    status = 422


class NotFound(DomainError):
    problem_type = "not-found"
    title = "Not found"
    status = 404


class Conflict(DomainError):
    problem_type = "conflict"
    title = "Conflict"
    status = 409


class IdempotencyKeyReused(DomainError):
    problem_type = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"
    status = 409


class InsufficientPoints(DomainError):
    problem_type = "insufficient-points"
    title = "Not enough points"
    status = 409


class HoldNotOpen(DomainError):
    problem_type = "hold-not-open"
    title = "The hold is already resolved"
    status = 409


class AlreadyReversed(DomainError):
    problem_type = "already-reversed"
    title = "The entry was already reversed"
    status = 409


class Unauthorized(DomainError):
    problem_type = "unauthorized"
    title = "Missing or invalid credentials"
    status = 401


class Forbidden(DomainError):
    problem_type = "forbidden"
    title = "Not allowed for this credential"
    status = 403
