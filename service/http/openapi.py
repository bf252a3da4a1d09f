"""What the OpenAPI document says about authentication, errors and alternative representations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin as LitestarStructSchemaPlugin
from litestar._openapi.schema_generation.schema import SchemaCreator
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.typing import FieldDefinition

from service.http.problems import PROBLEM_JSON


def _constraints(type_: msgspec.inspect.Type) -> dict[str, Any]:
    """The JSON Schema keywords of the constraints msgspec checks on a scalar."""
    if isinstance(type_, msgspec.inspect.StrType):
        return {"min_length": type_.min_length, "max_length": type_.max_length, "pattern": type_.pattern}
    if isinstance(type_, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
        return {
            "minimum": type_.ge,
            "exclusive_minimum": type_.gt,
            "maximum": type_.le,
            "exclusive_maximum": type_.lt,
            "multiple_of": type_.multiple_of,
        }
    return {}


def _fill(schema: Schema, keywords: dict[str, Any]) -> None:
    for key, value in keywords.items():
        if value is not None and getattr(schema, key) is None:
            setattr(schema, key, value)


_COLLECTIONS = (
    msgspec.inspect.ListType,
    msgspec.inspect.VarTupleType,
    msgspec.inspect.SetType,
    msgspec.inspect.FrozenSetType,
)


def _repair(schema: Schema | Reference | bool | None, type_: msgspec.inspect.Type) -> None:
    """Put into a field's schema what Litestar leaves out: bounds of zero on an optional field,
    constraints on the items and values of collections, and the item type of `tuple[X, ...]`
    (documented as X or anything)."""
    if isinstance(type_, msgspec.inspect.Metadata):
        type_ = type_.type
    if not isinstance(schema, Schema):
        return
    if isinstance(type_, msgspec.inspect.UnionType):
        present = [t for t in type_.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(present) == 1:  # X | None: Litestar puts X's constraints beside the oneOf
            inner = present[0].type if isinstance(present[0], msgspec.inspect.Metadata) else present[0]
            _fill(schema, _constraints(inner))
            for option in schema.one_of or []:
                if isinstance(option, Schema) and option.type in (OpenAPIType.ARRAY, OpenAPIType.OBJECT):
                    _repair(option, inner)
        return
    _fill(schema, _constraints(type_))
    if isinstance(type_, _COLLECTIONS):
        if isinstance(schema.items, Schema) and schema.items.one_of and Schema() in schema.items.one_of:
            items = [item for item in schema.items.one_of if item != Schema()]
            schema.items = items[0] if len(items) == 1 else Schema(one_of=items)
        _fill(schema, {"min_items": type_.min_length, "max_items": type_.max_length})
        _repair(schema.items, type_.item_type)
    elif isinstance(type_, msgspec.inspect.DictType):
        _fill(schema, {"min_properties": type_.min_length, "max_properties": type_.max_length})
        _repair(schema.additional_properties, type_.value_type)
        key = type_.key_type.type if isinstance(type_.key_type, msgspec.inspect.Metadata) else type_.key_type
        if keywords := {name: value for name, value in _constraints(key).items() if value is not None}:
            schema.property_names = Schema(type=OpenAPIType.STRING, **keywords)


class StructSchemaPlugin(LitestarStructSchemaPlugin):
    """Litestar's schema of a Struct (from its internal plugin), repaired, and with
    `additionalProperties: false` when the Struct forbids unknown fields."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        """The Struct's schema."""
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        assert isinstance(info, msgspec.inspect.StructType)
        if info.forbid_unknown_fields:
            schema.additional_properties = False
        for field in info.fields:
            _repair((schema.properties or {})[field.encode_name], field.type)
        return schema


class FieldError(msgspec.Struct):
    field: str | None
    message: str
    source: str | None = None


class ProblemDetail(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details; refusals add members such as `available` and `requested`."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    field: str | None = None
    errors: list[FieldError] | None = None


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ProblemDetail, description=description, media_type=PROBLEM_JSON, generate_examples=False
    )


PROBLEM_RESPONSES: dict[int, ResponseSpec] = {
    400: _problem("Malformed request: an empty body, not JSON, or not a JSON object"),
    401: _problem("Missing, unknown, revoked or expired credentials (with `WWW-Authenticate: Bearer`)"),
    403: _problem("The credential's scope does not allow this operation"),
    404: _problem("Not found in the caller's program"),
    409: _problem("Refused: not enough points, a hold already resolved, an idempotency key reused, ..."),
    422: _problem("Invalid input; `field` names the offending field"),
    429: _problem("Too many requests with this credential; retry after the Retry-After delay"),
    503: _problem("The database is unavailable; retry after the Retry-After delay"),
}
"""The problems a protected operation may answer with."""

BODY_PROBLEM_RESPONSES: dict[int, ResponseSpec] = {
    **PROBLEM_RESPONSES,
    413: _problem("The body exceeds the service's limit (LOYALTY_MAX_BODY_BYTES)"),
    415: _problem("The body is not application/json"),
}
"""The problems of a protected operation that takes a JSON body."""

PUBLIC_PROBLEM_RESPONSES: dict[int, ResponseSpec] = {
    404: _problem("Not found"),
    422: PROBLEM_RESPONSES[422],
}
"""The problems of a lookup that needs no credential."""


def create_or_repeat(data_container: Any, description: str) -> dict[int, ResponseSpec]:
    """The other answers of a create (201): the problems of an operation taking a body, and
    200 when the same request came before."""
    return {
        **BODY_PROBLEM_RESPONSES,
        200: ResponseSpec(data_container, description=description, generate_examples=False),
    }


def conflicts(description: str) -> dict[int, ResponseSpec]:
    """The problems of an operation taking a body, with its own words for its 409."""
    return {**BODY_PROBLEM_RESPONSES, 409: _problem(description)}


_TEXT = Schema(type=OpenAPIType.STRING)


def _text_answers(operation: Operation, *media_types: str, only: bool = False) -> None:
    """Document the operation's 200 answer in these text media types too (or `only` in them)."""
    ok = (operation.responses or {}).get("200")
    if isinstance(ok, OpenAPIResponse):
        kept = {} if only else ok.content or {}
        ok.content = {**kept, **{media_type: OpenAPIMediaType(schema=_TEXT) for media_type in media_types}}


@dataclass
class TableOperation(Operation):
    """An operation answering JSON, or CSV with `?format=csv` or `Accept: text/csv`."""

    def __post_init__(self) -> None:
        _text_answers(self, "text/csv")


@dataclass
class JournalOperation(Operation):
    """An operation streaming NDJSON, or CSV with `?format=csv`."""

    def __post_init__(self) -> None:
        _text_answers(self, "application/x-ndjson", "text/csv", only=True)


COMPONENTS = Components(
    security_schemes={
        "bearer": SecurityScheme(
            type="http",
            scheme="bearer",
            description="An API key `lk.<program>.<key id>.<secret>` (scopes checkout, admin, finance)"
            " or a customer token `ct.<program>.<claims>.<signature>` for the app.",
        )
    }
)
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
PUBLIC: list[dict[str, list[str]]] = [{}]
"""The security of an operation that needs no credential."""

__all__ = [
    "BODY_PROBLEM_RESPONSES",
    "COMPONENTS",
    "PROBLEM_RESPONSES",
    "PUBLIC",
    "PUBLIC_PROBLEM_RESPONSES",
    "SECURITY",
    "JournalOperation",
    "StructSchemaPlugin",
    "TableOperation",
    "conflicts",
    "create_or_repeat",
]
