"""Customers (members of a program)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from service.domain.errors import InvalidInput
from service.domain.patterns import END

# PostgreSQL text cannot hold NUL (U+0000), so no text field accepts it.
NO_NUL = r"^[^\x00]*$"
ExternalId = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Email = Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+" + END)]
PersonName = Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)]
ShopRef = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]  # a shop id named in a body
MAX_ATTRIBUTE_DEPTH = 32
# Every customer read answers its attributes (200 to a page of customers), so they are kept small.
MAX_ATTRIBUTES_BYTES = 16 * 1024  # encoded as compact JSON, in UTF-8


class Customer(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    external_id: str
    shop_id: str | None
    email: str | None
    name: str | None
    attributes: dict[str, Any]
    enrolled_at: datetime
    updated_at: datetime


class Enrolment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a shop sends to enrol a customer."""

    external_id: ExternalId
    email: Email | None = None
    name: PersonName | None = None
    shop_id: ShopRef | None = None
    attributes: dict[str, Any] = {}


class ProfileChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A partial update: fields left unset keep their value."""

    email: Email | msgspec.UnsetType | None = msgspec.UNSET
    name: PersonName | msgspec.UnsetType | None = msgspec.UNSET
    attributes: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


def same_enrolment(existing: Customer, request: Enrolment) -> bool:
    """Whether a repeated enrolment asks for the email, name and shop already recorded. Its
    attributes are compared by the database, as jsonb (which keeps numbers as decimals: 1e23
    comes back as the integer 100000000000000000000000, and `true` is not `1`)."""
    return existing.email == request.email and existing.name == request.name and existing.shop_id == request.shop_id


def check_attributes(attributes: dict[str, Any]) -> None:
    """Refuse attributes jsonb cannot store (NUL in a key or a string), absurdly deep ones, and
    ones over MAX_ATTRIBUTES_BYTES as compact JSON."""
    size = len(msgspec.json.encode(attributes))
    if size > MAX_ATTRIBUTES_BYTES:
        raise InvalidInput(
            f"attributes are at most {MAX_ATTRIBUTES_BYTES} bytes as compact JSON, not {size}",
            field="attributes",
            limit=MAX_ATTRIBUTES_BYTES,
        )
    pending: list[tuple[object, int]] = [(attributes, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_ATTRIBUTE_DEPTH:
            raise InvalidInput(
                f"attributes may be nested at most {MAX_ATTRIBUTE_DEPTH} levels deep",
                field="attributes",
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    raise InvalidInput("attribute names must not contain NUL (U+0000)", field="attributes")
                pending.append((item, depth + 1))
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, str) and "\x00" in value:
            raise InvalidInput("attribute values must not contain NUL (U+0000)", field="attributes")
