"""Bulk import of the CDNOW purchase log through `POST /v1/bulk/awards`.

    .venv/bin/python -m bench.bulk_cdnow [--concurrency 4] [--enrol-concurrency 16] [--limit N] [--keep]

The CDNOW master file (69,659 purchases of 23,570 customers, January 1997 to June 1998:
customer id, date, number of CDs, amount in dollars) ships inside the `lifetimes` wheel.
The script fetches the wheel with `pip download lifetimes==0.11.3 --no-deps` into a
temporary directory (the only network access, through pip) and reads
`lifetimes/datasets/CDNOW_master.txt` out of it.

It starts `loyalty serve` as `bench.faults` does (a subprocess on a free loopback port,
its own embedded PostgreSQL in a fresh directory under /tmp, rate limits off, no demo
program), creates a program in USD (`loyalty create-program --currency USD`), a shop, and
publishes earning rules (1 point per dollar, effective now: rules cannot be published in
the past). It enrols the 23,570 customers (`POST /v1/customers`, `--enrol-concurrency`
at a time), then loads every purchase as an order of one line through
`POST /v1/bulk/awards`, 1000 orders a request, `--concurrency` requests at a time.

Dates: the rules are in force only from their publication, so the purchases cannot keep
their 1997-1998 dates. They keep their order instead: sorted by (date, position in the
file), purchase r of N is placed at `effective_from + (r + 1) / N * span`, where span is
the time from the rules' publication to the start of the load (the enrolment takes most
of it); so every order is placed after the rules came into force and before the load
starts, in CDNOW's order. The line is `quantity` CDs at `ceil(cents / quantity)` with the
remainder as the line's discount, so the line's net is the purchase's amount to the cent.

Checks: every item answered 201; 69,659 orders stored; every order with points has its
award entry; postings sum to zero per unit; customer balances equal their postings; the
trial balance (`GET /v1/finance/trial-balance`) balanced. Prints orders/s of the load.
Every wait is bounded (`--timeout`); the app, the embedded PostgreSQL and the temporary
directories are removed at the end (`--keep` keeps the app's).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.faults import (
    App,
    Postgres,
    Program,
    Report,
    _call,
    _some,
    check_ledger,
    enrol,
    open_program,
    run_reported,
    served,
)

WHEEL = "lifetimes==0.11.3"
MEMBER = "lifetimes/datasets/CDNOW_master.txt"
BATCH = 1000


@dataclass(frozen=True)
class Purchase:
    customer: str  # CDNOW's customer id, "00001"
    day: str  # YYYYMMDD
    quantity: int
    cents: int
    position: int  # line in the file


def fetch_cdnow(directory: Path) -> list[Purchase]:
    """`pip download` the lifetimes wheel into `directory`; the purchases of its CDNOW file."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--quiet", "-d", str(directory)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    wheel = next(directory.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(MEMBER).decode()
    purchases = []
    for position, line in enumerate(text.splitlines()[1:]):  # a header row first
        customer, day, quantity, dollars = line.split()
        purchases.append(Purchase(customer, day, int(quantity), round(float(dollars) * 100), position))
    return purchases


def order_line(purchase: Purchase) -> dict[str, Any]:
    """`quantity` CDs; the unit price rounded up and the rest as the line's discount."""
    unit_price = math.ceil(purchase.cents / purchase.quantity)
    line: dict[str, Any] = {"sku": "cd", "category": "music", "unit_price": unit_price, "quantity": purchase.quantity}
    if discount := unit_price * purchase.quantity - purchase.cents:
        line["discount"] = discount
    return line


def placements(purchases: list[Purchase], start: datetime, end: datetime) -> dict[int, datetime]:
    """Each purchase's placed_at in (start, end], in CDNOW's order (date, then file position)."""
    ordered = sorted(purchases, key=lambda p: (p.day, p.position))
    span = end - start
    return {p.position: start + span * ((rank + 1) / len(ordered)) for rank, p in enumerate(ordered)}


@dataclass
class Outcome:
    statuses: Counter[int]
    problems: Counter[str]
    latencies: list[float]
    took: float


async def load(
    client: httpx.AsyncClient, app: App, key: str, batches: list[list[dict[str, Any]]], concurrency: int
) -> Outcome:
    """POST the batches, `concurrency` at a time; each item's status."""
    outcome = Outcome(Counter(), Counter(), [], 0.0)
    pending = iter(batches)

    async def worker() -> None:
        for items in pending:
            began = time.monotonic()
            answer = await _call(client, "POST", f"{app.base_url}/v1/bulk/awards", key, json={"items": items})
            outcome.latencies.append(time.monotonic() - began)
            for result in answer["results"]:
                outcome.statuses[result["status"]] += 1
                if result.get("problem"):
                    outcome.problems[f"{result['status']} {result['problem'].get('detail', '')[:80]}"] += 1

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    outcome.took = time.monotonic() - began
    return outcome


async def check_import(
    client: httpx.AsyncClient, app: App, postgres: Postgres, program: Program, expected: int, report: Report
) -> None:
    """The orders and their entries in SQL; the books (`check_ledger`)."""
    connection = await asyncpg.connect(postgres.dsn("loyalty"))
    try:
        pid = program.program_id
        orders = await connection.fetchval("SELECT count(*) FROM orders WHERE program_id = $1", pid)
        with_points = await connection.fetchval("SELECT count(*) FROM orders WHERE program_id = $1 AND points > 0", pid)
        linked = await connection.fetchval(
            "SELECT count(*) FROM orders o JOIN entries e ON e.program_id = o.program_id AND e.id = o.award_entry_id"
            " WHERE o.program_id = $1 AND e.kind = 'order.award'",
            pid,
        )
        points = await connection.fetchval("SELECT coalesce(sum(points), 0) FROM orders WHERE program_id = $1", pid)
    finally:
        await connection.close()
    report.fact(f"{orders} orders, {with_points} with points, {points:,} points awarded in all")
    report.check(f"orders stored = {expected}", orders == expected, f"{orders} found")
    report.check("each order with points has its order.award entry", linked == with_points, f"{linked} linked")
    await check_ledger(postgres, client, app, program, report)


async def run(args: argparse.Namespace) -> Report:
    report = Report("bulk-cdnow")
    download = Path(tempfile.mkdtemp(prefix="loyalty-cdnow-wheel-", dir="/tmp"))
    try:
        began = time.monotonic()
        purchases = await asyncio.to_thread(fetch_cdnow, download)
        if args.limit:
            purchases = purchases[: args.limit]
        customers = sorted({p.customer for p in purchases})
        report.fact(
            f"CDNOW: {len(purchases):,} purchases of {len(customers):,} customers"
            f" ({min(p.day for p in purchases)} to {max(p.day for p in purchases)}),"
            f" fetched in {time.monotonic() - began:.1f} s"
        )
        async with served("cdnow", {}, args.keep, connections=64, request_timeout_s=args.timeout) as (
            _,
            app,
            postgres,
            client,
        ):
            program, rules = await open_program(
                client,
                app,
                "CDNOW import",
                shop="CDNOW",
                till="crm",
                rules={"currency": "USD", "points_per_unit": 1, "unit_minor": 100},
                rules_key="cdnow-rules",
                currency="USD",
            )
            effective_from = datetime.fromisoformat(rules["rules"]["effective_from"])

            began = time.monotonic()
            people = ((f"cdnow-{cdnow_id}", f"CDNOW {cdnow_id}") for cdnow_id in customers)
            enrolled = await asyncio.wait_for(
                enrol(client, app.base_url, program.checkout, people, args.enrol_concurrency), args.timeout
            )
            enrol_took = time.monotonic() - began
            report.fact(
                f"enrolled {len(enrolled):,} customers in {enrol_took:.1f} s"
                f" ({len(enrolled) / enrol_took:.0f}/s, {args.enrol_concurrency} at a time)"
            )

            # placed_at: after the rules' effective_from, before now, in CDNOW's order
            await asyncio.sleep(1.0)
            now = max(datetime.now(UTC), effective_from + timedelta(seconds=1))  # same machine, same clock
            placed = placements(purchases, effective_from, effective_from + (now - effective_from) * 0.99)
            items = [
                {
                    "type": "order",
                    "shop_id": program.shop_id,
                    "order_id": f"cdnow-{p.position + 1:05d}",
                    "customer_id": enrolled[f"cdnow-{p.customer}"],
                    "currency": "USD",
                    "placed_at": placed[p.position].isoformat(),
                    "lines": [order_line(p)],
                }
                for p in sorted(purchases, key=lambda p: (p.day, p.position))
            ]
            batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
            outcome = await asyncio.wait_for(load(client, app, program.admin, batches, args.concurrency), args.timeout)
            rate = len(items) / outcome.took
            latencies = sorted(outcome.latencies)
            report.fact(
                f"loaded {len(items):,} orders in {len(batches)} requests of up to {BATCH},"
                f" {args.concurrency} at a time: {outcome.took:.1f} s, **{rate:,.0f} orders/s**;"
                f" per request p50 {latencies[len(latencies) // 2]:.2f} s, max {latencies[-1]:.2f} s"
            )
            report.check(
                "every item answered 201",
                outcome.statuses == Counter({201: len(items)}),
                f"{dict(outcome.statuses)} {_some(outcome.problems.most_common(3))}",
            )
            await check_import(client, app, postgres, program, len(items), report)
            report.fact(f"total {time.monotonic() - began:.1f} s from the enrolment on")
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return report


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bulk_cdnow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=4, help="bulk requests at a time (default 4)")
    parser.add_argument("--enrol-concurrency", type=int, default=16, help="enrolments at a time (default 16)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N purchases (a quick try)")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the enrolment and on the load (s)")
    parser.add_argument("--keep", action="store_true", help="keep the app's temporary directory (logs, data)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_reported("bulk-cdnow", run(_parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
