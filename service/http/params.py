"""Request parameters shared by several controllers."""

from __future__ import annotations

from typing import Annotated

from litestar.params import HeaderParameter

IdempotencyKey = Annotated[
    str,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Unique per program; a retry with the same key and request replays the first answer.",
    ),
]
