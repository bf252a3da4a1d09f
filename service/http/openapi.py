"""What the OpenAPI document says about authentication and errors."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme

from service.http.problems import PROBLEM_JSON


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
    401: _problem("Missing, unknown, revoked or expired credentials"),
    403: _problem("The credential's scope does not allow this operation"),
    404: _problem("Not found in the caller's program"),
    409: _problem("Refused: not enough points, a hold already resolved, an idempotency key reused, ..."),
    422: _problem("Invalid input; `field` names the offending field"),
    503: _problem("The database is unavailable; retry after the Retry-After delay"),
}

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

__all__ = ["COMPONENTS", "PROBLEM_RESPONSES", "SECURITY", "Any"]
