"""Customers (members of a program)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

ExternalId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Email = Annotated[str, msgspec.Meta(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
PersonName = Annotated[str, msgspec.Meta(max_length=200)]


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
    shop_id: str | None = None
    attributes: dict[str, Any] = {}


class ProfileChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A partial update: fields left unset keep their value."""

    email: Email | None | msgspec.UnsetType = msgspec.UNSET
    name: PersonName | None | msgspec.UnsetType = msgspec.UNSET
    attributes: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


def same_enrolment(existing: Customer, request: Enrolment) -> bool:
    """Whether a repeated enrolment asks for what is already recorded."""
    return (
        existing.email == request.email
        and existing.name == request.name
        and existing.shop_id == request.shop_id
        and existing.attributes == request.attributes
    )
