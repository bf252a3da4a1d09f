"""Settings read once from the environment into a frozen Struct."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A variable of the environment has a value the service cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service reads from its environment."""

    database_url: str | None = None
    pgdata: Path = PROJECT_ROOT / "pgdata"
    database_name: str = "loyalty"
    host: str = "127.0.0.1"
    port: int = 8000
    pool_min_size: int = 4
    pool_max_size: int = 16
    pool_acquire_timeout_s: float = 5.0
    max_body_bytes: int = 1_048_576
    customer_token_ttl_s: int = 900
    log_level: str = "INFO"
    run_jobs: bool = True
    seed_demo: bool = True
    job_interval_s: float = 30.0
    webhook_timeout_s: float = 5.0
    webhook_retry_base_s: float = 5.0
    webhook_retry_max_delay_s: float = 3600.0
    webhook_retry_for_s: float = 86_400.0
    webhook_disable_after: int = 50
    webhook_interval_s: float = 1.0
    webhook_allow_private: bool = False  # loopback and private networks as webhook destinations
    webhook_https_only: bool = False
    expiring_soon_days: int = 7
    win_back_days: int = 60
    cross_sell_orders: int = 3
    rate_limit_per_s: float = 1000.0  # per credential and process; 0 turns limits off
    rate_limit_burst: int = 2000


_VARIABLES: dict[str, tuple[str, type]] = {
    "DATABASE_URL": ("database_url", str),
    "LOYALTY_PGDATA": ("pgdata", Path),
    "LOYALTY_DATABASE_NAME": ("database_name", str),
    "LOYALTY_HOST": ("host", str),
    "LOYALTY_PORT": ("port", int),
    "LOYALTY_POOL_MIN_SIZE": ("pool_min_size", int),
    "LOYALTY_POOL_MAX_SIZE": ("pool_max_size", int),
    "LOYALTY_POOL_ACQUIRE_TIMEOUT_S": ("pool_acquire_timeout_s", float),
    "LOYALTY_MAX_BODY_BYTES": ("max_body_bytes", int),
    "LOYALTY_CUSTOMER_TOKEN_TTL_S": ("customer_token_ttl_s", int),
    "LOYALTY_LOG_LEVEL": ("log_level", str),
    "LOYALTY_RUN_JOBS": ("run_jobs", bool),
    "LOYALTY_SEED_DEMO": ("seed_demo", bool),
    "LOYALTY_JOB_INTERVAL_S": ("job_interval_s", float),
    "LOYALTY_WEBHOOK_TIMEOUT_S": ("webhook_timeout_s", float),
    "LOYALTY_WEBHOOK_RETRY_BASE_S": ("webhook_retry_base_s", float),
    "LOYALTY_WEBHOOK_RETRY_MAX_DELAY_S": ("webhook_retry_max_delay_s", float),
    "LOYALTY_WEBHOOK_RETRY_FOR_S": ("webhook_retry_for_s", float),
    "LOYALTY_WEBHOOK_DISABLE_AFTER": ("webhook_disable_after", int),
    "LOYALTY_WEBHOOK_INTERVAL_S": ("webhook_interval_s", float),
    "LOYALTY_WEBHOOK_ALLOW_PRIVATE": ("webhook_allow_private", bool),
    "LOYALTY_WEBHOOK_HTTPS_ONLY": ("webhook_https_only", bool),
    "LOYALTY_EXPIRING_SOON_DAYS": ("expiring_soon_days", int),
    "LOYALTY_WIN_BACK_DAYS": ("win_back_days", int),
    "LOYALTY_CROSS_SELL_ORDERS": ("cross_sell_orders", int),
    "LOYALTY_RATE_LIMIT_PER_S": ("rate_limit_per_s", float),
    "LOYALTY_RATE_LIMIT_BURST": ("rate_limit_burst", int),
}

_POSITIVE = {
    "port",
    "pool_min_size",
    "pool_max_size",
    "pool_acquire_timeout_s",
    "max_body_bytes",
    "customer_token_ttl_s",
    "job_interval_s",
    "webhook_timeout_s",
    "webhook_retry_base_s",
    "webhook_retry_max_delay_s",
    "webhook_retry_for_s",
    "webhook_disable_after",
    "webhook_interval_s",
    "expiring_soon_days",
    "win_back_days",
    "cross_sell_orders",
}
# Upper bounds of the event and webhook knobs (a send must end well within its claim's lease).
_AT_MOST: dict[str, float] = {
    "webhook_timeout_s": 60,
    "webhook_retry_for_s": 30 * 86_400,
    "expiring_soon_days": 365,
    "win_back_days": 3650,
    "cross_sell_orders": 1000,
}
_VARIABLE_OF = {field: variable for variable, (field, _) in _VARIABLES.items()}
# The name goes into CREATE DATABASE "<name>": keep it a plain identifier.
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _positive(value: object) -> bool:
    """A whole number above zero, or a finite float above zero (not nan, not inf)."""
    if isinstance(value, int):
        return value > 0
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _parse(variable: str, raw: str, kind: type) -> object:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{variable} must be true or false, got {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise SettingsError(f"{variable} must be {what}, got {raw!r}") from None
    if kind is Path:
        return Path(raw).expanduser().resolve()
    return raw


def _database_url_problem(url: str) -> str | None:
    """What is wrong with a postgresql:// URL that the driver would only refuse at the first
    connection (with a traceback): brackets that do not pair, a port that is not 1 to 65535.
    Several hosts (`db1:5432,db2:5433`) are allowed, as asyncpg takes them."""
    try:
        hosts = urlsplit(url).netloc.rpartition("@")[2]
    except ValueError as error:
        return str(error)
    for host in hosts.split(","):
        if host.startswith("["):
            _, _, port = host.partition("]")
            if port and not port.startswith(":"):
                return f"{host!r} is not [address]:port"
            port = port[1:]
        else:
            port = host.rpartition(":")[2] if ":" in host else ""
        if port and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
            return f"port {port!r} is not a number from 1 to 65535"
    return None


def _pgdata_problem(pgdata: Path) -> str | None:
    """Why the embedded server must not be given pgdata: it would take an existing path over
    (as root, chown it to its system user) before initdb refused a file or a directory of
    other files. Missing, empty and initialised directories are fine."""
    try:
        if not pgdata.exists():
            return None
        if not pgdata.is_dir():
            return f"{pgdata} is not a directory"
        if (pgdata / "PG_VERSION").exists() or not any(pgdata.iterdir()):
            return None
    except OSError as error:
        return f"{pgdata} cannot be read: {error.strerror}"
    return f"{pgdata} is neither empty nor a PostgreSQL data directory (no PG_VERSION)"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read Settings from the environment; a bad value raises SettingsError naming it."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for variable, (field, kind) in _VARIABLES.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        value = _parse(variable, raw, kind)
        if field in _POSITIVE and not _positive(value):
            raise SettingsError(f"{variable} must be positive, got {raw!r}")
        values[field] = value
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.pool_min_size > settings.pool_max_size:
        raise SettingsError("LOYALTY_POOL_MIN_SIZE must not exceed LOYALTY_POOL_MAX_SIZE")
    if settings.database_url is not None and not settings.database_url.startswith(("postgres://", "postgresql://")):
        raise SettingsError("DATABASE_URL must be a postgresql:// URL")
    if settings.database_url is not None and (problem := _database_url_problem(settings.database_url)):
        raise SettingsError(f"DATABASE_URL is malformed: {problem}")
    if not 60 <= settings.customer_token_ttl_s <= 86_400:
        raise SettingsError(
            f"LOYALTY_CUSTOMER_TOKEN_TTL_S must be between 60 and 86400, got {settings.customer_token_ttl_s}"
        )
    if not (math.isfinite(settings.rate_limit_per_s) and settings.rate_limit_per_s >= 0):
        raise SettingsError(f"LOYALTY_RATE_LIMIT_PER_S must be 0 (off) or more, got {settings.rate_limit_per_s}")
    if settings.rate_limit_burst < 1:
        raise SettingsError(f"LOYALTY_RATE_LIMIT_BURST must be at least 1, got {settings.rate_limit_burst}")
    if settings.port > 65535:
        raise SettingsError(f"LOYALTY_PORT must be at most 65535, got {settings.port}")
    if not _DATABASE_NAME.fullmatch(settings.database_name):
        raise SettingsError(
            "LOYALTY_DATABASE_NAME must be letters, digits and underscores (at most 63),"
            f" got {settings.database_name!r}"
        )
    for field, most in _AT_MOST.items():
        if getattr(settings, field) > most:
            raise SettingsError(f"{_VARIABLE_OF[field]} must be at most {most:g}, got {getattr(settings, field)}")
    if settings.database_url is None and (problem := _pgdata_problem(settings.pgdata)):
        raise SettingsError(f"LOYALTY_PGDATA {problem}")
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"LOYALTY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {settings.log_level!r}")
    return settings
