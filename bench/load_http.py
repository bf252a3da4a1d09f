"""HTTP load on the served app next to pgbench's TPC-B, on one PostgreSQL in one run.

    .venv/bin/python -m bench.load_http [--seconds 10] [--clients 32] [--max-requests 200000] [--app-processes 1]

Starts `loyalty serve` on a fresh embedded PostgreSQL under /tmp (as `bench.faults` does:
own port, rate limits off, no demo program), sets up a program over HTTP (shop, keys,
earning rules with a category multiplier and an active campaign, a tier ladder via
`PUT /v1/tiers`, 1,000 customers, customer tokens, points for the redeemers), then runs
these phases one after the other, each for `--seconds` (after a one-second warm-up) or
`--max-requests` requests, whichever comes first, at `--clients` concurrent loopback
clients with one keep-alive connection each (with `--app-processes N`, N serve processes on the
one PostgreSQL, the clients split evenly over them, jobs in the first only):

1. awards: `POST /v1/shops/{shop}/orders`, a new order of 2 to 5 lines each time;
2. pgbench TPC-B-like (`-M prepared -c <clients> -j 2`, scale `--scale`) on a database of
   the same server, for as long;
3. redemptions: `POST /v1/holds` then `POST /v1/holds/{id}/capture` of part of it;
4. balance reads: `GET /v1/me/balance` with a customer token;
5. liveness: `GET /health/live`, which checks no credential and asks no database: the
   ceiling of the HTTP stack itself (uvicorn, Litestar, the middleware) on this machine,
   which no award can pass whatever it does.

Reports requests/s and p50/p99/max latency per kind, the CPU the app process and this
client spent per request, and whether awards reach the target (>= 1.0x TPC-B tps with
p99 < 50 ms); writes JSON to bench/results/. The client is a minimal HTTP/1.1 client on
asyncio streams (uvloop), so that it costs the shared machine as little CPU as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

from bench.faults import App, Postgres, Program, Scenario, order_body, scenario
from bench.ledger_throughput import RESULTS, CpuMeter, _percentile, _pgbench, _pgbench_binary, _recreate, _run

PGBENCH_DATABASE = "pgbench_http"
TARGET_RATIO = 1.0
TARGET_P99_MS = 50.0
LADDER = {
    "basis": "spend",
    "window": "rolling_12_months",
    "levels": [
        {"code": "member", "name": "Member", "threshold": 0},
        {"code": "silver", "name": "Silver", "threshold": 20_000, "earn_multiplier_bp": 12_500},
        {"code": "gold", "name": "Gold", "threshold": 60_000, "earn_multiplier_bp": 15_000, "perks": ["free shipping"]},
    ],
}


# --- A minimal HTTP/1.1 client ----------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; answers must carry Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self.reader, self.writer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, key: str, body: Any = None, extra: str = "") -> tuple[int, Any]:
        """Send one request; (status, decoded JSON body)."""
        reader, writer = await self._open()
        payload = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {key}\r\n"
            f"{extra}Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        lowered = {name.lower(): value for name, value in headers.items()}
        if "content-length" not in lowered:
            raise RuntimeError(f"no Content-Length in the answer to {method} {path}")
        data = await reader.readexactly(int(lowered["content-length"]))
        if lowered.get("connection", "").lower() == "close":
            await self.close()
        return status, json.loads(data) if data else None


# --- Measurement ------------------------------------------------------------------------


@dataclass
class Kind:
    """Latencies and outcomes of one kind of request in a phase."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def record(self, status: int, seconds: float, ok: int) -> None:
        self.statuses[status] += 1
        if status == ok:
            self.latencies.append(seconds)


@dataclass
class Result:
    """One kind of request over one phase."""

    kind: str
    clients: int
    seconds: float
    ok: int
    errors: dict[str, int]
    per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    app_cpu_ms_per_request: float | None
    client_cpu_ms_per_request: float


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _app_cpu(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _apps_cpu(apps: Sequence[App]) -> float | None:
    used = [_app_cpu(app.pid) for app in apps]
    return None if any(u is None for u in used) else sum(u for u in used if u is not None)


@contextlib.asynccontextmanager
async def more_processes(sc: Scenario, extra: int) -> AsyncIterator[list[App]]:
    """The scenario's app and `extra` more serve processes on its embedded PostgreSQL (they
    join the server the first one started; jobs run in the first only); stopped after."""
    apps = [App(sc.root, {"LOYALTY_RUN_JOBS": "false"}) for _ in range(extra)]
    try:
        for app in apps:
            app.start()
        for app in apps:
            await app.wait_ready(sc.client)
        yield [sc.app, *apps]
    finally:
        for app in apps:
            app.stop()


def summarise(name: str, kind: Kind, clients: int, seconds: float, ok: int, cpu: tuple[float | None, float]) -> Result:
    """A Result from what a phase recorded."""
    done = len(kind.latencies)
    app, client = cpu
    return Result(
        kind=name,
        clients=clients,
        seconds=round(seconds, 2),
        ok=done,
        errors={str(status): n for status, n in kind.statuses.items() if status != ok},
        per_s=round(done / seconds, 1) if seconds else 0.0,
        p50_ms=round(_percentile(kind.latencies, 0.50) * 1000, 2),
        p99_ms=round(_percentile(kind.latencies, 0.99) * 1000, 2),
        max_ms=round(max(kind.latencies, default=0.0) * 1000, 2),
        app_cpu_ms_per_request=round(1000 * app / done, 3) if app is not None and done else None,
        client_cpu_ms_per_request=round(1000 * client / done, 3) if done else 0.0,
    )


# Step: (connection, worker index, recorder) -> None; one unit of work (one or two requests)
Recorder = Callable[[str, int, float], None]
Step = Callable[[HttpConnection, int, Recorder], Awaitable[None]]


async def drive(
    ports: Sequence[int], clients: int, step: Step, seconds: float, limit: int
) -> tuple[dict[str, Kind], float]:
    """Run `step` in `clients` loops until `seconds` pass or `limit` steps are done; client i
    talks to the app process on ports[i % len(ports)]."""
    kinds: dict[str, Kind] = {}
    steps = {"done": 0}

    def record(name: str, status: int, took: float) -> None:
        kinds.setdefault(name, Kind()).record(status, took, ok=200 if name in ("capture", "balance", "live") else 201)

    async def loop(index: int, deadline: float) -> None:
        connection = HttpConnection(ports[index % len(ports)])
        try:
            while time.monotonic() < deadline and steps["done"] < limit:
                steps["done"] += 1
                await step(connection, index, record)
        finally:
            await connection.close()

    began = time.monotonic()
    await asyncio.gather(*(loop(index, began + seconds) for index in range(clients)))
    return kinds, time.monotonic() - began


async def timed(
    connection: HttpConnection, record: Recorder, name: str, method: str, path: str, key: str, **kw: Any
) -> tuple[int, Any]:
    """One request, recorded under `name`."""
    began = time.perf_counter()
    status, body = await connection.request(method, path, key, **kw)
    record(name, status, time.perf_counter() - began)
    return status, body


# --- The workload -----------------------------------------------------------------------


@dataclass
class Workload:
    """What the phases need: the program, who buys, who redeems, who reads."""

    program: Program
    buyers: list[str]
    redeemers: list[str]
    tokens: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    counter: int = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter:08d}"

    async def award(self, connection: HttpConnection, index: int, record: Recorder) -> None:
        """One checkout: a new order of several lines for a random customer."""
        body = order_body(self.next_id("L"), self.rng.choice(self.buyers), self.rng)
        path = f"/v1/shops/{self.program.shop_id}/orders"
        await timed(connection, record, "award", "POST", path, self.program.checkout, body=body)

    async def redeem(self, connection: HttpConnection, index: int, record: Recorder) -> None:
        """One redemption: hold 20 points, capture 15 of them."""
        key, customer = self.next_id("R"), self.rng.choice(self.redeemers)
        status, hold = await timed(
            connection,
            record,
            "hold",
            "POST",
            "/v1/holds",
            self.program.checkout,
            body={"customer_id": customer, "amount": 20, "reference": key},
            extra=f"Idempotency-Key: {key}-hold\r\n",
        )
        if status == 201:
            path = f"/v1/holds/{hold['id']}/capture"
            extra = f"Idempotency-Key: {key}-capture\r\n"
            await timed(
                connection, record, "capture", "POST", path, self.program.checkout, body={"amount": 15}, extra=extra
            )

    async def balance(self, connection: HttpConnection, index: int, record: Recorder) -> None:
        """One app balance read with a customer token."""
        await timed(connection, record, "balance", "GET", "/v1/me/balance", self.rng.choice(self.tokens))

    async def live(self, connection: HttpConnection, index: int, record: Recorder) -> None:
        """One liveness probe: no credential, no database."""
        await timed(connection, record, "live", "GET", "/health/live", "")


async def prepare(sc: Scenario, readers: int, redeemers: int) -> Workload:
    """Tiers, customer tokens and points for the redeemers, over HTTP."""
    client, base, program = sc.client, sc.app.base_url, sc.program
    admin = {**Program.auth(program.admin), "Idempotency-Key": "ladder-1"}
    (await client.put(f"{base}/v1/tiers", json=LADDER, headers=admin, timeout=30)).raise_for_status()
    who = program.customers
    tokens = await _gather_limited(
        [_token(client, base, program.checkout, customer) for customer in who[:readers]], width=8
    )
    await _gather_limited([_grant(client, base, program.admin, customer) for customer in who[-redeemers:]], width=8)
    return Workload(program, buyers=list(who), redeemers=who[-redeemers:], tokens=tokens)


async def _gather_limited(jobs: list[Awaitable[Any]], width: int) -> list[Any]:
    gate = asyncio.Semaphore(width)

    async def one(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def _token(client: httpx.AsyncClient, base: str, key: str, customer: str) -> str:
    url = f"{base}/v1/customers/{customer}/tokens?ttl_seconds=7200"
    response = await client.post(url, headers=Program.auth(key), timeout=30)
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


async def _grant(client: httpx.AsyncClient, base: str, key: str, customer: str) -> None:
    headers = {**Program.auth(key), "Idempotency-Key": f"grant-{customer}"}
    body = {"customer_id": customer, "amount": 1_000_000, "reason": "load test float"}
    response = await client.post(f"{base}/v1/ledger/adjustments", json=body, headers=headers, timeout=30)
    response.raise_for_status()


# --- Phases -----------------------------------------------------------------------------


async def http_phase(apps: Sequence[App], step: Step, args: argparse.Namespace) -> list[Result]:
    """Warm up for a second, then measure one kind of work (app CPU: all the processes')."""
    ports = [app.port for app in apps]
    await drive(ports, args.clients, step, 1.0, args.max_requests)
    app_before, client_before = _apps_cpu(apps), _client_cpu()
    kinds, seconds = await drive(ports, args.clients, step, args.seconds, args.max_requests)
    app_after, client_used = _apps_cpu(apps), _client_cpu() - client_before
    app_used = app_after - app_before if app_before is not None and app_after is not None else None
    results = []
    for name, kind in kinds.items():
        share = len(kind.latencies) / max(1, sum(len(k.latencies) for k in kinds.values()))
        cpu = (app_used * share if app_used is not None else None, client_used * share)
        results.append(
            summarise(name, kind, args.clients, seconds, 200 if name in ("capture", "balance", "live") else 201, cpu)
        )
    return results


async def pgbench_phase(postgres: Postgres, args: argparse.Namespace) -> dict[str, Any]:
    """pgbench -i at --scale, then TPC-B-like at --clients for --seconds on the same server."""
    server_dsn = postgres.dsn("postgres")
    dsn = await _recreate(server_dsn, PGBENCH_DATABASE)
    binary = _pgbench_binary()
    await _run([binary, "-i", "-q", "-s", str(args.scale), dsn])
    meter = CpuMeter(None, server_dsn)
    try:
        phase = await _pgbench(binary, dsn, args.clients, args.seconds, meter)
    finally:
        await meter.close()
    return asdict(phase)


# --- Report -----------------------------------------------------------------------------


def table(results: list[Result], pgbench: dict[str, Any]) -> str:
    """Markdown: one row per kind, then TPC-B."""
    lines = [
        "| kind | clients | requests/s | p50 ms | p99 ms | max ms | errors | app CPU ms/req | client CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        errors = ", ".join(f"{status} x{n}" for status, n in r.errors.items()) or "0"
        lines.append(
            f"| {r.kind} | {r.clients} | {r.per_s:,.0f} | {r.p50_ms} | {r.p99_ms} | {r.max_ms} | {errors}"
            f" | {r.app_cpu_ms_per_request} | {r.client_cpu_ms_per_request} |"
        )
    lines.append(
        f"| pgbench TPC-B (-M prepared -j 2) | {pgbench['clients']} | {pgbench['tps']:,.0f} tps"
        f" | | | | | | avg {pgbench['latency_ms_avg']} ms |"
    )
    return "\n".join(lines)


def verdict(results: list[Result], pgbench: dict[str, Any]) -> dict[str, Any]:
    """Awards against the target: >= 1.0x TPC-B tps and p99 < 50 ms."""
    award = next(r for r in results if r.kind == "award")
    live = next(r for r in results if r.kind == "live")
    tps = pgbench["tps"]
    ratio = award.per_s / tps if tps else 0.0
    met = ratio >= TARGET_RATIO and award.p99_ms < TARGET_P99_MS
    return {
        "award_per_s": award.per_s,
        "tpcb_tps": tps,
        "ratio": round(ratio, 3),
        "p99_ms": award.p99_ms,
        "met": met,
        "http_ceiling_per_s": live.per_s,
        "http_ceiling_ratio": round(live.per_s / tps, 3) if tps else 0.0,
    }


def write(args: argparse.Namespace, started: datetime, results: list[Result], pgbench: dict[str, Any]) -> str:
    """JSON to bench/results/; return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"load_http-{started:%Y%m%dT%H%M%SZ}.json"
    payload = {
        "started_at": started.isoformat(),
        "command": " ".join([sys.executable, "-m", "bench.load_http", *sys.argv[1:]]),
        "arguments": vars(args),
        "results": [asdict(r) for r in results],
        "pgbench": pgbench,
        "verdict": verdict(results, pgbench),
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return str(path)


# --- Main -------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load_http", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each phase (default 10)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument(
        "--app-processes", type=int, default=1, help="serve processes on one database, clients split over them"
    )
    parser.add_argument("--max-requests", type=int, default=200_000, help="bound on the steps of a phase")
    parser.add_argument("--customers", type=int, default=1000, help="customers enrolled (default 1000)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.seconds > 300 or args.clients < 1 or args.max_requests < 1 or args.customers < 10:
        parser.error("--seconds in (0, 300], --clients and --max-requests at least 1, --customers at least 10")
    if not 1 <= args.app_processes <= 8:
        parser.error("--app-processes in [1, 8]")
    return args


async def run(args: argparse.Namespace) -> int:
    """Set up, run the five phases, report; 0 even if the target is missed (it is reported)."""
    started = datetime.now(UTC)
    async with scenario("load", args.customers, {}, args.keep) as sc:
        readers = redeemers = min(200, len(sc.program.customers) // 2)
        workload = await prepare(sc, readers, redeemers)
        print(f"set up {len(sc.program.customers)} customers; measuring {args.seconds:g} s per phase", flush=True)
        async with more_processes(sc, args.app_processes - 1) as apps:
            results = await http_phase(apps, workload.award, args)
            pgbench = await pgbench_phase(sc.postgres, args)
            results += await http_phase(apps, workload.redeem, args)
            results += await http_phase(apps, workload.balance, args)
            results += await http_phase(apps, workload.live, args)
    print()
    print(table(results, pgbench))
    outcome = verdict(results, pgbench)
    print(
        f"\nawards: {outcome['award_per_s']:,.0f}/s = {outcome['ratio']}x TPC-B ({outcome['tpcb_tps']:,.0f} tps),"
        f" p99 {outcome['p99_ms']} ms; target >= {TARGET_RATIO}x with p99 < {TARGET_P99_MS:g} ms:"
        f" {'met' if outcome['met'] else 'NOT met'}"
    )
    print(
        f"the HTTP stack alone (GET /health/live): {outcome['http_ceiling_per_s']:,.0f}/s ="
        f" {outcome['http_ceiling_ratio']}x TPC-B, the most any award path could reach here"
    )
    print(f"wrote {write(args, started, results, pgbench)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    return uvloop.run(run(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
