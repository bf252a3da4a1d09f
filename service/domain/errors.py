"""Domain errors. Each names a stable problem type and the HTTP status it maps to."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """A refusal by the rules of the product; changes nothing."""

    problem_type: ClassVar[str] = "domain-error"
    title: ClassVar[str] = "Request refused"
    status: ClassVar[int] = 422
    remembered: ClassVar[bool] = True  # kept under the request's idempotency key, and replayed

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra

    def headers(self) -> dict[str, str] | None:
        """HTTP headers the refusal's answer carries besides its problem document."""
        return None


class InvalidInput(DomainError):
    """The request is well-formed but a field breaks a rule; `field` names it."""

    problem_type = "invalid-input"
    title = "Invalid input"
    status = 422


class NotFound(DomainError):
    """Nothing with that id in the caller's program (other programs' data is never visible)."""

    problem_type = "not-found"
    title = "Not found"
    status = 404


class NotYetThere(NotFound):
    """Something the request names does not exist yet (a customer still being enrolled, an
    order still on its way): not remembered under the idempotency key, so the same request
    succeeds once it exists."""

    remembered = False


class Conflict(DomainError):
    """The request contradicts what is recorded (e.g. an enrolment with other details)."""

    problem_type = "conflict"
    title = "Conflict"
    status = 409


class TooManyEndpoints(Conflict):
    """The program has as many webhook endpoints as it may (`limit`). Not remembered under
    the idempotency key, so the same request succeeds once an endpoint is deleted."""

    remembered = False


class IdempotencyKeyReused(DomainError):
    """The Idempotency-Key was first used for a different request; nothing was done."""

    problem_type = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"
    status = 409


class ApiKeySecretShownOnce(DomainError):
    """The Idempotency-Key made an API key in an earlier request, whose answer was the only one
    to show the key's secret (only its hash is stored). `api_key` is that key without its
    secret: use the secret from the first answer, or revoke the key and make another with a
    new Idempotency-Key."""

    problem_type = "api-key-secret-shown-once"
    title = "The API key was made by an earlier request; its secret is shown only once"
    status = 409


class EventUnreadable(DomainError):
    """The next event of the feed is one this version of the service cannot read (written by
    a newer version during a rolling deploy): retry, another instance may read it. Never
    skipped, so a consumer's cursor never passes an event it did not get."""

    problem_type = "event-unreadable"
    title = "The next event cannot be read by this instance"
    status = 503
    remembered = False

    def headers(self) -> dict[str, str]:
        """Retry shortly."""
        return {"Retry-After": "5"}


class InsufficientPoints(DomainError):
    """The balance does not cover the request; `available` and `requested` say by how much."""

    problem_type = "insufficient-points"
    title = "Not enough points"
    status = 409


class HoldNotOpen(DomainError):
    """The hold was already captured, voided or expired; `hold_status` says which."""

    problem_type = "hold-not-open"
    title = "The hold is already resolved"
    status = 409


class HoldNotCaptured(DomainError):
    """An order may only name a captured hold as what paid for it; `hold_status` is the hold's
    (`open`, `voided` or `expired`)."""

    problem_type = "hold-not-captured"
    title = "The hold is not captured"
    status = 409


class HoldNotCapturedYet(HoldNotCaptured):
    """The hold is still open: not remembered under the idempotency key, so the same order
    succeeds once the hold is captured."""

    remembered = False


class AlreadyReversed(DomainError):
    """The entry was reversed before; an entry is reversed at most once."""

    problem_type = "already-reversed"
    title = "The entry was already reversed"
    status = 409


class Unauthorized(DomainError):
    """No credential, or one that is unknown, malformed, revoked or expired."""

    problem_type = "unauthorized"
    title = "Missing or invalid credentials"
    status = 401

    def headers(self) -> dict[str, str]:
        """RFC 9110: a 401 says which authentication scheme would be accepted."""
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(DomainError):
    """The credential is valid but its scope (or its shop) does not allow this operation.
    A refusal of the credential, not of the request: never kept under an idempotency key,
    so the same request with a credential that may make it still can."""

    problem_type = "forbidden"
    title = "Not allowed for this credential"
    status = 403
    remembered = False


# --- Referral refusals: each names the rule that refused (`rule`), and changes nothing ---


class ReferralsDisabled(DomainError):
    """The program does not take referral codes now (its referral settings are disabled)."""

    problem_type = "referrals-disabled"
    title = "Referrals are not enabled"
    status = 409


class ReferralCodeDisabled(DomainError):
    """An admin disabled the referral code; `reason` says why."""

    problem_type = "referral-code-disabled"
    title = "The referral code is disabled"
    status = 409


class SelfReferral(DomainError):
    """A customer tried to redeem their own referral code."""

    problem_type = "referral-self-referral"
    title = "Self-referral is not allowed"
    status = 409


class RefereeAlreadyReferred(DomainError):
    """The customer has already redeemed a referral code (another one); a customer is referred once."""

    problem_type = "referral-already-referred"
    title = "The customer was already referred"
    status = 409


class RedeemWindowClosed(DomainError):
    """The redeem window after the customer's enrolment has passed; `closed_at` says when it closed."""

    problem_type = "referral-redeem-window-closed"
    title = "Too late to redeem a referral code"
    status = 409


class RefereeHasOrders(DomainError):
    """Only a customer without orders may redeem a referral code (fraud rule `referee_has_orders`)."""

    problem_type = "referral-referee-has-orders"
    title = "The customer already has orders"
    status = 409


class SharedEmail(DomainError):
    """The referee's normalised email address is the referrer's (fraud rule `shared_email`)."""

    problem_type = "referral-shared-email"
    title = "Referrer and referee share an email address"
    status = 409


class SharedDevice(DomainError):
    """A device hash of the referee is one of the referrer's (fraud rule `shared_device`)."""

    problem_type = "referral-shared-device"
    title = "Referrer and referee share a device"
    status = 409


class SharedPayment(DomainError):
    """A payment fingerprint of the referee is one of the referrer's (fraud rule `shared_payment`)."""

    problem_type = "referral-shared-payment"
    title = "Referrer and referee share a payment method"
    status = 409


class ReferralCapReached(DomainError):
    """The code's owner reached the program's cap of referrals per period; `cap` and `period_days` say which."""

    problem_type = "referral-cap-reached"
    title = "The referrer's cap is reached"
    status = 409


def described(error: BaseException, limit: int) -> str:
    """An unexpected error as a log or a record keeps it: its type and message, at most `limit`
    characters."""
    return f"{type(error).__name__}: {error}"[:limit]
