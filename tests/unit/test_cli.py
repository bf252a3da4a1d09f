"""The `loyalty` command refuses a bad argument with a message naming it and exit code 2
(as argparse does), before it touches the database, instead of a traceback."""

from __future__ import annotations

import pytest

from service import cli
from service.domain.errors import NotFound


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(*args: object) -> str:
        raise AssertionError("a bad argument must be refused before the database is touched")

    monkeypatch.setattr(cli, "prepare_database", refuse)
    for variable in ("DATABASE_URL", "LOYALTY_PGDATA"):
        monkeypatch.delenv(variable, raising=False)

    async def none_unreadable() -> dict[str, int]:
        return {}

    monkeypatch.setattr("service.usecases.dispatch.unreadable_deliveries", none_unreadable)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["create-program", "Demo", "--time-zone", "Mars/Olympus"], "--time-zone"),
        (["create-program", "Demo", "--currency", "eur"], "--currency"),
        (["create-program", "Demo", "--point-value-minor", "0"], "--point-value-minor"),
        (["create-program", "Demo", "--point-value-minor", "-5"], "--point-value-minor"),
        (["create-program", ""], "name"),
        (["create-api-key", "prg_demo", "--scope", "admin", "--shop-id", "shp_1"], "--shop-id"),
        (["create-api-key", "prg_demo", "--scope", "checkout", "--name", ""], "--name"),
        (["create-api-key", "prg_demo", "--scope", "checkout", "--name", "n" * 201], "--name"),
    ],
)
def test_a_bad_argument_is_a_message_naming_it_and_exit_code_2(
    arguments: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith("loyalty: ") and named in error, error
    assert "Traceback" not in error


def test_an_unknown_program_is_exit_code_2_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def migrated(*args: object) -> str:
        return "postgresql://unused"

    async def no_program(program_id: str) -> None:
        raise NotFound(f"program {program_id} not found")

    monkeypatch.setattr(cli, "prepare_database", migrated)
    monkeypatch.setattr("service.usecases.programs.get_program", no_program)
    assert cli.main(["create-api-key", "prg_nope", "--scope", "checkout"]) == 2
    assert capsys.readouterr().err == "loyalty: program prg_nope not found\n"


@pytest.mark.parametrize("failed", [[], ["referrals_rewarded", "expiry_entries"]])
def test_jobs_run_prints_what_each_job_did_and_a_failed_job_is_exit_code_1(
    failed: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`loyalty jobs run` from cron: a job that failed (logged, tried again next round) is named
    in its program's line and the command exits 1, not 0 as if everything had been done."""
    from service.usecases.dispatch import DispatchReport
    from service.usecases.jobs import JobReport

    async def migrated(*args: object) -> str:
        return "postgresql://unused"

    async def no_pool(*args: object) -> None:
        return None

    async def reports(*args: object) -> list[JobReport]:
        done = JobReport(program_id="prg_a", orders_released=2, referrals_rewarded=1, tiers_reviewed=3)
        return [done, JobReport(program_id="prg_b", expiry_entries=4, failed=list(failed))]

    async def dispatched(*args: object) -> DispatchReport:
        return DispatchReport(delivered=5)

    monkeypatch.setattr(cli, "prepare_database", migrated)
    monkeypatch.setattr("service.db.engine.start_pool", no_pool)
    monkeypatch.setattr("service.db.engine.close_pool", no_pool)
    monkeypatch.setattr("service.usecases.jobs.run_all", reports)
    monkeypatch.setattr("service.usecases.dispatch.dispatch_once", dispatched)
    assert cli.main(["jobs", "run"]) == (1 if failed else 0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2] == "webhooks: 5 delivered, 0 failed attempts"
    assert lines[0].startswith("prg_a: 2 orders released, 1 referrals rewarded,") and "3 tiers reviewed" in lines[0]
    assert "failed" not in lines[0]
    assert "4 expiry entries" in lines[1]
    assert lines[1].endswith("; failed: referrals_rewarded, expiry_entries" if failed else "entries sealed")


def test_jobs_run_names_a_stuck_chain_and_failing_items_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Items a job isolated (and left for a retry) and a chain stuck at an entry are named under
    their program's line, and the command exits 1 while any is left."""
    from datetime import UTC, datetime

    from service.db.job_failures import FailingItem
    from service.usecases.dispatch import DispatchReport
    from service.usecases.jobs import JobReport

    async def migrated(*args: object) -> str:
        return "postgresql://unused"

    async def no_pool(*args: object) -> None:
        return None

    at = datetime(2026, 1, 1, tzinfo=UTC)
    item = FailingItem(
        job="expire-holds", item="hld_1", attempts=3, first_failed_at=at, retry_at=at, last_error="Broken: x"
    )

    async def reports(*args: object) -> list[JobReport]:
        return [
            JobReport(
                program_id="prg_a", failed=["entries_sealed"], seal_stuck="entry 7: ValueError: x", failing_items=[item]
            )
        ]

    async def dispatched(*args: object) -> DispatchReport:
        return DispatchReport(delivered=1, errors=1, failed_attempts=1)

    monkeypatch.setattr(cli, "prepare_database", migrated)
    monkeypatch.setattr("service.db.engine.start_pool", no_pool)
    monkeypatch.setattr("service.db.engine.close_pool", no_pool)
    monkeypatch.setattr("service.usecases.jobs.run_all", reports)
    monkeypatch.setattr("service.usecases.dispatch.dispatch_once", dispatched)
    assert cli.main(["jobs", "run"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("; failed: entries_sealed")
    assert lines[1] == "  sealing stuck at entry 7: ValueError: x"
    assert lines[2].startswith("  failing: expire-holds hld_1, 3 attempts since 2026-01-01T00:00:00+00:00")
    assert lines[3] == "webhooks: 1 delivered, 1 failed attempts, 1 dispatcher errors"


def test_jobs_run_counts_the_deliveries_held_back_by_an_event_this_version_cannot_read_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An event this version cannot read (a newer version's) is kept pending and holds its
    customer's later events back: the webhooks line counts such deliveries, per program, and
    the command exits 1 while any is left, as a monitor should notice a customer held back."""
    from service.usecases.dispatch import DispatchReport
    from service.usecases.jobs import JobReport

    async def migrated(*args: object) -> str:
        return "postgresql://unused"

    async def no_pool(*args: object) -> None:
        return None

    async def reports(*args: object) -> list[JobReport]:
        return [JobReport(program_id="prg_a")]

    async def dispatched(*args: object) -> DispatchReport:
        return DispatchReport(delivered=1, unreadable=1)

    async def unreadable(*args: object) -> dict[str, int]:
        return {"prg_a": 2}  # one met by this pass, one leased by another dispatcher

    monkeypatch.setattr(cli, "prepare_database", migrated)
    monkeypatch.setattr("service.db.engine.start_pool", no_pool)
    monkeypatch.setattr("service.db.engine.close_pool", no_pool)
    monkeypatch.setattr("service.usecases.jobs.run_all", reports)
    monkeypatch.setattr("service.usecases.dispatch.dispatch_once", dispatched)
    monkeypatch.setattr("service.usecases.dispatch.unreadable_deliveries", unreadable)
    assert cli.main(["jobs", "run"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "webhooks: 1 delivered, 0 failed attempts, 2 pending with an event a dispatcher could not read"
    assert lines[2] == (
        "  unreadable: prg_a: 2 deliveries kept pending for a version that reads their event;"
        " their customers' later events to the endpoint wait behind them"
    )


def test_jobs_run_exits_1_while_an_item_is_failing_even_if_every_job_succeeded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job that isolated an item did not fail as a whole, but the item is left: exit 1."""
    from datetime import UTC, datetime

    from service.db.job_failures import FailingItem
    from service.usecases.dispatch import DispatchReport
    from service.usecases.jobs import JobReport

    async def migrated(*args: object) -> str:
        return "postgresql://unused"

    async def no_pool(*args: object) -> None:
        return None

    at = datetime(2026, 1, 1, tzinfo=UTC)
    item = FailingItem(job="expire-holds", item="hld_1", attempts=1, first_failed_at=at, retry_at=at, last_error="x")

    async def reports(*args: object) -> list[JobReport]:
        return [JobReport(program_id="prg_a", failing_items=[item])]

    async def dispatched(*args: object) -> DispatchReport:
        return DispatchReport(delivered=1)

    monkeypatch.setattr(cli, "prepare_database", migrated)
    monkeypatch.setattr("service.db.engine.start_pool", no_pool)
    monkeypatch.setattr("service.db.engine.close_pool", no_pool)
    monkeypatch.setattr("service.usecases.jobs.run_all", reports)
    monkeypatch.setattr("service.usecases.dispatch.dispatch_once", dispatched)
    assert cli.main(["jobs", "run"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "failed" not in lines[0]
    assert lines[1].startswith("  failing: expire-holds hld_1, 1 attempts since")


def test_serve_on_a_taken_port_says_so_before_touching_the_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Otherwise PostgreSQL is started, the schema migrated and the demo keys printed, and
    only then does the server find the port taken."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("LOYALTY_HOST", "127.0.0.1")
        monkeypatch.setenv("LOYALTY_PORT", str(port))
        assert cli.main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"loyalty: cannot serve on 127.0.0.1:{port}: "), error
