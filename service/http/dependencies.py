"""Dependencies shared by the controllers."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import Provide

from service.domain.access import Principal
from service.domain.clock import Clock


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """The authenticated caller."""
    principal = request.user
    assert isinstance(principal, Principal)
    return principal


def provide_clock(request: Request[Any, Any, Any]) -> Clock:
    """The app's clock (injectable in tests)."""
    clock: Clock = request.app.state.clock
    return clock


DEPENDENCIES = {
    "principal": Provide(provide_principal, sync_to_thread=False),
    "clock": Provide(provide_clock, sync_to_thread=False),
}
