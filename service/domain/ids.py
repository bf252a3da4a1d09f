"""Opaque, time-ordered identifiers with a readable prefix (e.g. `cus_01jd...`), the bound
of the database's bigint row ids, and URL-safe base64 for opaque tokens and cursors."""

from __future__ import annotations

import base64
import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """A 26-character monotonic ULID (48 bits of milliseconds, 80 random bits) with a prefix.

    Ids made by one process sort in the order they were made, even within a millisecond.
    """
    global _last
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    value = (millis << _RANDOM_BITS) | int.from_bytes(os.urandom(10), "big")
    with _lock:
        if value <= _last:
            value = _last + 1
        _last = value
    return f"{prefix}_{_encode(value, 26)}"


MAX_ROW_ID = 2**63 - 1  # ids of entries and accounts are bigint


def b64url(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The bytes of `b64url` text (binascii.Error, a ValueError, if it is not)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
