"""Every error leaves as RFC 9457 application/problem+json, mapped in this one place."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import ParameterKwarg
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from service.domain.errors import DomainError

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "/problems/"

log = logging.getLogger("loyalty.http")

HTTP_PROBLEM_TYPES: dict[int, tuple[str, str, str]] = {
    400: ("malformed-request", "Malformed request", "The body is empty, not JSON, or not the expected JSON type."),
    401: ("unauthorized", "Missing or invalid credentials", "No credential, or one that is not valid."),
    403: ("forbidden", "Not allowed for this credential", "The credential's scope does not allow this."),
    404: ("not-found", "Not found", "No such route, or nothing with that id in the caller's program."),
    405: ("method-not-allowed", "Method not allowed", "The route exists but not with this method."),
    413: ("body-too-large", "Request body too large", "The body exceeds LOYALTY_MAX_BODY_BYTES."),
    415: ("unsupported-media-type", "Unsupported media type", "Send bodies as application/json."),
    429: ("rate-limited", "Too many requests", "Slow down; Retry-After says when to try again."),
    500: ("internal-error", "Internal error", "An unexpected error; it was logged with the request id."),
    503: ("unavailable", "Service unavailable", "The database is unavailable; retry after Retry-After."),
}
_HTTP_TYPES = {status: (slug, title) for status, (slug, title, _) in HTTP_PROBLEM_TYPES.items()}
_FIELD_IN_MESSAGE = re.compile(r"at `\$\.?([^`]*)`")
# msgspec names the field inside the message when the error is about the enclosing object.
_FIELD_NAMED_IN_MESSAGE = re.compile(r"(?:missing required|contains unknown) field `([^`]*)`")
# Litestar reports errors about the request body as a whole under the key of its parameter.
_BODY_KEYS = {None, "", "data", "body"}
# Litestar names a missing parameter only in its message.
_MISSING_PARAMETER = re.compile(r"^Missing required (\w+) parameter '([^']+)'")


def problem_body(
    status: int, problem_type: str, title: str, detail: str, instance: str, **extra: Any
) -> dict[str, Any]:
    """The members of a problem document."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + problem_type,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    return body


def problem(
    status: int,
    problem_type: str,
    title: str,
    detail: str,
    request: Request[Any, Any, Any],
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    """Build a problem+json response."""
    body = problem_body(status, problem_type, title, detail, request.url.path, **extra)
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def domain_problem(error: DomainError, instance: str) -> dict[str, Any]:
    """The problem document of a refusal by the product's rules."""
    extra = dict(error.extra)
    if error.problem_type == "invalid-input" and error.field and "errors" not in extra:
        # the same shape as a schema error, so clients read one list of field errors
        extra["errors"] = [{"field": error.field, "message": error.detail, "source": None}]
    return problem_body(
        error.status, error.problem_type, error.title, error.detail, instance, field=error.field, **extra
    )


def domain_error_handler(request: Request[Any, Any, Any], error: DomainError) -> Response[dict[str, Any]]:
    """A refusal by the product's rules, with the headers the refusal calls for."""
    body = domain_problem(error, request.url.path)
    return Response(content=body, status_code=error.status, media_type=PROBLEM_JSON, headers=error.headers())


def _parameter_names(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The names the client sends (`from`, `Idempotency-Key`) of the handler's parameters
    whose Python names differ (`start`, `idempotency_key`): Litestar reports the latter."""
    handler = request.scope.get("route_handler")
    model = getattr(handler, "signature_model", None)
    return {
        name: kwarg.name
        for name, definition in getattr(model, "_fields", {}).items()
        if isinstance(kwarg := definition.kwarg_definition, ParameterKwarg) and kwarg.name and kwarg.name != name
    }


def _field_errors(extra: Any, names: dict[str, str]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for item in extra if isinstance(extra, list) else []:
        message = str(item.get("message", ""))
        key = item.get("key")
        field = None if key in _BODY_KEYS else str(key)
        if field is not None and item.get("source") != "body":
            field = names.get(field, field)
        matched = _FIELD_IN_MESSAGE.search(message)
        if matched and matched.group(1):
            nested = matched.group(1)
            field = f"{field}.{nested}" if field else nested
            message = message.split(" - at ")[0]
        named = _FIELD_NAMED_IN_MESSAGE.search(message)
        if named:
            field = f"{field}.{named.group(1)}" if field else named.group(1)
        errors.append({"field": field, "message": message, "source": item.get("source")})
    return errors


def _missing_parameter(detail: str) -> list[dict[str, Any]]:
    """The field error of a required query parameter or header that was not sent."""
    matched = _MISSING_PARAMETER.match(detail)
    if not matched:
        return []
    source, name = matched.groups()
    return [{"field": name, "message": f"missing required {source} parameter", "source": source}]


def validation_handler(request: Request[Any, Any, Any], error: ValidationException) -> Response[dict[str, Any]]:
    """Input that does not fit the request's schema: 422 naming each field.

    An error about the body as a whole (not an object, say) names no field: that is a 400.
    """
    errors = _field_errors(error.extra, _parameter_names(request)) or _missing_parameter(error.detail)
    if errors and all(e["field"] is not None for e in errors):  # "" is a field name too
        first = errors[0]
        return problem(
            422,
            "invalid-input",
            "Invalid input",
            f"{first['field']}: {first['message']}",
            request,
            field=first["field"],
            errors=errors,
        )
    detail = errors[0]["message"] if errors else error.detail
    return problem(400, "malformed-request", "Malformed request", detail, request, errors=errors or None)


def http_error_handler(request: Request[Any, Any, Any], error: HTTPException) -> Response[dict[str, Any]]:
    """Framework errors (404 for unknown routes, 405, 413, 415, ...)."""
    status = error.status_code
    if status >= 500:
        log.error("server error on %s %s: %s", request.method, request.url.path, error, exc_info=error)
    problem_type, title = _HTTP_TYPES.get(status, ("http-error", "HTTP error"))
    return problem(status, problem_type, title, error.detail, request, headers=error.headers)


def database_unavailable_handler(request: Request[Any, Any, Any], error: Exception) -> Response[dict[str, Any]]:
    """The database cannot be reached or the pool is exhausted: fail fast, ask to retry."""
    log.warning("database unavailable: %s", error)
    return problem(
        503,
        "unavailable",
        "Service unavailable",
        "the database is unavailable; retry shortly",
        request,
        headers={"Retry-After": "1"},
    )


def _parameter_with_nul(request: Request[Any, Any, Any]) -> tuple[str, str] | None:
    """(name, source) of the first path or query parameter holding a NUL character."""
    for source, values in (("path", list(request.path_params.items())), ("query", request.query_params.multi_items())):
        for name, value in values:
            if "\x00" in str(value):
                return name, source
    return None


def unstorable_text_handler(request: Request[Any, Any, Any], error: Exception) -> Response[dict[str, Any]]:
    """Text PostgreSQL cannot store (a NUL character) that reached a query: bad input, not a 500,
    naming the parameter that holds it."""
    log.info("refused unstorable text on %s %s: %s", request.method, request.url.path, error)
    detail = "the request contains a character that cannot be stored (NUL, U+0000)"
    found = _parameter_with_nul(request)
    if found is None:
        return problem(422, "invalid-input", "Invalid input", detail, request)
    name, source = found
    errors = [{"field": name, "message": detail, "source": source}]
    return problem(422, "invalid-input", "Invalid input", f"{name}: {detail}", request, field=name, errors=errors)


def _lost_database(error: BaseException) -> bool:
    """The error, or one it was raised from or during, is the database going away: the
    driver's follow-on errors on a dropped connection then hide the first one."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (*UNAVAILABLE_ERRORS, asyncpg.PostgresConnectionError)):
            return True
        if isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current):
            return True
        if isinstance(current, asyncpg.InternalClientError):  # a pooled connection the restart broke
            return True
        current = current.__cause__ or current.__context__
    return False


def internal_error_handler(request: Request[Any, Any, Any], error: Exception) -> Response[dict[str, Any]]:
    """Anything unexpected: logged with its traceback, reported without internals (a database
    that went away, however the driver reports it, is a 503)."""
    if _lost_database(error):
        return database_unavailable_handler(request, error)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return problem(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal-error",
        "Internal error",
        "an unexpected error occurred",
        request,
    )


UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    ConnectionRefusedError,
    TimeoutError,
    OSError,
)

# A NUL in a text parameter, or a \u0000 escape inside jsonb; the last line of defence for
# values no request schema checked (path and query parameters, say).
UNSTORABLE_TEXT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)

EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    DomainError: domain_error_handler,
    ValidationException: validation_handler,
    HTTPException: http_error_handler,
    **{error_type: database_unavailable_handler for error_type in UNAVAILABLE_ERRORS},
    **{error_type: unstorable_text_handler for error_type in UNSTORABLE_TEXT_ERRORS},
    Exception: internal_error_handler,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "problem"]
