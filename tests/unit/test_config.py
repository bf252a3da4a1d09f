"""Settings from the environment: defaults, parsing, and refusals that name the variable."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.config import PROJECT_ROOT, Settings, SettingsError, load_settings

NUMERIC_VARIABLES = {
    "LOYALTY_PORT": "port",
    "LOYALTY_POOL_MIN_SIZE": "pool_min_size",
    "LOYALTY_POOL_MAX_SIZE": "pool_max_size",
    "LOYALTY_POOL_ACQUIRE_TIMEOUT_S": "pool_acquire_timeout_s",
    "LOYALTY_MAX_BODY_BYTES": "max_body_bytes",
    "LOYALTY_CUSTOMER_TOKEN_TTL_S": "customer_token_ttl_s",
    "LOYALTY_JOB_INTERVAL_S": "job_interval_s",
    "LOYALTY_WEBHOOK_TIMEOUT_S": "webhook_timeout_s",
    "LOYALTY_WEBHOOK_RETRY_BASE_S": "webhook_retry_base_s",
    "LOYALTY_WEBHOOK_RETRY_MAX_DELAY_S": "webhook_retry_max_delay_s",
    "LOYALTY_WEBHOOK_RETRY_FOR_S": "webhook_retry_for_s",
    "LOYALTY_WEBHOOK_DISABLE_AFTER": "webhook_disable_after",
    "LOYALTY_WEBHOOK_INTERVAL_S": "webhook_interval_s",
    "LOYALTY_EXPIRING_SOON_DAYS": "expiring_soon_days",
    "LOYALTY_WIN_BACK_DAYS": "win_back_days",
    "LOYALTY_CROSS_SELL_ORDERS": "cross_sell_orders",
}


def test_defaults() -> None:
    loaded = load_settings({})
    assert loaded == Settings()
    assert loaded.database_url is None
    assert loaded.pgdata == PROJECT_ROOT / "pgdata"
    assert loaded.database_name == "loyalty"
    assert loaded.host == "127.0.0.1"
    assert loaded.port == 8000
    assert (loaded.pool_min_size, loaded.pool_max_size) == (4, 16)
    assert loaded.pool_acquire_timeout_s == 5.0
    assert loaded.max_body_bytes == 1_048_576
    assert loaded.customer_token_ttl_s == 900
    assert loaded.log_level == "INFO"
    assert loaded.run_jobs is True
    assert loaded.job_interval_s == 30.0


def test_empty_values_mean_the_default() -> None:
    assert load_settings({"LOYALTY_PORT": "", "DATABASE_URL": "", "LOYALTY_RUN_JOBS": ""}) == Settings()


def test_unrelated_variables_are_ignored() -> None:
    assert load_settings({"PORT": "abc", "LOYALTY": "x", "HOME": "/nowhere"}) == Settings()


def test_values_are_parsed(tmp_path: Path) -> None:
    loaded = load_settings(
        {
            "DATABASE_URL": "postgresql://app:secret@db.internal:5432/loyalty",
            "LOYALTY_PGDATA": str(tmp_path / "data"),
            "LOYALTY_DATABASE_NAME": "loyalty_staging",
            "LOYALTY_HOST": "0.0.0.0",  # noqa: S104 - a value under test, nothing binds
            "LOYALTY_PORT": "9000",
            "LOYALTY_POOL_MIN_SIZE": "2",
            "LOYALTY_POOL_MAX_SIZE": "2",
            "LOYALTY_POOL_ACQUIRE_TIMEOUT_S": "0.5",
            "LOYALTY_MAX_BODY_BYTES": "2048",
            "LOYALTY_CUSTOMER_TOKEN_TTL_S": "60",
            "LOYALTY_LOG_LEVEL": "debug",
            "LOYALTY_RUN_JOBS": "off",
            "LOYALTY_JOB_INTERVAL_S": "2.5",
        }
    )
    assert loaded.database_url == "postgresql://app:secret@db.internal:5432/loyalty"
    assert loaded.pgdata == tmp_path / "data"
    assert loaded.database_name == "loyalty_staging"
    assert loaded.port == 9000
    assert (loaded.pool_min_size, loaded.pool_max_size) == (2, 2)
    assert loaded.pool_acquire_timeout_s == 0.5
    assert loaded.max_body_bytes == 2048
    assert loaded.customer_token_ttl_s == 60
    assert loaded.run_jobs is False
    assert loaded.job_interval_s == 2.5


def test_pgdata_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_settings({"LOYALTY_PGDATA": "relative/pg"}).pgdata == tmp_path / "relative" / "pg"
    assert load_settings({"LOYALTY_PGDATA": "~/pg"}).pgdata == tmp_path / "home" / "pg"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert load_settings({"LOYALTY_RUN_JOBS": raw}).run_jobs is expected


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_PORT", "8123")
    assert load_settings().port == 8123
    monkeypatch.setenv("LOYALTY_PORT", "http")
    with pytest.raises(SettingsError, match="LOYALTY_PORT"):
        load_settings()


BAD_VALUES = [
    ("LOYALTY_PORT", "abc"),
    ("LOYALTY_PORT", "80.5"),
    ("LOYALTY_PORT", "0"),
    ("LOYALTY_PORT", "-1"),
    ("LOYALTY_PORT", "65536"),
    ("LOYALTY_PORT", "8000 9000"),
    ("LOYALTY_PORT", "9" * 400),
    ("LOYALTY_PORT", "1e3"),
    ("LOYALTY_POOL_MIN_SIZE", "four"),
    ("LOYALTY_POOL_MIN_SIZE", "0"),
    ("LOYALTY_POOL_MAX_SIZE", "-16"),
    ("LOYALTY_POOL_ACQUIRE_TIMEOUT_S", "soon"),
    ("LOYALTY_POOL_ACQUIRE_TIMEOUT_S", "0"),
    ("LOYALTY_POOL_ACQUIRE_TIMEOUT_S", "-1"),
    ("LOYALTY_POOL_ACQUIRE_TIMEOUT_S", "nan"),
    ("LOYALTY_POOL_ACQUIRE_TIMEOUT_S", "inf"),
    ("LOYALTY_MAX_BODY_BYTES", "1MB"),
    ("LOYALTY_MAX_BODY_BYTES", "0"),
    ("LOYALTY_CUSTOMER_TOKEN_TTL_S", "-900"),
    ("LOYALTY_CUSTOMER_TOKEN_TTL_S", "15m"),
    ("LOYALTY_LOG_LEVEL", "LOUD"),
    ("LOYALTY_LOG_LEVEL", "TRACE"),
    ("LOYALTY_RUN_JOBS", "maybe"),
    ("LOYALTY_RUN_JOBS", "2"),
    ("LOYALTY_JOB_INTERVAL_S", "-30"),
    ("LOYALTY_JOB_INTERVAL_S", "0"),
    ("LOYALTY_JOB_INTERVAL_S", "NaN"),
    ("LOYALTY_WEBHOOK_TIMEOUT_S", "0"),
    ("LOYALTY_WEBHOOK_TIMEOUT_S", "61"),
    ("LOYALTY_WEBHOOK_RETRY_BASE_S", "-5"),
    ("LOYALTY_WEBHOOK_RETRY_MAX_DELAY_S", "inf"),
    ("LOYALTY_WEBHOOK_RETRY_FOR_S", "3000000"),
    ("LOYALTY_WEBHOOK_DISABLE_AFTER", "0"),
    ("LOYALTY_WEBHOOK_DISABLE_AFTER", "ten"),
    ("LOYALTY_WEBHOOK_INTERVAL_S", "0"),
    ("LOYALTY_WEBHOOK_ALLOW_PRIVATE", "maybe"),
    ("LOYALTY_WEBHOOK_HTTPS_ONLY", "2"),
    ("LOYALTY_EXPIRING_SOON_DAYS", "0"),
    ("LOYALTY_EXPIRING_SOON_DAYS", "366"),
    ("LOYALTY_WIN_BACK_DAYS", "60.5"),
    ("LOYALTY_CROSS_SELL_ORDERS", "1001"),
    ("LOYALTY_RATE_LIMIT_PER_S", "-1"),
    ("LOYALTY_RATE_LIMIT_PER_S", "inf"),
    ("LOYALTY_RATE_LIMIT_BURST", "0"),
    ("LOYALTY_RATE_LIMIT_BURST", "1.5"),
    ("DATABASE_URL", "mysql://db/loyalty"),
    ("DATABASE_URL", "db.internal:5432"),
    ("DATABASE_URL", "postgresql://app@db.internal:port/loyalty"),
    ("DATABASE_URL", "postgresql://app@db.internal:65536/loyalty"),
    ("DATABASE_URL", "postgresql://app@[::1/loyalty"),
    ("LOYALTY_DATABASE_NAME", 'loyalty"; DROP DATABASE postgres; --'),
    ("LOYALTY_DATABASE_NAME", "1loyalty"),
    ("LOYALTY_DATABASE_NAME", "loyalty-test"),
    ("LOYALTY_DATABASE_NAME", "x" * 64),
]


@pytest.mark.parametrize(("variable", "raw"), BAD_VALUES, ids=[f"{v}={r!r:.24}" for v, r in BAD_VALUES])
def test_a_bad_value_raises_settings_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: raw})


@pytest.mark.parametrize(
    "url",
    [
        "postgres://db.internal/loyalty",
        "postgresql://app:secret@[::1]:5432/loyalty",
        "postgresql:///loyalty?host=/var/run/postgresql",
        "postgresql://app@db1:5432,db2:5433/loyalty",
    ],
)
def test_database_urls_asyncpg_takes_are_accepted(url: str) -> None:
    assert load_settings({"DATABASE_URL": url}).database_url == url


def test_pool_min_above_max_is_refused() -> None:
    with pytest.raises(SettingsError, match="LOYALTY_POOL_MIN_SIZE"):
        load_settings({"LOYALTY_POOL_MIN_SIZE": "20"})  # above the default max of 16
    with pytest.raises(SettingsError, match="LOYALTY_POOL_MAX_SIZE"):
        load_settings({"LOYALTY_POOL_MIN_SIZE": "8", "LOYALTY_POOL_MAX_SIZE": "4"})
    assert load_settings({"LOYALTY_POOL_MIN_SIZE": "16"}).pool_min_size == 16


def test_huge_whole_numbers_are_compared_not_converted() -> None:
    """A whole number too big for a float is still just a number (not an OverflowError)."""
    assert load_settings({"LOYALTY_MAX_BODY_BYTES": "9" * 400}).max_body_bytes == int("9" * 400)


def test_settings_are_frozen() -> None:
    loaded = load_settings({})
    with pytest.raises(AttributeError):
        loaded.port = 1  # type: ignore[misc]


# Environment variables cannot hold NUL, so the generated values leave it out.
ENV_TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=20)


@settings(max_examples=50, deadline=None)
@given(
    variable=st.sampled_from(sorted(NUMERIC_VARIABLES)),
    raw=ENV_TEXT | st.integers().map(str) | st.floats().map(str),
)
def test_a_numeric_variable_is_positive_and_finite_or_refused_by_name(variable: str, raw: str) -> None:
    try:
        loaded = load_settings({variable: raw})
    except SettingsError as error:
        assert variable in str(error)
        return
    value = getattr(loaded, NUMERIC_VARIABLES[variable])
    assert math.isfinite(value)
    assert value > 0
    if variable == "LOYALTY_PORT":
        assert value <= 65535


# --- the command line ----------------------------------------------------------------------

LOYALTY = Path(sysconfig.get_path("scripts")) / "loyalty"


def _run_cli(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("LOYALTY_")}
    base.pop("DATABASE_URL", None)
    # were the database touched, it would be this unreachable server or this (missing) directory
    base["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:9/none"
    base["LOYALTY_PGDATA"] = str(tmp_path / "must-not-exist")
    return subprocess.run(
        [str(LOYALTY), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "raw", "command"),
    [
        ("LOYALTY_PORT", "abc", "migrate"),
        ("LOYALTY_PORT", "abc", "serve"),
        ("LOYALTY_MAX_BODY_BYTES", "-1", "seed-demo"),
        ("DATABASE_URL", "mysql://db", "migrate"),
        ("LOYALTY_LOG_LEVEL", "chatty", "serve"),
    ],
)
def test_cli_exits_2_naming_the_variable(variable: str, raw: str, command: str, tmp_path: Path) -> None:
    assert LOYALTY.exists(), f"the `loyalty` script is not installed next to {sys.executable}"
    result = _run_cli([command], {variable: raw}, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert variable in result.stderr
    assert "configuration error" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "must-not-exist").exists()


def test_cli_rejects_an_unknown_command(tmp_path: Path) -> None:
    result = _run_cli(["frobnicate"], {}, tmp_path)
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


def test_event_and_webhook_settings() -> None:
    defaults = load_settings({})
    assert (defaults.webhook_timeout_s, defaults.webhook_retry_for_s, defaults.webhook_disable_after) == (
        5.0,
        86_400,
        50,
    )
    assert (defaults.webhook_retry_base_s, defaults.webhook_retry_max_delay_s, defaults.webhook_interval_s) == (
        5.0,
        3600.0,
        1.0,
    )
    assert (defaults.expiring_soon_days, defaults.win_back_days, defaults.cross_sell_orders) == (7, 60, 3)
    # public destinations only, http or https, unless the deployment says otherwise
    assert (defaults.webhook_allow_private, defaults.webhook_https_only) == (False, False)
    loaded = load_settings(
        {
            "LOYALTY_WEBHOOK_ALLOW_PRIVATE": "true",
            "LOYALTY_WEBHOOK_HTTPS_ONLY": "on",
            "LOYALTY_WEBHOOK_TIMEOUT_S": "2.5",
            "LOYALTY_WEBHOOK_RETRY_FOR_S": "600",
            "LOYALTY_WEBHOOK_DISABLE_AFTER": "5",
            "LOYALTY_EXPIRING_SOON_DAYS": "14",
            "LOYALTY_WIN_BACK_DAYS": "90",
            "LOYALTY_CROSS_SELL_ORDERS": "4",
        }
    )
    assert (loaded.webhook_timeout_s, loaded.webhook_retry_for_s, loaded.webhook_disable_after) == (2.5, 600.0, 5)
    assert (loaded.webhook_allow_private, loaded.webhook_https_only) == (True, True)
    assert (loaded.expiring_soon_days, loaded.win_back_days, loaded.cross_sell_orders) == (14, 90, 4)


def test_rate_limits_default_to_generous_and_zero_turns_them_off() -> None:
    assert (Settings().rate_limit_per_s, Settings().rate_limit_burst) == (1000.0, 2000)
    loaded = load_settings({"LOYALTY_RATE_LIMIT_PER_S": "0", "LOYALTY_RATE_LIMIT_BURST": "10"})
    assert (loaded.rate_limit_per_s, loaded.rate_limit_burst) == (0.0, 10)


@pytest.mark.parametrize("kind", ["file", "directory with other files"])
def test_pgdata_that_is_not_a_data_directory_is_refused_before_anything_touches_it(kind: str, tmp_path: Path) -> None:
    """A LOYALTY_PGDATA that exists but holds no PostgreSQL data (a typo, $HOME, a file) was
    handed to the embedded server: as root it chowned the path to its system user, then
    initdb failed with a traceback. Refused at start instead, naming the variable (exit 2)."""
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("x")
    else:
        target.mkdir()
        (target / "precious.txt").write_text("x")
    with pytest.raises(SettingsError, match="LOYALTY_PGDATA"):
        load_settings({"LOYALTY_PGDATA": str(target)})
    # with DATABASE_URL the directory is unused, so not checked
    assert load_settings({"LOYALTY_PGDATA": str(target), "DATABASE_URL": "postgresql://u@h/d"}).pgdata == target


def test_pgdata_empty_or_initialised_or_missing_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "PG_VERSION").write_text("18\n")
    for name in ("empty", "made", "missing"):
        assert load_settings({"LOYALTY_PGDATA": str(tmp_path / name)}).pgdata == tmp_path / name
