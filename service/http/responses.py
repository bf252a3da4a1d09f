"""Responses built the same way by several controllers."""

from __future__ import annotations

from typing import TypeVar

from litestar import Response
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

T = TypeVar("T")


def created_or_repeated(content: T, created: bool) -> Response[T]:
    """201 when the request created `content`, 200 when the same request came before (an
    idempotent repeat); documented by `openapi.create_or_repeat`."""
    return Response(content, status_code=HTTP_201_CREATED if created else HTTP_200_OK)
