"""Rate limits per credential: a token bucket, free of I/O and of the wall clock."""

from __future__ import annotations

import math
from collections import OrderedDict

from service.domain.errors import DomainError


class RateLimited(DomainError):
    """Too many requests with this credential; `retry_after_s` says when to try again."""

    problem_type = "rate-limited"
    title = "Too many requests"
    status = 429

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.extra.get("retry_after_s", 1))}


class TokenBucket:
    """`rate` requests a second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Take one request; 0.0 if allowed, else the seconds until one would be."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per credential, the least recently used forgotten past `capacity`."""

    def __init__(self, rate: float, burst: int, capacity: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, credential: str, now: float) -> None:
        """RateLimited if the credential has used up its requests."""
        bucket = self.buckets.get(credential)
        if bucket is None:
            bucket = self.buckets[credential] = TokenBucket(self.rate, self.burst, now)
            if len(self.buckets) > self.capacity:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(credential)
        wait = bucket.take(now)
        if wait:
            retry_after = max(1, math.ceil(wait))
            raise RateLimited(
                f"more than {self.rate:g} requests a second (bursts of {self.burst}) with this credential",
                retry_after_s=retry_after,
            )
