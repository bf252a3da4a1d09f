"""Request parameters shared by several controllers."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.params import HeaderParameter, PathParameter

from service.domain.customers import NO_NUL
from service.domain.ids import MAX_ROW_ID

ZERO_MINIMUM = {"minimum": 0}  # for optional parameters: Litestar leaves a bound of 0 out of their schema

IdempotencyKey = Annotated[
    str,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Unique per program; a retry with the same key and request replays the first answer.",
    ),
]
EntryId = Annotated[int, PathParameter(title="Entry id", ge=1, le=MAX_ROW_ID)]
AccountId = Annotated[int, PathParameter(title="Account id", ge=1, le=MAX_ROW_ID)]
CustomerId = Annotated[str, PathParameter(title="Customer id", min_length=1, max_length=64)]
ShopId = Annotated[str, PathParameter(title="Shop id", min_length=1, max_length=64)]
# ids named in a request body
CustomerRef = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
HoldRef = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
