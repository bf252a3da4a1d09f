"""The served app's resident memory: over a long run of awards, and while it streams a journal
export of 100,000 and of 1,000,000 entries.

    .venv/bin/python -m bench.memory --entries 1000000 --award-seconds 60

Starts `loyalty serve` as `bench.faults` does (a subprocess on a free loopback port, its own
embedded PostgreSQL in a fresh directory under /tmp, rate limits off, background jobs on, so
the chain sealer runs as in production) and sets up a program with `--customers` customers.
The server's resident memory is `VmRSS` of the serve process (`/proc/<pid>/status`: the
Python process that runs uvicorn and the app; the embedded PostgreSQL's processes are not
counted), sampled every `--sample` seconds.

1. Awards: `--clients` keep-alive clients post new orders (2 to 5 lines,
   `POST /v1/shops/{shop}/orders`, the client and step of `bench.load_http`) for `--warmup`
   seconds, then for `--award-seconds` more while RSS is sampled (each run also bounded by
   `--max-requests`): RSS before, at the end, its peak, and `--settle` seconds later.
2. Grants through the ledger's batch path: `--writers` writers in this process call
   `write_entries` (the batch operation of `bench.ledger_throughput`) with `--batch` grants a
   transaction, first `--first-export` entries, then the rest up to `--entries`. Meanwhile
   the bench holds the program's sealer lock, so the app's sealer seals none of them.
3. Journal exports: `GET /v1/finance/journal?from&to&format=` over the period of the grants
   written so far, as NDJSON and as CSV, read incrementally (lines and entries counted,
   nothing kept) while RSS is sampled: after the first part with its whole backlog unsealed,
   and after the rest just as the sealer is let go, so it works through the backlog (1M
   entries) while the big exports stream. Constant memory means the peak of the 1M export is
   no higher than that of the 100k one (`--max-growth-mib`).

Afterwards: each export has one line per posting of the period and one entry per grant
written; the seal queue empties (its length polled every 5 s, at most `--seal-wait` s) and
every entry is sealed; postings sum to zero per unit, customer balances equal their
postings, the trial balance through the API; `--verify-chain` also recomputes the whole
chain (slow at 1M).
Every wait is bounded; the app, the embedded PostgreSQL and the directory are removed at the
end (`--keep` keeps the directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from bench.faults import Program, Report, Scenario, check_books, run_reported, scenario
from bench.ledger_throughput import Operation
from bench.ledger_throughput import Workload as Grants
from bench.load_http import Workload as Awards
from bench.load_http import drive
from service.config import load_settings
from service.db.engine import close_pool, start_pool
from service.domain.access import Principal, Scope
from service.usecases.finance import verify_chain

MIB = 1024 * 1024
FORMATS = ("ndjson", "csv")


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


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

    def spread(self, report: Report, count: int) -> None:
        """About `count` samples, evenly spaced, as facts."""
        for second, rss in self.samples[:: max(1, len(self.samples) // count)]:
            report.fact(f"   t={second:5.1f} s  RSS {mib(rss)}")


# --- 1. A long run of awards ------------------------------------------------------------


async def award_run(sc: Scenario, sampler: Sampler, args: argparse.Namespace, report: Report) -> None:
    """Warm up, then awards for `--award-seconds` with RSS sampled; before, end, peak, after."""
    awards = Awards(sc.program, buyers=list(sc.program.customers), redeemers=[], tokens=[])
    port, pid = sc.app.port, sc.app.pid
    await drive([port], args.clients, awards.award, args.warmup, args.max_requests)
    before = rss_bytes(pid)
    sampler.start()
    kinds, took = await drive([port], args.clients, awards.award, args.award_seconds, args.max_requests)
    await sampler.stop()
    end, peak = rss_bytes(pid), sampler.peak
    await asyncio.sleep(args.settle)
    after = rss_bytes(pid)
    statuses = kinds["award"].statuses
    served = statuses[201]
    report.fact(
        f"awards: {served:,} orders in {took:.1f} s at {args.clients} clients ({served / took:.0f}/s)"
        f" after a {args.warmup:g} s warm-up; answers {dict(statuses)}"
    )
    report.fact(
        f"RSS of serve (pid {pid}) over the awards: before {mib(before)}, end {mib(end)}, peak {mib(peak)},"
        f" {args.settle:g} s later {mib(after)} (growth {mib(after - before)})"
    )
    sampler.spread(report, 6)
    report.check("every award answered 201", set(statuses) == {201}, str(dict(statuses)))
    report.check(
        f"RSS growth over the awards <= {args.max_growth_mib:g} MiB",
        after - before <= args.max_growth_mib * MIB,
        mib(after - before),
    )


# --- 2. Grants through the ledger's batch path ------------------------------------------


@contextlib.asynccontextmanager
async def ledger_pool(sc: Scenario, writers: int) -> AsyncIterator[None]:
    """The app's pool, in this process, on the served app's database."""
    settings = msgspec.structs.replace(load_settings(), pool_min_size=writers, pool_max_size=writers)
    await start_pool(sc.postgres.dsn("loyalty"), settings)
    try:
        yield
    finally:
        await close_pool()


async def write_grants(operation: Operation, count: int, batch: int, writers: int) -> float:
    """`count` grants, `batch` a transaction, from `writers` concurrent writers; seconds taken."""
    batches = iter(range(count // batch))

    async def writer(index: int) -> None:
        for _ in batches:
            if (written := await operation(index)) != batch:
                raise RuntimeError(f"a batch wrote {written} of {batch} grants")

    began = time.monotonic()
    await asyncio.gather(*(writer(index) for index in range(writers)))
    return time.monotonic() - began


async def write_part(
    operation: Operation, count: int, sampler: Sampler, args: argparse.Namespace, report: Report
) -> None:
    """Write `count` grants with the server's RSS sampled."""
    sampler.start()
    took = await write_grants(operation, count, args.batch, args.writers)
    await sampler.stop()
    report.fact(
        f"wrote {count:,} grants ({args.batch} a transaction, {args.writers} writers) in {took:.1f} s"
        f" ({count / took:,.0f}/s); serve's RSS meanwhile peak {mib(sampler.peak)}"
    )


@contextlib.asynccontextmanager
async def sealer_held(sc: Scenario) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Keep the app's sealer off the program (its per-program lock, held by this process)
    until the returned release is awaited, or the block ends."""
    connection = await sc.owner()
    await connection.execute("SELECT pg_advisory_lock(hashtextextended('seal:' || $1, 0))", sc.program.program_id)

    async def release() -> None:
        if not connection.is_closed():
            await connection.close()  # a session's advisory locks end with it

    try:
        yield release
    finally:
        await release()


async def queue_length(sc: Scenario) -> int:
    """Entries of the program waiting in the seal queue."""
    count: int = await sc.value("SELECT count(*) FROM seal_queue WHERE program_id = $1", sc.program.program_id)
    return count


# --- 3. Journal exports -----------------------------------------------------------------


@dataclass
class Tally:
    """Lines and entries of a streamed journal (a posting a line, an entry's lines together);
    an entry's lines share their first field, its id."""

    header: bool
    lines: int = 0
    entries: int = 0
    size: int = 0
    _rest: bytes = b""
    _last: bytes = b""

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            if self.header:
                self.header = False
                continue
            self.lines += 1
            key = line[: line.find(b",")]
            if key != self._last:
                self.entries += 1
                self._last = key


@dataclass
class Export:
    """One streamed export: what came, how long, the server's RSS meanwhile."""

    label: str
    format: str
    tally: Tally
    seconds: float
    first_byte: float
    rss_before: int
    rss_peak: int
    queued: int


async def export(sc: Scenario, period: tuple[datetime, datetime], fmt: str, sampler: Sampler, label: str) -> Export:
    """Stream the journal of a period in one format, counting, while RSS is sampled."""
    url = f"{sc.app.base_url}/v1/finance/journal"
    params = {"from": period[0].isoformat(), "to": period[1].isoformat(), "format": fmt}
    tally = Tally(header=fmt == "csv")
    queued, rss_before = await queue_length(sc), rss_bytes(sampler.pid)
    began = time.monotonic()
    first = 0.0
    sampler.start()
    try:
        headers = Program.auth(sc.program.finance)
        async with sc.client.stream("GET", url, params=params, headers=headers, timeout=60) as response:
            if response.status_code != 200:
                raise RuntimeError(f"journal: {response.status_code} {(await response.aread())[:300]!r}")
            first = time.monotonic() - began
            async for data in response.aiter_raw(1 << 16):
                tally.feed(data)
    finally:
        await sampler.stop()
    return Export(label, fmt, tally, time.monotonic() - began, first, rss_before, sampler.peak, queued)


def export_facts(done: Export, written: int, report: Report) -> None:
    """What one export sent, how fast, the RSS; its line and entry counts checked."""
    t = done.tally
    report.fact(
        f"{done.label} {done.format}: {t.lines:,} lines, {t.entries:,} entries ({t.size / MIB:,.0f} MiB)"
        f" in {done.seconds:.1f} s ({t.lines / done.seconds:,.0f} lines/s, first byte {done.first_byte:.2f} s);"
        f" seal queue at its start {done.queued:,}; RSS before {mib(done.rss_before)},"
        f" peak {mib(done.rss_peak)} (+{mib(done.rss_peak - done.rss_before)})"
    )
    report.check(
        f"{done.label} {done.format}: {written:,} entries, 2 lines each",
        (t.entries, t.lines) == (written, 2 * written),
        f"{t.entries:,} entries, {t.lines:,} lines",
    )


async def exports(
    sc: Scenario, period: tuple[datetime, datetime], written: int, sampler: Sampler, report: Report
) -> list[Export]:
    """The period's journal in each format, one after the other."""
    label = f"export of {written:,}"
    done = [await export(sc, period, fmt, sampler, label) for fmt in FORMATS]
    for one in done:
        export_facts(one, written, report)
    return done


def constant_memory(small: list[Export], large: list[Export], limit_mib: float, report: Report) -> None:
    """The large export's peak RSS is no higher than the small one's (plus the allowance)."""
    for before, after in zip(small, large, strict=True):
        growth = after.rss_peak - before.rss_peak
        report.check(
            f"{after.format}: peak RSS of the {after.tally.entries:,} export <= that of the"
            f" {before.tally.entries:,} one + {limit_mib:g} MiB",
            growth <= limit_mib * MIB,
            f"{mib(before.rss_peak)} -> {mib(after.rss_peak)}",
        )


# --- 4. The sealer catches up, the books -------------------------------------------------


async def watch_queue(sc: Scenario, within: float, every: float = 5.0) -> list[tuple[float, int]]:
    """The seal queue's length every `every` seconds until it is empty or `within` passes."""
    began = time.monotonic()
    samples = [(0.0, await queue_length(sc))]
    while samples[-1][1] and samples[-1][0] < within:
        await asyncio.sleep(every)
        samples.append((time.monotonic() - began, await queue_length(sc)))
    return samples


def drain_facts(samples: list[tuple[float, int]], report: Report) -> None:
    """How the sealer worked through the backlog."""
    (_, backlog), (took, left) = samples[0], samples[-1]
    report.fact(
        f"sealer: {backlog:,} queued when released, {left:,} left {took:.0f} s later"
        f" ({(backlog - left) / took:,.0f} entries/s, the exports streaming meanwhile)"
    )
    for second, queued in samples[:: max(1, len(samples) // 6)]:
        report.fact(f"   t={second:5.0f} s  queued {queued:,}")


async def check_entries(sc: Scenario, period: tuple[datetime, datetime], written: int, report: Report) -> None:
    """The period holds exactly the grants written, and every entry of the program is sealed."""
    program_id = sc.program.program_id
    in_period = await sc.value(
        "SELECT count(*) FROM entries WHERE program_id = $1 AND posted_at >= $2 AND posted_at < $3", program_id, *period
    )
    entries = await sc.value("SELECT count(*) FROM entries WHERE program_id = $1", program_id)
    sealed = await sc.value("SELECT count(*) FROM entry_seals WHERE program_id = $1", program_id)
    report.check(f"entries in the exported period = {written:,} grants", in_period == written, f"{in_period:,}")
    report.check("every entry sealed", sealed == entries, f"{sealed:,} of {entries:,}")


async def verify(report: Report, program_id: str) -> None:
    """The whole chain recomputed (with the app's use case, through this process's pool)."""
    began = time.monotonic()
    chain = await verify_chain(program_id)
    report.check(
        f"hash chain valid ({time.monotonic() - began:.0f} s to verify)",
        chain.valid and chain.unsealed == 0,
        f"sealed {chain.sealed:,}, unsealed {chain.unsealed:,}, first break {chain.first_break}",
    )


# --- Main -------------------------------------------------------------------------------


async def load_and_export(
    sc: Scenario,
    operation: Operation,
    start: datetime,
    count: int,
    sampler: Sampler,
    args: argparse.Namespace,
    report: Report,
) -> list[Export]:
    """Write `count` grants, then export them (the program's first since `start`)."""
    await write_part(operation, count, sampler, args, report)
    return await exports(sc, (start, datetime.now(UTC)), count, sampler, report)


async def grants_and_exports(sc: Scenario, sampler: Sampler, args: argparse.Namespace, report: Report) -> None:
    """With the sealer held off, load and export the first part, then load the rest; release
    the sealer and export everything while it works through the backlog."""
    grants = Grants(Principal(sc.program.program_id, Scope.ADMIN, key_id="key_bench"), sc.program.customers)
    operation = grants.batch(args.batch, args.writers, partitioned=True)
    start = datetime.now(UTC)
    async with ledger_pool(sc, args.writers), sealer_held(sc) as release:
        small = await load_and_export(sc, operation, start, args.first_export, sampler, args, report)
        await write_part(operation, args.entries - args.first_export, sampler, args, report)
        period = (start, datetime.now(UTC))
        await release()
        drain = asyncio.create_task(watch_queue(sc, args.seal_wait))
        large = await exports(sc, period, args.entries, sampler, report)
        await asyncio.sleep(args.settle)
        report.fact(f"RSS {args.settle:g} s after the exports: {mib(rss_bytes(sc.app.pid))}")
        constant_memory(small, large, args.max_growth_mib, report)
        drain_facts(await drain, report)
        await check_entries(sc, period, args.entries, report)
        if args.verify_chain:
            await verify(report, sc.program.program_id)


async def run(args: argparse.Namespace) -> Report:
    report = Report("memory")
    async with scenario("memory", args.customers, {}, args.keep) as sc:
        sampler = Sampler(sc.app.pid, args.sample)
        await asyncio.sleep(args.settle)
        report.fact(f"RSS of serve (pid {sc.app.pid}) idle after set-up: {mib(rss_bytes(sc.app.pid))}")
        await award_run(sc, sampler, args, report)
        await grants_and_exports(sc, sampler, args, report)
        await check_books(sc, report)
    return report


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--award-seconds", type=float, default=60.0, help="the measured run of awards, s (default 60)")
    add("--warmup", type=float, default=10.0, help="awards before it, s (default 10)")
    add("--clients", type=int, default=32, help="concurrent award clients (default 32)")
    add("--max-requests", type=int, default=100_000, help="bound on the awards of each run (default 100,000)")
    add("--customers", type=int, default=500, help="customers enrolled (default 500)")
    add("--entries", type=int, default=1_000_000, help="grants written and exported in all (default 1M)")
    add("--first-export", type=int, default=100_000, help="grants of the first, smaller export (default 100k)")
    add("--batch", type=int, default=250, help="grants per transaction (default 250)")
    add("--writers", type=int, default=2, help="concurrent writers of grants (default 2)")
    add("--sample", type=float, default=0.2, help="RSS sampling interval, s (default 0.2)")
    add("--settle", type=float, default=5.0, help="idle pause before an RSS reading, s (default 5)")
    add("--max-growth-mib", type=float, default=16.0, help="allowed RSS growth (default 16 MiB)")
    add("--seal-wait", type=float, default=900.0, help="bound on the wait for the sealer, s (default 900)")
    add("--verify-chain", action="store_true", help="also recompute the whole chain at the end")
    add("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    if not 0 < args.first_export < args.entries or args.entries % args.batch or args.first_export % args.batch:
        parser.error("need 0 < --first-export < --entries, both multiples of --batch")
    if args.batch * args.writers > args.customers:
        parser.error("--batch x --writers must not exceed --customers (a batch grants to distinct customers)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_reported("memory", run(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
