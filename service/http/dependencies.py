"""Dependencies shared by the controllers."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import Provide

from service.config import Settings
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


def provide_settings(request: Request[Any, Any, Any]) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


DEPENDENCIES = {
    "settings": Provide(provide_settings, sync_to_thread=False),
    "principal": Provide(provide_principal, sync_to_thread=False),
    "clock": Provide(provide_clock, sync_to_thread=False),
}
