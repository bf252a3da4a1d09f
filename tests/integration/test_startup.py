"""Start-up from a clean copy of the repository: serve, answer, stop cleanly, start again."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

REPO = Path(__file__).resolve().parents[2]
READY_WITHIN_S = 60
STOP_WITHIN_S = 20
KEY_LINE = re.compile(r"^\s+(checkout|admin|finance)\s+(lk\.\S+)\s*$", re.MULTILINE)

pytestmark = pytest.mark.slow


@dataclass
class Workspace:
    copy: Path
    pgdata: Path
    logs: Path


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    """A copy of the working tree as a fresh clone would have it (plus uncommitted work)."""
    # a short path under /tmp: the embedded server's socket path must stay short, and as
    # root the server runs as another user who must be able to reach the data directory
    root = Path(tempfile.mkdtemp(prefix="loyalty-startup-"))
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
        copy = root / "clone"
        for name in filter(None, listed.decode().split("\0")):
            source = REPO / name
            if source.is_file():  # a tracked file deleted in the working tree is not copied
                target = copy / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        assert (copy / "service" / "cli.py").is_file()
        assert not (copy / "pgdata").exists() and not (copy / ".venv").exists()
        yield Workspace(copy=copy, pgdata=root / "pgdata", logs=root)
    finally:
        _stop_leftover_postgres(root / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """Postmasters whose command line names this data directory."""
    found = []
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(str(pgdata) in part for part in cmdline):
            found.append(process)
    return found


def _stop_leftover_postgres(pgdata: Path) -> None:
    """If a failed test left the copy's server running, stop it (only that one, by pid)."""
    for process in _postgres_processes(pgdata):
        try:
            process.terminate()
            process.wait(10)
        except psutil.Error:
            pass


def _environment(workspace: Workspace, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LOYALTY_") and key not in {"DATABASE_URL", "PYTHONPATH"}
    }
    env.update(
        LOYALTY_PORT=str(port),
        LOYALTY_PGDATA=str(workspace.pgdata),
        PYTHONPATH=str(workspace.copy),
        PYTHONUNBUFFERED="1",
    )
    return env


class Server:
    """One `python -m service.cli serve` in the copy, its output in a file."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.output_path = workspace.logs / f"{name}.log"
        self._output = self.output_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            cwd=workspace.copy,
            env=_environment(workspace, self.port),
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{self.base}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"not ready within {READY_WITHIN_S} s:\n{self.output}")

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not stop within {STOP_WITHIN_S} s of SIGINT:\n{self.output}")
        finally:
            self._output.close()

    def terminate(self) -> int:
        """SIGTERM, as `kill`, `docker stop` or systemd stop a service."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not stop within {STOP_WITHIN_S} s of SIGTERM:\n{self.output}")
        finally:
            self._output.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._output.close()


def _assert_stopped_cleanly(server: Server, returncode: int, pgdata: Path) -> None:
    assert returncode == 0, server.output
    assert "Traceback" not in server.output, server.output
    assert not _postgres_processes(pgdata), "the embedded PostgreSQL outlived serve"
    assert not (pgdata / "postmaster.pid").exists()


def test_serve_from_a_clean_copy_then_again_on_the_same_data(workspace: Workspace) -> None:
    imported = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        cwd=workspace.copy,
        env=_environment(workspace, 0),
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(imported.stdout.strip()).is_relative_to(workspace.copy), imported.stdout

    # first start: a new data directory, migrated and seeded with the demo program
    first = Server(workspace, "first")
    try:
        first.wait_ready()
        assert _postgres_processes(workspace.pgdata), "serve should run its own embedded PostgreSQL"
        keys = dict(KEY_LINE.findall(first.output))
        assert set(keys) == {"checkout", "admin", "finance"}, first.output
        assert "prg_demo" in first.output

        program = httpx.get(f"{first.base}/v1/program", headers={"Authorization": f"Bearer {keys['admin']}"})
        assert program.status_code == 200, program.text
        assert program.json()["id"] == "prg_demo"
        for scope, key in keys.items():
            response = httpx.get(f"{first.base}/v1/program", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, (scope, response.text)
        refused = httpx.get(f"{first.base}/v1/program", headers={"Authorization": "Bearer lk.x.y.z"})
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")

        # logs are JSON lines carrying the request id
        ready_lines = [
            json.loads(line) for line in first.output.splitlines() if line.startswith("{") and "/health/ready" in line
        ]
        assert ready_lines, f"no JSON access log line for /health/ready:\n{first.output}"
        assert ready_lines[-1]["request_id"] not in ("", "-")
        assert ready_lines[-1]["status"] == 200
    except BaseException:
        first.kill()
        raise
    _assert_stopped_cleanly(first, first.interrupt(), workspace.pgdata)

    # second start: the same data directory, reused, not seeded again
    second = Server(workspace, "second")
    try:
        second.wait_ready()
        assert "exists already" in second.output, second.output
        assert not KEY_LINE.search(second.output), "keys are shown only when first seeded"
        reused = httpx.get(f"{second.base}/v1/program", headers={"Authorization": f"Bearer {keys['admin']}"})
        assert reused.status_code == 200, reused.text
        assert reused.json()["id"] == "prg_demo"
    except BaseException:
        second.kill()
        raise
    _assert_stopped_cleanly(second, second.interrupt(), workspace.pgdata)


def test_serve_stopped_by_sigterm_stops_its_embedded_postgres_too(workspace: Workspace) -> None:
    """uvicorn shuts down on SIGTERM and then raises the signal again; with its default action
    the process died without letting go of the embedded server, which kept running, and its
    pid stayed in the server's list of users, so no later `serve` or `stop-db` stopped it."""
    server = Server(workspace, "terminated")
    try:
        server.wait_ready()
    except BaseException:
        server.kill()
        raise
    _assert_stopped_cleanly(server, server.terminate(), workspace.pgdata)

    again = Server(workspace, "again")
    try:
        again.wait_ready()
    except BaseException:
        again.kill()
        raise
    _assert_stopped_cleanly(again, again.interrupt(), workspace.pgdata)


def test_serve_killed_hard_does_not_keep_the_embedded_postgres_running_for_ever(workspace: Workspace) -> None:
    """A serve killed with SIGKILL leaves its pid in the server's list of users; the next serve
    reuses the server, but neither its Ctrl-C nor `stop-db` stopped it while that dead pid was
    listed: the server ran on until stopped by hand."""
    killed = Server(workspace, "killed")
    try:
        killed.wait_ready()
    finally:
        killed.kill()
    assert _postgres_processes(workspace.pgdata), "a hard kill leaves the server running, to be reused"

    again = Server(workspace, "after-kill")
    try:
        again.wait_ready()
    except BaseException:
        again.kill()
        raise
    _assert_stopped_cleanly(again, again.interrupt(), workspace.pgdata)
