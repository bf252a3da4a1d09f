"""Request bodies: a handler that takes `data` accepts only a non-empty JSON document."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import ClientException, SerializationException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE


def is_json_media_type(media_type: str) -> bool:
    """`application/json` or a structured `application/*+json` type."""
    media_type = media_type.strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def require_json_body(connection: ASGIConnection[Any, Any, Any, Any], route_handler: BaseRouteHandler) -> None:
    """Refuse, before anything is parsed or stored, a body that is empty, not JSON or unreadable.

    Reads the body once (Litestar caches it and the decoded JSON for the handler), so an
    oversized body is a 413, and decoding failures Litestar would let escape as a 500
    (invalid UTF-8, nesting deeper than the recursion limit) become a 400.
    """
    data = route_handler.parsed_fn_signature.parameters.get("data")
    if data is None or not isinstance(connection, Request):
        return
    body = await connection.body()
    if not body.strip():
        if data.is_optional or data.has_default:
            return
        raise ClientException("the request body is empty; send a JSON document")
    media_type, _ = connection.content_type
    if not is_json_media_type(media_type):
        raise ClientException(
            f"send the body as application/json, not {media_type or 'without a Content-Type'}",
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    try:
        document = await connection.json()
    except SerializationException as error:
        raise ClientException(str(error)) from None
    except UnicodeDecodeError:
        raise ClientException("the request body is not valid UTF-8") from None
    except RecursionError:
        raise ClientException("the JSON document is nested too deeply") from None
    duplicate = _duplicate_member(body)
    if duplicate is not None:
        raise ValidationException(
            detail="the body names a member twice",
            extra=[{"message": "names this member more than once", "key": duplicate, "source": "body"}],
        )
    coerced = _coerced(document, data.annotation)
    if coerced is not None:
        raise ValidationException(
            detail="the body does not fit the schema",
            extra=[{"message": str(coerced), "key": "data", "source": "body"}],
        )


def _coerced(document: Any, annotation: Any) -> msgspec.ValidationError | None:
    """The error of a value of another JSON type that Litestar's lax conversion would take
    ("5" for an integer, "false" or 0 for a boolean, 5.0 for an integer), or None.

    Litestar converts the body with `strict=False`, so the schema's types alone would not be
    enforced; errors both conversions find are left to Litestar, which reports them as before.
    """
    try:
        msgspec.convert(document, annotation, strict=True, str_keys=True)
    except msgspec.ValidationError as error:
        try:
            msgspec.convert(document, annotation, strict=False, str_keys=True)
        except msgspec.ValidationError:
            return None
        return error
    return None


class _NamedTwice(Exception):
    """An object of the document names a member more than once."""


class _Members(list[tuple[str, Any]]):
    """An object's members in document order, duplicates kept."""


def _refuse_duplicates(members: list[tuple[str, Any]]) -> None:
    if len(members) > 1 and len({name for name, _ in members}) != len(members):
        raise _NamedTwice
    # the values are not needed: the document was decoded already


def _duplicate_member(body: bytes) -> str | None:
    """The path (`attributes.tier`, `items[2].order_id`) of the first member an object of the
    document names twice, or None. JSON decoders keep the last value of such a member, others
    the first, so the request is ambiguous rather than read as either."""
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except _NamedTwice:
        pass
    except (ValueError, RecursionError):  # read already; past what this decoder takes
        return None
    else:
        return None
    pending: list[tuple[str, Any]] = [("", json.loads(body, object_pairs_hook=_Members))]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _Members):
            seen: set[str] = set()
            for name, _ in value:
                if name in seen:
                    return f"{path}.{name}" if path else name
                seen.add(name)
            pending.extend((f"{path}.{name}" if path else name, item) for name, item in reversed(value))
        elif isinstance(value, list):
            pending.extend((f"{path}[{index}]", item) for index, item in reversed(list(enumerate(value))))
    return None
