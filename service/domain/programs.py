"""Programs (tenants), shops and API keys as plain records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from service.domain.access import Scope
from service.domain.errors import InvalidInput
from service.domain.patterns import END

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]  # no NUL


class ProgramSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What an admin chooses when creating a program."""

    name: Name
    time_zone: str = "Europe/Amsterdam"
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}" + END)] = "EUR"
    point_value_minor: Annotated[int, msgspec.Meta(gt=0)] = 1

    def validated(self) -> ProgramSettings:
        """Check what the type system cannot: that the time zone exists."""
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"unknown time zone {self.time_zone!r}", field="time_zone") from None
        return self


class Program(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    time_zone: str
    currency: str
    point_value_minor: int
    created_at: datetime

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


class Shop(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: datetime


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A key without its secret; `shop_id` is the one shop it acts for (None: every shop)."""

    id: str
    name: str
    scope: Scope
    shop_id: str | None
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A new key with its plain text, which is never shown again."""

    id: str
    name: str
    scope: Scope
    shop_id: str | None
    created_at: datetime
    key: str
