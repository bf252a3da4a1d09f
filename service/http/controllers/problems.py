"""The problem types the API answers with, so each `type` URI resolves to its meaning."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get
from litestar.exceptions import NotFoundException
from litestar.params import PathParameter

from service.domain.errors import DomainError
from service.http.openapi import PUBLIC, PUBLIC_PROBLEM_RESPONSES
from service.http.problems import HTTP_PROBLEM_TYPES, TYPE_BASE


class ProblemType(msgspec.Struct, frozen=True):
    type: str
    title: str
    status: int
    description: str


def _catalogue() -> dict[str, ProblemType]:
    types: dict[str, ProblemType] = {}
    pending: list[type[DomainError]] = [DomainError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not DomainError:  # a refinement sharing its parent's type keeps the parent's words
            types.setdefault(
                cls.problem_type,
                ProblemType(TYPE_BASE + cls.problem_type, cls.title, cls.status, (cls.__doc__ or cls.title).strip()),
            )
    for status, (slug, title, description) in HTTP_PROBLEM_TYPES.items():
        types.setdefault(slug, ProblemType(TYPE_BASE + slug, title, status, description))
    return dict(sorted(types.items()))


CATALOGUE = _catalogue()


@get("/problems", tags=["problems"], security=PUBLIC)
async def list_problem_types() -> list[ProblemType]:
    """Every problem type the API uses."""
    return list(CATALOGUE.values())


@get("/problems/{slug:str}", tags=["problems"], security=PUBLIC, responses=PUBLIC_PROBLEM_RESPONSES)
async def problem_type(slug: Annotated[str, PathParameter(max_length=64)]) -> ProblemType:
    """What one problem type means."""
    if slug not in CATALOGUE:
        raise NotFoundException(f"no problem type {slug!r}")
    return CATALOGUE[slug]


ROUTES = [list_problem_types, problem_type]
