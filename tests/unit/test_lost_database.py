"""A database that went away is a 503 however the driver reports it; other errors stay 500."""

from __future__ import annotations

import asyncpg

from service.http.problems import _lost_database


def _raised_during(follow_on: Exception, first: Exception) -> Exception:
    try:
        try:
            raise first
        except Exception:
            raise follow_on  # noqa: B904 - as the driver does: the follow-on hides the first
    except Exception as error:
        return error


def test_follow_on_errors_of_a_dropped_connection_count_as_a_lost_database() -> None:
    closed = asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed")
    assert _lost_database(_raised_during(closed, asyncpg.AdminShutdownError("terminating connection")))
    assert _lost_database(closed)
    assert _lost_database(
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    )
    assert _lost_database(FileNotFoundError(2, "No such file or directory"))


def test_other_errors_are_not() -> None:
    assert not _lost_database(ValueError("a bug"))
    assert not _lost_database(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
    assert not _lost_database(_raised_during(KeyError("x"), ValueError("y")))
