"""Fault scenarios of bench/faults.py, small enough for CI: each starts its own served app
and embedded PostgreSQL under /tmp, and fails if any of its checks fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--orders", "300", "--clients", "8", "--customers", "50", "--timeout", "60"]

pytestmark = pytest.mark.slow


def _run_scenario(name: str, *options: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.faults", name, *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_kill_app_mid_load_awards_every_order_exactly_once() -> None:
    output = _run_scenario("kill-app", *SMALL)
    assert "== kill-app: PASS" in output, output
    assert "order.award entries = 300, none twice" in output, output


def test_restart_database_mid_load_loses_nothing_acknowledged() -> None:
    output = _run_scenario("restart-db", *SMALL, "--strict")  # strict: every 5xx meanwhile is a 503
    assert "== restart-db: PASS" in output, output
    assert "the app recovered without a restart" in output, output


def test_an_exhausted_pool_answers_503_fast_instead_of_hanging() -> None:
    output = _run_scenario("pool", "--timeout", "60")
    assert "== pool: PASS" in output, output
