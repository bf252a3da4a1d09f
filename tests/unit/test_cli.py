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
