"""The served app's resident memory: over a long run of awards, and during a journal export.

    .venv/bin/python -m bench.memory [--seconds 60] [--clients 32] [--entries 1000000] [--keep]

Starts `loyalty serve` as `bench.faults` does (a subprocess on a free loopback port, its own
embedded PostgreSQL in a fresh directory under /tmp, rate limits off, background jobs on)
and sets up the same program (earning rules with a campaign, 200 customers). The server's
resident memory is `VmRSS` of the serve process in /proc/<pid>/status (the Python process
that runs uvicorn and the app; the embedded PostgreSQL runs in processes of its own and is
not counted), sampled every `--sample` seconds.

1. Awards: `--clients` concurrent clients post orders (2 to 5 lines,
   `POST /v1/shops/{shop}/orders`) for `--seconds`. RSS before, at the end, its peak, and
   after 5 s idle.
2. Journal export: `--entries` grants (`adjustment.grant`, system:issued -> a customer's
   `available`, 1 to 50 points, round robin over the customers) are written straight
   with SQL, in transactions of `--chunk` entries: entry ids from `entry_id_seq`, COPY into
   `entries`, `postings` (two each, with the customer's running `balance_after` and
   `account_version`), `lots` and `seal_queue`, the customer accounts' balances and
   versions updated by what the chunk credits; the migrations' checks run as for any
   write (the per-statement postings trigger, the per-entry balance check at COMMIT). In
   each transaction, holding the program's sealer lock, the bench seals the chunk with the
   app's own `seal_batch` (so the app's sealer has nothing to do meanwhile). Then
   `GET /v1/finance/journal?from&to&format=ndjson` over exactly those entries (2 postings,
   so 2 lines, per entry) is read incrementally (`httpx` streaming, lines counted, nothing
   kept) while RSS is sampled. Constant memory means the peak stays close to the RSS
   before the export: the script fails if it grows by more than `--max-growth-mib`.

Afterwards: postings sum to zero per unit, customer balances equal their postings, the
trial balance through the API, and nothing left in the seal queue; `--verify-chain` also
asks `GET /v1/finance/chain` (the server hashes the whole chain again: slow at 1M).
Every wait is bounded; the app, the embedded PostgreSQL and the directory are removed at
the end (`--keep` keeps the directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from bench.faults import Program, Report, Scenario, check_books, check_chain, order_body, run_reported, scenario
from service.db.chain import seal_batch

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Sampler:
    """RSS of one process every `interval` seconds while running."""

    pid: int
    interval: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        began = time.monotonic()
        while True:
            self.samples.append((time.monotonic() - began, rss_bytes(self.pid)))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self.samples.append((self.samples[-1][0] if self.samples else 0.0, rss_bytes(self.pid)))
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


def mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


# --- 1. A long run of awards ------------------------------------------------------------


async def award_run(sc: Scenario, seconds: float, clients: int) -> tuple[Counter[int], float]:
    """Concurrent clients post new orders until the time is up; statuses and time taken."""
    url = f"{sc.app.base_url}/v1/shops/{sc.program.shop_id}/orders"
    headers = Program.auth(sc.program.checkout)
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def client(number: int) -> None:
        rng = random.Random(number)
        sequence = 0
        while time.monotonic() < deadline:
            sequence += 1
            body = order_body(f"M{number:02d}-{sequence:07d}", rng.choice(sc.program.customers), rng)
            try:
                response = await sc.client.post(url, json=body, headers=headers, timeout=30)
                statuses[response.status_code] += 1
            except httpx.TransportError:
                statuses[0] += 1

    began = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return statuses, time.monotonic() - began


# --- 2. A million entries, straight in SQL ----------------------------------------------


async def write_grants(sc: Scenario, total: int, chunk: int) -> tuple[datetime, datetime, float]:
    """`total` grants in transactions of `chunk`; the [from, to) of their posted_at, and seconds."""
    program_id = sc.program.program_id
    connection = await sc.owner()
    began = time.monotonic()
    try:
        policy = await connection.fetchval("SELECT expiry_policy FROM programs WHERE id = $1", program_id)
        if policy != "never":
            raise RuntimeError(f"the bench writes lots without expiry; the program's policy is {policy}")
        issued = await connection.fetchval(
            "SELECT id FROM accounts WHERE program_id = $1 AND code = 'system:issued'", program_id
        )
        start: datetime = await connection.fetchval(
            "SELECT date_trunc('second', clock_timestamp()) + interval '1 second'"
        )
        written = 0
        while written < total:
            count = min(chunk, total - written)
            async with connection.transaction():
                await _write_chunk(connection, program_id, issued, start, written, count)
            written += count
        end = start + timedelta(microseconds=total)
    finally:
        await connection.close()
    return start, end, time.monotonic() - began


async def _write_chunk(
    connection: asyncpg.Connection, program_id: str, issued: int, start: datetime, offset: int, count: int
) -> None:
    """One transaction: entries, postings, lots, seal queue, balances; then sealed."""
    await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended('seal:' || $1, 0))", program_id)
    accounts = await connection.fetch(
        "SELECT id, balance, version FROM accounts WHERE program_id = $1 AND customer_id IS NOT NULL"
        " AND kind = 'available' ORDER BY id FOR NO KEY UPDATE",
        program_id,
    )
    ids = sorted(
        await connection.fetchval("SELECT array_agg(nextval('entry_id_seq')) FROM generate_series(1, $1)", count)
    )
    balance = {row["id"]: row["balance"] for row in accounts}
    version = {row["id"]: row["version"] for row in accounts}
    earned_at = await connection.fetchval("SELECT clock_timestamp()")
    entries, postings, lots = [], [], []
    metadata = json.dumps({"reason": "bench.memory"})
    for number, entry_id in enumerate(ids):
        serial = offset + number
        posted_at = start + timedelta(microseconds=serial)
        account = accounts[serial % len(accounts)]["id"]
        amount = 1 + serial % 50
        balance[account] += amount
        version[account] += 1
        entries.append((program_id, entry_id, "adjustment.grant", posted_at, "bench:memory", metadata))
        postings.append((program_id, entry_id, 1, issued, "POINTS", -amount, None, None, posted_at))
        postings.append(
            (program_id, entry_id, 2, account, "POINTS", amount, balance[account], version[account], posted_at)
        )
        lots.append((program_id, entry_id, account, amount, amount, earned_at, None))
    await connection.copy_records_to_table(
        "entries", records=entries, columns=["program_id", "id", "kind", "posted_at", "actor", "metadata"]
    )
    await connection.copy_records_to_table(
        "postings",
        records=postings,
        columns=[
            "program_id",
            "entry_id",
            "line",
            "account_id",
            "unit",
            "amount",
            "balance_after",
            "account_version",
            "posted_at",
        ],
    )
    await connection.copy_records_to_table(
        "lots",
        records=lots,
        columns=["program_id", "entry_id", "account_id", "amount", "remaining", "earned_at", "expires_at"],
    )
    await connection.copy_records_to_table(
        "seal_queue", records=[(program_id, entry_id) for entry_id in ids], columns=["program_id", "entry_id"]
    )
    changed = [row["id"] for row in accounts if version[row["id"]] != row["version"]]
    last_posted = start + timedelta(microseconds=offset + count - 1)
    await connection.execute(
        "UPDATE accounts a SET balance = c.balance, version = c.version,"
        " last_posted_at = greatest(a.last_posted_at, $5)"
        " FROM unnest($2::bigint[], $3::bigint[], $4::bigint[]) AS c (id, balance, version)"
        " WHERE a.program_id = $1 AND a.id = c.id",
        program_id,
        changed,
        [balance[i] for i in changed],
        [version[i] for i in changed],
        last_posted,
    )
    # in one call: each call's DELETE scans past the queue rows this transaction deleted
    limit = count + 10_000
    while await seal_batch(connection, program_id, limit) == limit:
        pass


async def export(sc: Scenario, start: datetime, end: datetime, sampler: Sampler) -> tuple[int, int, float, float]:
    """Stream the journal of [start, end) as NDJSON; lines, bytes, first-byte and total seconds."""
    url = f"{sc.app.base_url}/v1/finance/journal"
    params = {"from": start.isoformat(), "to": end.isoformat(), "format": "ndjson"}
    lines = size = 0
    began = time.monotonic()
    first = 0.0
    sampler.start()
    try:
        async with sc.client.stream(
            "GET", url, params=params, headers=Program.auth(sc.program.finance), timeout=60
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(f"journal: {response.status_code} {(await response.aread())[:300]!r}")
            first = time.monotonic() - began
            async for data in response.aiter_raw(1 << 16):
                lines += data.count(b"\n")
                size += len(data)
    finally:
        await sampler.stop()
    return lines, size, first, time.monotonic() - began


# --- Main -------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> Report:
    report = Report("memory")
    async with scenario("memory", args.customers, {}, args.keep) as sc:
        pid = sc.app.pid
        sampler = Sampler(pid, args.sample)
        await asyncio.sleep(2.0)
        before = rss_bytes(pid)
        sampler.start()
        statuses, took = await award_run(sc, args.seconds, args.clients)
        await sampler.stop()
        end_of_run, peak = rss_bytes(pid), sampler.peak
        await asyncio.sleep(5.0)
        idle = rss_bytes(pid)
        served = statuses.get(201, 0)
        report.fact(
            f"awards: {served:,} orders in {took:.0f} s at {args.clients} clients ({served / took:.0f}/s),"
            f" answers {dict(statuses)}"
        )
        report.fact(
            f"RSS of serve (pid {pid}): before {mib(before)}, end of run {mib(end_of_run)}, peak {mib(peak)},"
            f" 5 s later {mib(idle)} (growth {mib(idle - before)})"
        )
        report.check("every award answered 201", set(statuses) == {201}, str(dict(statuses)))
        for second, rss in sampler.samples[:: max(1, len(sampler.samples) // 6)]:
            report.fact(f"   t={second:5.1f} s  RSS {mib(rss)}")

        start, end, wrote = await write_grants(sc, args.entries, args.chunk)
        report.fact(
            f"wrote and sealed {args.entries:,} grant entries ({2 * args.entries:,} postings) with SQL"
            f" in {wrote:.1f} s ({args.entries / wrote:,.0f}/s)"
        )
        await asyncio.sleep(2.0)
        rss_before_export = rss_bytes(pid)
        lines, size, first, seconds = await export(sc, start, end, sampler)
        growth = sampler.peak - rss_before_export
        report.fact(
            f"journal export: {lines:,} NDJSON lines ({size / MIB:,.0f} MiB) in {seconds:.1f} s"
            f" ({lines / seconds:,.0f} lines/s, first byte after {first:.2f} s)"
        )
        report.fact(
            f"RSS during the export: before {mib(rss_before_export)}, peak {mib(sampler.peak)},"
            f" growth {mib(growth)} over {len(sampler.samples)} samples"
        )
        for second, rss in sampler.samples[:: max(1, len(sampler.samples) // 8)]:
            report.fact(f"   t={second:5.1f} s  RSS {mib(rss)}")
        report.check(f"exported lines = 2 x {args.entries:,}", lines == 2 * args.entries, f"{lines:,}")
        report.check(
            f"RSS growth during the export <= {args.max_growth_mib} MiB",
            growth <= args.max_growth_mib * MIB,
            mib(growth),
        )
        await check_books(sc, report)
        connection = await sc.owner()
        try:
            queued = await connection.fetchval(
                "SELECT count(*) FROM seal_queue WHERE program_id = $1", sc.program.program_id
            )
        finally:
            await connection.close()
        report.check("seal queue empty (every entry sealed)", queued == 0, f"{queued} queued")
        if args.verify_chain:
            await check_chain(sc, report, within=600.0)
    return report


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the award run (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent award clients (default 32)")
    parser.add_argument("--customers", type=int, default=200, help="customers enrolled (default 200)")
    parser.add_argument("--entries", type=int, default=1_000_000, help="journal entries to export (default 1M)")
    parser.add_argument("--chunk", type=int, default=50_000, help="entries per SQL transaction (default 50,000)")
    parser.add_argument("--sample", type=float, default=0.2, help="RSS sampling interval, s (default 0.2)")
    parser.add_argument("--max-growth-mib", type=float, default=32.0, help="allowed RSS growth in the export")
    parser.add_argument("--verify-chain", action="store_true", help="also verify the chain through the API")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_reported("memory", run(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
