"""Opaque, time-ordered identifiers with a readable prefix (e.g. `cus_01jd...`)."""

from __future__ import annotations

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
