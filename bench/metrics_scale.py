"""Retention metrics at scale: the rollup use cases against plain SQL over the raw orders.

    .venv/bin/python -m bench.metrics_scale [--customers 1000000] [--orders 10000000]

What it does, on the embedded PostgreSQL server (or DATABASE_URL's):

1. drops and recreates the database `loyalty_metrics_bench` (`--database`), migrates it, creates one
   program (Europe/Amsterdam) and a shop;
2. loads `--customers` customers and about `--orders` orders (exactly that many) with
   COPY, in chunks of `--chunk` customers so memory stays bounded. Orders span `--years`
   years up to yesterday: 45 % of customers buy once, the others a geometric number of
   times (mean chosen so the total comes out), at exponential gaps around a per-customer
   mean (lognormal, about 35 days), so they lapse after their last order; first orders
   lean towards the later years (a growing program). Net values are lognormal (median
   35.00), 0.5 % of orders are 0, 3 % fully and 2 % partly refunded;
3. fills the rollups with `rebuild_metric_rollups(program)` (migrations 0013 and 0015:
   daily, monthly and summary rows, then spells and counts) and runs VACUUM ANALYZE,
   timing each load step;
4. times, best of `--repeats` after one warm-up, the use cases the API calls
   (`service.usecases.metrics`: a 12-month retention series, the cohort table of every
   month of the data, the RFM segment sizes) through the app's pool, and a plain SQL
   query over `orders` for each of the same figures; the plain answers must equal the
   use cases' (the run fails otherwise);
5. prints a table with the ratios and writes JSON to bench/results/, then drops the
   database (unless `--keep` or `--reuse`).

`--reuse` keeps the database and, on the next run with the same sizes and seed, skips
steps 1-3: it only migrates (a new migration rebuilds what it adds) and measures. The
load's parameters are kept as the database's comment.

Target: each use case under 1 s and at least 10x faster than its plain query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import numpy as np

from bench.ledger_throughput import _drop, _recreate, _server_dsn
from service.config import load_settings
from service.db.embedded import stop_embedded, with_database
from service.db.engine import close_pool, start_pool
from service.db.migrate import migrate
from service.db.piccolo_conf import DB
from service.db.rfm import segment_case
from service.domain.metrics import SEGMENTS, CohortRow, Granularity, Period, cohort_rows, periods_between
from service.domain.programs import ProgramSettings
from service.usecases import metrics
from service.usecases.programs import create_program, create_shop

BENCH_DATABASE = "loyalty_metrics_bench"
RESULTS = Path(__file__).resolve().parent / "results"
ZONE = "Europe/Amsterdam"
WINDOW_DAYS = 90
TARGET_S = 1.0
TARGET_RATIO = 10.0
ONE_TIME_SHARE = 0.45  # customers who buy once and never again
T = TypeVar("T")

# --- Synthetic data -------------------------------------------------------------------


def _order_counts(rng: np.random.Generator, customers: int, orders: int) -> np.ndarray:
    """Orders per customer: ONE_TIME_SHARE buy once, the rest a geometric number of times;
    adjusted so that the total is exactly `orders` (at least one each)."""
    if orders < customers:
        raise SystemExit("--orders must be at least --customers (every customer orders once)")
    repeaters = rng.random(customers) >= ONE_TIME_SHARE
    mean_repeat = max(1.0, (orders - customers * ONE_TIME_SHARE) / max(1, repeaters.sum()))
    counts = np.ones(customers, dtype=np.int64)
    counts[repeaters] = rng.geometric(1.0 / mean_repeat, int(repeaters.sum()))
    missing = orders - int(counts.sum())
    while missing != 0:
        if missing > 0:
            chosen = rng.choice(np.flatnonzero(repeaters) if repeaters.any() else customers, missing)
            np.add.at(counts, chosen, 1)
        else:
            candidates = np.flatnonzero(counts > 1)
            chosen = rng.choice(candidates, min(-missing, len(candidates)), replace=False)
            counts[chosen] -= 1
        missing = orders - int(counts.sum())
    return counts


@dataclass
class Layout:
    customers: int
    orders: int
    first_day: date  # local days [first_day, last_day]
    last_day: date
    counts: np.ndarray

    @property
    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1


def _customer_id(number: int) -> str:
    return f"cus_{number:08d}"


def _customer_rows(program_id: str, layout: Layout, first: int, last: int) -> list[tuple[Any, ...]]:
    enrolled = datetime.combine(layout.first_day, datetime.min.time(), ZoneInfo(ZONE))
    return [(program_id, _customer_id(n), f"ext-{n:08d}", enrolled, enrolled) for n in range(first, last)]


ORDER_COLUMNS = [
    "program_id",
    "shop_id",
    "id",
    "customer_id",
    "currency",
    "placed_at",
    "lines",
    "net",
    "points",
    "award",
    "release_at",
    "released_at",
    "refunded_net",
    "created_at",
]


def _order_rows(
    rng: np.random.Generator,
    program_id: str,
    shop_id: str,
    layout: Layout,
    first: int,
    last: int,
    first_order: int,
    now: datetime,
) -> list[tuple[Any, ...]]:
    """The orders of customers [first, last), numbered from first_order."""
    counts = layout.counts[first:last]
    k = len(counts)
    total = int(counts.sum())
    days = layout.days
    # first purchase: skewed towards the later part of the range (a growing program)
    start = np.floor(days * rng.random(k) ** 0.7)
    gap_mean = rng.lognormal(math.log(35.0), 0.6, k)
    owner = np.repeat(np.arange(k), counts)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.arange(total) - offsets[owner]
    gaps = rng.exponential(1.0, total) * gap_mean[owner]
    gaps[position == 0] = 0.0
    since_first = np.cumsum(gaps)
    since_first -= since_first[offsets][owner]
    span = since_first[offsets + counts - 1]  # the last order's distance from the first
    room = days - 1 - start
    squeeze = np.where(span > room, room / np.maximum(span, 1e-9), 1.0)
    day = np.floor(start[owner] + since_first * squeeze[owner]).astype(np.int64)
    day = np.minimum(day, days - 1)
    second = rng.integers(0, 86400, total)
    net = np.round(rng.lognormal(math.log(3500.0), 0.6, total)).astype(np.int64)
    fate = rng.random(total)
    net[fate < 0.005] = 0
    refunded = np.zeros(total, dtype=np.int64)
    full = (fate >= 0.005) & (fate < 0.035)
    partial = (fate >= 0.035) & (fate < 0.055)
    refunded[full] = net[full]
    refunded[partial] = np.floor(net[partial] * rng.uniform(0.05, 0.95, int(partial.sum()))).astype(np.int64)
    refunded = np.minimum(refunded, np.maximum(net - (partial & (net > 0)), 0))

    zone = ZoneInfo(ZONE)
    midnights = [datetime.combine(layout.first_day + timedelta(days=d), datetime.min.time(), zone) for d in range(days)]
    lines = '[{"sku": "bench", "category": "coffee", "quantity": 1}]'
    award = "{}"
    release = timedelta(days=14)
    rows: list[tuple[Any, ...]] = []
    for i, (o, d, s, n, r) in enumerate(
        zip(owner.tolist(), day.tolist(), second.tolist(), net.tolist(), refunded.tolist(), strict=True)
    ):
        placed = (midnights[d] + timedelta(seconds=s)).astimezone(UTC)  # a local time of local day d
        release_at = placed + release
        rows.append(
            (
                program_id,
                shop_id,
                f"ord_{first_order + i:09d}",
                _customer_id(first + o),
                "EUR",
                placed,
                lines,
                n,
                n // 100,
                award,
                release_at,
                release_at if release_at <= now else None,
                r,
                placed,
            )
        )
    return rows


# --- Plain SQL over the raw orders (written straightforwardly, for comparison) ----------

# A purchase: an order not fully refunded (an order of net 0 counts); its local day.
_PURCHASES = """
    SELECT customer_id, (placed_at AT TIME ZONE $2)::date AS day, net - refunded_net AS value
      FROM orders WHERE program_id = $1 AND (refunded_net < net OR net = 0)
"""

PLAIN_RETENTION = f"""
WITH purchases AS ({_PURCHASES}),
firsts AS (SELECT customer_id, min(day) AS first_day FROM purchases GROUP BY customer_id),
periods AS (SELECT n, s, e FROM unnest($3::date[], $4::date[]) WITH ORDINALITY AS p(s, e, n)),
activity AS (
    SELECT p.n, u.customer_id,
           bool_or(u.day >= p.s - $5::int AND u.day < p.s) AS at_start,
           bool_or(u.day >= p.e + 1 - $5::int AND u.day <= p.e) AS at_end
      FROM periods p JOIN purchases u ON u.day >= p.s - $5::int AND u.day <= p.e
     GROUP BY p.n, u.customer_id
)
SELECT p.n,
       (SELECT count(*) FROM activity a WHERE a.n = p.n AND a.at_start) AS b,
       (SELECT count(*) FROM activity a WHERE a.n = p.n AND a.at_end) AS e,
       (SELECT count(*) FROM firsts f WHERE f.first_day BETWEEN p.s AND p.e) AS new,
       (SELECT count(*) FROM activity a WHERE a.n = p.n AND a.at_start AND a.at_end) AS retained,
       (SELECT count(*) FROM activity a JOIN firsts f USING (customer_id)
         WHERE a.n = p.n AND a.at_end AND NOT a.at_start AND f.first_day < p.s) AS reactivated
  FROM periods p ORDER BY p.n
"""

PLAIN_COHORTS = f"""
WITH purchases AS ({_PURCHASES}),
firsts AS (SELECT customer_id, date_trunc('month', min(day))::date AS cohort FROM purchases GROUP BY customer_id)
SELECT f.cohort, date_trunc('month', u.day)::date AS month, count(DISTINCT u.customer_id) AS active
  FROM firsts f JOIN purchases u USING (customer_id)
 WHERE f.cohort >= $3 AND f.cohort <= $4 AND u.day < ($4::date + interval '1 month')
 GROUP BY 1, 2
"""


PLAIN_RFM = f"""
WITH per_customer AS (
    SELECT customer_id,
           $3::date - max((placed_at AT TIME ZONE $2)::date) FILTER (WHERE refunded_net < net OR net = 0) AS recency,
           count(*) FILTER (WHERE refunded_net < net OR net = 0) AS frequency,
           sum(net - refunded_net) AS monetary
      FROM orders WHERE program_id = $1
     GROUP BY customer_id
), base AS (SELECT * FROM per_customer WHERE frequency > 0),
n AS (SELECT count(*) AS n FROM base),
scored AS (
    SELECT b.*,
           least(5, 1 + 5 * (rank() OVER (ORDER BY recency DESC) - 1) / n.n) AS r,
           least(5, 1 + 5 * (rank() OVER (ORDER BY frequency) - 1) / n.n) AS f,
           least(5, 1 + 5 * (rank() OVER (ORDER BY monetary) - 1) / n.n) AS m
      FROM base b CROSS JOIN n
)
SELECT {segment_case()} AS segment, count(*) AS size FROM scored GROUP BY 1
"""


# --- Timing ---------------------------------------------------------------------------


@dataclass
class Timed:
    figure: str
    rollup_s: list[float]
    plain_s: list[float]
    rollup_best_s: float
    plain_best_s: float
    ratio: float
    under_1s: bool
    at_least_10x: bool


async def _best(label: str, call: Callable[[], Awaitable[T]], repeats: int) -> tuple[T, list[float]]:
    """One warm-up, then `repeats` timed calls; the answer of the last and every time."""
    answer = await call()
    times: list[float] = []
    for _ in range(repeats):
        began = time.perf_counter()
        answer = await call()
        times.append(round(time.perf_counter() - began, 4))
    print(f"  {label}: {', '.join(f'{t:.3f}' for t in times)} s", flush=True)
    return answer, times


def _check(figure: str, rollup: Any, plain: Any) -> None:
    if rollup != plain:
        raise SystemExit(f"MISMATCH in {figure}:\n  rollup: {rollup!r}\n  plain:  {plain!r}")
    print(f"  {figure}: rollup and plain answers are equal", flush=True)


def _timed(figure: str, rollup: list[float], plain: list[float]) -> Timed:
    best_r, best_p = min(rollup), min(plain)
    ratio = best_p / best_r if best_r > 0 else math.inf
    return Timed(figure, rollup, plain, best_r, best_p, round(ratio, 1), best_r < TARGET_S, ratio >= TARGET_RATIO)


# --- Setup ----------------------------------------------------------------------------


async def _admin(server_dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(server_dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for first in range(0, total, size):
        yield first, min(total, first + size)


async def _load(
    dsn: str, program_id: str, shop_id: str, layout: Layout, chunk: int, seed: int, now: datetime
) -> dict[str, float]:
    """COPY customers and orders, chunk by chunk; rebuild the rollups; VACUUM ANALYZE."""
    rng = np.random.default_rng(seed + 1)
    timings: dict[str, float] = {}
    connection = await asyncpg.connect(dsn)
    try:
        try:  # bulk load: skip the foreign-key triggers (the rows are valid by construction)
            await connection.execute("SET session_replication_role = replica")
        except asyncpg.PostgresError:
            print("  (not superuser: foreign keys checked row by row)", flush=True)
        began = time.perf_counter()
        for first, last in _chunks(layout.customers, chunk * 4):
            await connection.copy_records_to_table(
                "customers",
                records=_customer_rows(program_id, layout, first, last),
                columns=["program_id", "id", "external_id", "enrolled_at", "updated_at"],
            )
        timings["copy_customers_s"] = round(time.perf_counter() - began, 1)
        print(f"  customers: {layout.customers:,} in {timings['copy_customers_s']} s", flush=True)

        began = time.perf_counter()
        first_order = 0
        for first, last in _chunks(layout.customers, chunk):
            rows = _order_rows(rng, program_id, shop_id, layout, first, last, first_order, now)
            await connection.copy_records_to_table("orders", records=rows, columns=ORDER_COLUMNS)
            first_order += len(rows)
            if last % (chunk * 10) == 0 or last == layout.customers:
                print(f"  orders: {first_order:,} ({time.perf_counter() - began:.0f} s)", flush=True)
        timings["copy_orders_s"] = round(time.perf_counter() - began, 1)

        began = time.perf_counter()
        await connection.execute("RESET session_replication_role")
        rebuilt = await connection.fetchval("SELECT rebuild_metric_rollups($1)", program_id)
        timings["rebuild_rollups_s"] = round(time.perf_counter() - began, 1)
        print(f"  rollups rebuilt ({rebuilt:,} customers) in {timings['rebuild_rollups_s']} s", flush=True)

        timings |= await _vacuum(connection)
    finally:
        await connection.close()
    return timings


TABLES = (
    "customers",
    "orders",
    "customer_days",
    "customer_months",
    "customer_summaries",
    "customer_spells",
    "metric_day_counts",
    "metric_cohort_counts",
    "metric_value_counts",
)


async def _vacuum(connection: asyncpg.Connection) -> dict[str, float]:
    """VACUUM ANALYZE the tables; their rows and sizes."""
    timings: dict[str, float] = {}
    began = time.perf_counter()
    for table in TABLES:
        await connection.execute(f"VACUUM (ANALYZE) {table}")
    timings["vacuum_analyze_s"] = round(time.perf_counter() - began, 1)
    print(f"  VACUUM ANALYZE in {timings['vacuum_analyze_s']} s", flush=True)
    sizes = await connection.fetch(
        "SELECT relname, reltuples::bigint AS rows, pg_total_relation_size(oid) AS bytes FROM pg_class"
        " WHERE relname = ANY($1::text[]) AND relkind = 'r'",
        list(TABLES),
    )
    for row in sorted(sizes, key=lambda r: r["relname"]):
        print(f"  {row['relname']}: {row['rows']:,} rows, {row['bytes'] / 2**20:,.0f} MiB", flush=True)
        timings[f"rows_{row['relname']}"] = row["rows"]
        timings[f"mib_{row['relname']}"] = round(row["bytes"] / 2**20)
    return timings


# --- Measuring ------------------------------------------------------------------------


def _cohort_compare(rows: list[CohortRow]) -> list[tuple[date, int, list[int]]]:
    return [(row.cohort, row.size, row.active) for row in rows]


async def _measure(dsn: str, program_id: str, layout: Layout, now: datetime, repeats: int) -> list[Timed]:
    plain = await asyncpg.connect(dsn)
    results: list[Timed] = []
    try:
        today = now.astimezone(ZoneInfo(ZONE)).date()

        # 1. retention of the last 12 complete months
        last_month = today.replace(day=1) - timedelta(days=1)
        first_month = date(last_month.year - 1 + (last_month.month == 12), last_month.month % 12 + 1, 1)
        periods: list[Period] = periods_between(first_month, last_month, Granularity.MONTH)
        print(f"retention, {len(periods)} months {periods[0].start} .. {periods[-1].end}:", flush=True)
        series, rollup_times = await _best(
            "use case",
            lambda: metrics.retention_series(program_id, first_month, last_month, Granularity.MONTH, WINDOW_DAYS, None),
            repeats,
        )

        async def plain_retention() -> list[asyncpg.Record]:
            return await plain.fetch(
                PLAIN_RETENTION,
                program_id,
                ZONE,
                [p.start for p in periods],
                [p.end for p in periods],
                WINDOW_DAYS,
            )

        plain_rows, plain_times = await _best("plain SQL", plain_retention, repeats)
        _check(
            "retention",
            [(p.b, p.e, p.n, p.retained, p.reactivated) for p in series.periods],
            [(r["b"], r["e"], r["new"], r["retained"], r["reactivated"]) for r in plain_rows],
        )
        results.append(_timed("retention, 12 months", rollup_times, plain_times))

        # 2. the cohort table of every month of the data
        start, end = layout.first_day.replace(day=1), layout.last_day
        print(f"cohorts {start} .. {end.replace(day=1)}:", flush=True)
        table, rollup_times = await _best("use case", lambda: metrics.cohort_table(program_id, start, end), repeats)

        async def plain_cohorts() -> list[asyncpg.Record]:
            return await plain.fetch(PLAIN_COHORTS, program_id, ZONE, start, end.replace(day=1))

        plain_rows, plain_times = await _best("plain SQL", plain_cohorts, repeats)
        active = {(r["cohort"], r["month"]): r["active"] for r in plain_rows}
        sizes = {cohort: count for (cohort, month), count in active.items() if cohort == month}
        _check(
            "cohorts",
            _cohort_compare(table.rows),
            _cohort_compare(cohort_rows(sizes, active, end.replace(day=1))),
        )
        results.append(_timed(f"cohort table, {len(table.rows)} months", rollup_times, plain_times))

        # 3. RFM segment sizes as of today
        print(f"RFM segments as of {today}:", flush=True)
        segments, rollup_times = await _best("use case", lambda: metrics.segment_sizes(program_id, now), repeats)

        async def plain_rfm() -> list[asyncpg.Record]:
            return await plain.fetch(PLAIN_RFM, program_id, ZONE, today)

        plain_rows, plain_times = await _best("plain SQL", plain_rfm, repeats)
        plain_sizes = {r["segment"]: r["size"] for r in plain_rows}
        _check(
            "RFM segments",
            {s.name: s.size for s in segments.segments},
            {rule.name: plain_sizes.get(rule.name, 0) for rule in SEGMENTS},
        )
        results.append(_timed("RFM segment sizes", rollup_times, plain_times))
        print("  sizes: " + ", ".join(f"{s.name} {s.size:,}" for s in segments.segments), flush=True)
        rates = [p.rate_pct for p in series.periods]
        print(f"  retention (seed) rates: {rates}", flush=True)
    finally:
        await plain.close()
    return results


def _table(results: Sequence[Timed]) -> str:
    lines = [
        "| figure | use case (rollups), best s | plain SQL over orders, best s | ratio | < 1 s | >= 10x |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.figure} | {r.rollup_best_s:.3f} | {r.plain_best_s:.2f} | {r.ratio:,.1f}x"
            f" | {'yes' if r.under_1s else '**no**'} | {'yes' if r.at_least_10x else '**no**'} |"
        )
    return "\n".join(lines)


# --- Main -----------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.metrics_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers (default 1,000,000)")
    parser.add_argument("--orders", type=int, default=10_000_000, help="orders (default 10,000,000)")
    parser.add_argument("--years", type=int, default=3, help="years of orders, up to yesterday (default 3)")
    parser.add_argument("--chunk", type=int, default=20_000, help="customers per COPY of orders (default 20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (default 3)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    parser.add_argument("--database", default=BENCH_DATABASE, help=f"the bench database (default {BENCH_DATABASE})")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the database, and reuse one loaded with the same sizes and seed"
    )
    args = parser.parse_args(argv)
    if args.customers < 1 or args.orders < args.customers or args.repeats < 1 or args.chunk < 1:
        parser.error("need customers >= 1, orders >= customers, repeats >= 1, chunk >= 1")
    return args


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    """What a loaded bench database holds (its comment, for --reuse)."""

    customers: int
    orders: int
    years: int
    seed: int
    program_id: str
    first_day: date
    last_day: date
    loaded_at: datetime


async def _loaded(server_dsn: str, args: argparse.Namespace) -> Loaded | None:
    """The bench database's load, when it exists and matches the arguments."""
    connection = await asyncpg.connect(server_dsn)
    try:
        comment = await connection.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", args.database
        )
    finally:
        await connection.close()
    if not comment:
        return None
    try:
        loaded = msgspec.json.decode(comment, type=Loaded)
    except msgspec.ValidationError:
        return None
    same = (loaded.customers, loaded.orders, loaded.years, loaded.seed) == (
        args.customers,
        args.orders,
        args.years,
        args.seed,
    )
    return loaded if same else None


async def _fresh_load(dsn: str, args: argparse.Namespace, now: datetime) -> tuple[Loaded, dict[str, float]]:
    """Create the program and load the synthetic orders; returns what was loaded."""
    program = await create_program(ProgramSettings(name="Metrics bench", time_zone=ZONE))
    shop = await create_shop(program.id, "Bench shop")
    today = now.astimezone(ZoneInfo(ZONE)).date()
    last_day = today - timedelta(days=1)
    first_day = date(last_day.year - args.years, last_day.month, 1)
    layout = Layout(
        customers=args.customers,
        orders=args.orders,
        first_day=first_day,
        last_day=last_day,
        counts=_order_counts(np.random.default_rng(args.seed), args.customers, args.orders),
    )
    print(
        f"loading {args.customers:,} customers, {args.orders:,} orders, {first_day} .. {last_day}"
        f" ({int((layout.counts == 1).sum()):,} with one order, at most {int(layout.counts.max())}):",
        flush=True,
    )
    began = time.perf_counter()
    load = await _load(dsn, program.id, shop.id, layout, args.chunk, args.seed, now)
    load["total_s"] = round(time.perf_counter() - began, 1)
    print(f"load total {load['total_s']} s", flush=True)
    loaded = Loaded(
        customers=args.customers,
        orders=args.orders,
        years=args.years,
        seed=args.seed,
        program_id=program.id,
        first_day=first_day,
        last_day=last_day,
        loaded_at=now,
    )
    return loaded, load


async def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings = msgspec.structs.replace(settings, pool_min_size=2, pool_max_size=4)
    server_dsn = await _server_dsn(settings)
    started = datetime.now(UTC)
    where = "DATABASE_URL" if settings.database_url else f"embedded ({settings.pgdata})"
    print(f"server: {where}", flush=True)

    loaded = await _loaded(server_dsn, args) if args.reuse else None
    dsn = await _recreate(server_dsn, args.database) if loaded is None else with_database(server_dsn, args.database)
    try:
        DB.configure({"dsn": dsn})
        began = time.perf_counter()
        await migrate()
        migrated_s = round(time.perf_counter() - began, 1)
        await start_pool(dsn, settings)
        try:
            if loaded is None:
                loaded, load = await _fresh_load(dsn, args, started)
                comment = msgspec.json.encode(loaded).decode().replace("'", "''")
                await _admin(server_dsn, f"COMMENT ON DATABASE \"{args.database}\" IS '{comment}'")
            else:
                print(f"reusing the load of {loaded.loaded_at:%Y-%m-%d %H:%M} UTC; migrated in {migrated_s} s")
                connection = await asyncpg.connect(dsn)
                try:
                    load = {"reused": 1.0, "migrate_s": migrated_s} | await _vacuum(connection)
                finally:
                    await connection.close()
            layout = Layout(
                customers=loaded.customers,
                orders=loaded.orders,
                first_day=loaded.first_day,
                last_day=loaded.last_day,
                counts=np.zeros(0, dtype=np.int64),
            )
            # "now" as at the load, so figures of a reused database are those of the first run
            results = await _measure(dsn, loaded.program_id, layout, loaded.loaded_at, args.repeats)
        finally:
            await close_pool()
    finally:
        if not (args.keep or args.reuse):
            await _drop(server_dsn, args.database)
            print(f"dropped {args.database}", flush=True)

    table = _table(results)
    print("\n" + table)
    met = all(r.under_1s and r.at_least_10x for r in results)
    print("\ntarget (each < 1 s and >= 10x the plain query): " + ("met" if met else "NOT met"))
    connection = await asyncpg.connect(server_dsn)
    try:
        version = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    result = {
        "started": started.isoformat(),
        "args": vars(args),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "server": {"kind": "DATABASE_URL" if settings.database_url else "embedded", "version": version},
        "window_days": WINDOW_DAYS,
        "load": load,
        "figures": [asdict(r) for r in results],
        "target_met": met,
        "table_markdown": table,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"metrics_scale-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return asyncio.run(run(args))
    finally:
        stop_embedded()


if __name__ == "__main__":
    sys.exit(main())
