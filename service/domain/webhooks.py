"""Webhooks by the Standard Webhooks scheme: secrets, signatures, and the retry schedule.

A message is signed with HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, keyed
by the bytes of the endpoint's secret (`whsec_` + base64); the `webhook-signature` header
is `v1,` + base64 of the digest. After a rotation the previous secret stays valid for a grace
period, and messages carry one signature per secret in force (space-separated, newest first).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import msgspec

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_BYTES = 24
SIGNATURE_VERSION = "v1"
TIMESTAMP_TOLERANCE_S = 300  # receivers refuse messages older or newer than this
PREVIOUS_SECRET_VALID_S = 86_400  # how long a rotated-out secret still signs, by default
MAX_PREVIOUS_SECRET_VALID_S = 604_800


def new_secret() -> str:
    """A fresh endpoint secret, `whsec_` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (the base64-decoded part)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of a message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def headers(signing_secrets: str | Sequence[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of a message, signed with each secret in turn."""
    keys = [signing_secrets] if isinstance(signing_secrets, str) else list(signing_secrets)
    if not keys:
        raise ValueError("a message is signed with at least one secret")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(key, message_id, timestamp, body) for key in keys),
    }


class Rotation(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint's secrets after a rotation: the new one, and the one it replaces while it
    stays valid (None when retired at once)."""

    secret: str
    previous_secret: str | None
    previous_secret_until: datetime | None


def rotate(current: str, previous_valid_for_s: int, now: datetime) -> Rotation:
    """A new secret; the current one stays valid for `previous_valid_for_s` seconds (0: not at
    all). Any older previous secret is dropped: only one is kept."""
    if not 0 <= previous_valid_for_s <= MAX_PREVIOUS_SECRET_VALID_S:
        raise ValueError(f"previous_valid_for_s is 0 to {MAX_PREVIOUS_SECRET_VALID_S}")
    if previous_valid_for_s == 0:
        return Rotation(secret=new_secret(), previous_secret=None, previous_secret_until=None)
    until = now + timedelta(seconds=previous_valid_for_s)
    return Rotation(secret=new_secret(), previous_secret=current, previous_secret_until=until)


def secrets_in_force(
    secret: str, previous_secret: str | None, previous_secret_until: datetime | None, now: datetime
) -> list[str]:
    """The secrets a message sent at `now` is signed with: the current one, then the previous
    one while its grace period lasts."""
    if previous_secret is not None and previous_secret_until is not None and now < previous_secret_until:
        return [secret, previous_secret]
    return [secret]


def verify(
    secret: str, received: Mapping[str, str], body: bytes, now: int, tolerance_s: int = TIMESTAMP_TOLERANCE_S
) -> bool:
    """What a receiver does: the timestamp is recent and one of the signatures matches."""
    try:
        message_id = received["webhook-id"]
        timestamp = int(received["webhook-timestamp"])
        presented = received["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, message_id, timestamp, body).encode()
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in presented)


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential back-off with full jitter, for a bounded time.

    The n-th retry waits a random time in [delay/2, delay] with delay = base * 2^(n-1),
    capped at `max_delay_s`; no retry is scheduled later than `retry_for_s` after the
    delivery's first attempt was due.
    """

    base_delay_s: float = 5.0
    max_delay_s: float = 3600.0
    retry_for_s: float = 86_400.0


def retry_delay(policy: RetryPolicy, attempts: int, rng: random.Random | None = None) -> timedelta:
    """How long to wait after the `attempts`-th failed attempt (1 for the first failure)."""
    exponent = min(max(attempts - 1, 0), 62)
    delay = min(policy.base_delay_s * 2.0**exponent, policy.max_delay_s)
    jitter = (rng or random).uniform(0.5, 1.0)
    return timedelta(seconds=delay * jitter)


def next_attempt(
    policy: RetryPolicy, attempts: int, retry_from: datetime, now: datetime, rng: random.Random | None = None
) -> datetime | None:
    """When to try again after a failed attempt, or None when the retry time is used up."""
    due = now + retry_delay(policy, attempts, rng)
    if due > retry_from + timedelta(seconds=policy.retry_for_s):
        return None
    return due


def should_disable(consecutive_failures: int, disable_after: int) -> bool:
    """An endpoint whose last `disable_after` attempts all failed is disabled."""
    return consecutive_failures >= disable_after


def is_success(status_code: int) -> bool:
    """Only a 2xx answer confirms a delivery (a redirect is not followed and counts as failure)."""
    return 200 <= status_code < 300
