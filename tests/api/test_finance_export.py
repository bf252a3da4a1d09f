"""The journal export over HTTP: the period is half-open, and CSV and NDJSON carry metadata
with commas, quotes, newlines and non-ASCII text intact."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import json
import urllib.parse
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar

from service.domain.clock import ManualClock
from tests.api.support import enrol_customer
from tests.conftest import ProgramFixture

AWKWARD = 'a, "quoted"\nnew line; café ☕ 😀 \u2028 end'


async def test_journal_export_escapes_metadata_and_keeps_the_period_half_open(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    ann = await enrol_customer(client, program, "ann")
    admin = program.auth("admin")
    grant = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 10, "reason": AWKWARD},
        headers={**admin, "Idempotency-Key": "g-1"},
    )
    assert grant.status_code == 201, grant.text
    clock.advance(timedelta(seconds=5))
    second = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 5, "reason": "plain"},
        headers={**admin, "Idempotency-Key": "g-2"},
    )
    assert second.status_code == 201, second.text
    finance = program.auth("finance")
    first_at, second_at = grant.json()["posted_at"], second.json()["posted_at"]

    period = {"from": first_at, "to": second_at}  # the second entry is at `to`: excluded
    ndjson = await client.get("/v1/finance/journal", params=period, headers=finance)
    records = [json.loads(line) for line in ndjson.content.decode("utf-8").split("\n") if line]
    assert {r["entry_id"] for r in records} == {int(grant.json()["id"])}
    assert [r["metadata"].get("reason") for r in records] == [AWKWARD, AWKWARD]

    exported = await client.get("/v1/finance/journal", params={**period, "format": "csv"}, headers=finance)
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8"), newline="")))
    assert [json.loads(row["metadata"])["reason"] for row in rows] == [AWKWARD, AWKWARD]
    assert [int(row["entry_id"]) for row in rows] == [int(grant.json()["id"])] * 2

    both = {"from": first_at, "to": (clock.now() + timedelta(seconds=1)).isoformat()}
    everything = await client.get("/v1/finance/journal", params={**both, "format": "csv"}, headers=finance)
    assert len(list(csv.DictReader(io.StringIO(everything.content.decode("utf-8"), newline="")))) == 4


async def test_the_csv_keeps_negative_amounts_as_numbers_and_metadata_as_json(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    """Formula-like text is prefixed with `'` (see tests/unit/test_csv_cells.py), never a number:
    a deduction's negative amount is still a number a spreadsheet sums."""
    ann = await enrol_customer(client, program, "ann")
    admin = program.auth("admin")
    for key, amount in (("g-1", 10), ("g-2", -4)):
        posted = await client.post(
            "/v1/ledger/adjustments",
            json={"customer_id": ann, "amount": amount, "reason": '=HYPERLINK("http://evil.example","x")'},
            headers={**admin, "Idempotency-Key": key},
        )
        assert posted.status_code == 201, posted.text
    period = {
        "from": (clock.now() - timedelta(minutes=1)).isoformat(),
        "to": (clock.now() + timedelta(minutes=1)).isoformat(),
    }
    exported = await client.get(
        "/v1/finance/journal", params={**period, "format": "csv"}, headers=program.auth("finance")
    )
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8"), newline="")))
    assert sorted(int(row["amount"]) for row in rows) == [-10, -4, 4, 10]
    assert {json.loads(row["metadata"])["reason"] for row in rows} == {'=HYPERLINK("http://evil.example","x")'}
    assert all(not value.startswith(("=", "+", "@")) for row in rows for value in row.values())


async def test_journal_csv_gives_instants_as_every_answer_does_in_utc_with_z(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    """docs/api.md, Conventions: timestamps are RFC 3339 in UTC (`...Z`); the CSV export
    writes each posting's `posted_at` as the NDJSON export of the same period does."""
    ann = await enrol_customer(client, program, "ann")
    grant = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 10, "reason": "a"},
        headers={**program.auth("admin"), "Idempotency-Key": "g-1"},
    )
    assert grant.status_code == 201, grant.text
    posted_at = grant.json()["posted_at"]
    assert posted_at.endswith("Z")
    period = {"from": posted_at, "to": (clock.now() + timedelta(seconds=1)).isoformat()}
    finance = program.auth("finance")
    ndjson = await client.get("/v1/finance/journal", params=period, headers=finance)
    assert [json.loads(line)["posted_at"] for line in ndjson.text.splitlines()] == [posted_at] * 2
    exported = await client.get("/v1/finance/journal", params={**period, "format": "csv"}, headers=finance)
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8"), newline="")))
    assert [row["posted_at"] for row in rows] == [posted_at] * 2


async def open_exports(owner: asyncpg.Connection) -> int:
    """Sessions of this database still inside a journal export's transaction."""
    found: int = await owner.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%' AND query LIKE 'SELECT e.id, e.posted_at, e.kind%'"
    )
    return found


@pytest.mark.parametrize("format", ["ndjson", "csv"])
async def test_a_client_that_leaves_mid_export_gives_the_connection_back_at_once(
    client: httpx.AsyncClient,
    app: Litestar,
    program: ProgramFixture,
    clock: ManualClock,
    owner_connection: asyncpg.Connection,
    format: str,
) -> None:
    """An export holds a pooled connection inside a repeatable-read transaction while it
    streams. A client that disconnects mid-stream must end that transaction and give the
    connection back when the response ends, not whenever the garbage collector next finds
    the abandoned generators (their snapshot holds back vacuum, and a few such clients
    empty the pool)."""
    ann = await enrol_customer(client, program, "ann")
    start = clock.now()
    for n in range(120):
        grant = await client.post(
            "/v1/ledger/adjustments",
            json={"customer_id": ann, "amount": 10, "reason": "x" * 500},
            headers={**program.auth("admin"), "Idempotency-Key": f"g-{n}"},
        )
        assert grant.status_code == 201, grant.text
    period = {"from": (start - timedelta(days=1)).isoformat(), "to": (clock.now() + timedelta(days=1)).isoformat()}
    query = urllib.parse.urlencode({**period, "format": format}).encode()
    bodies: list[dict[str, Any]] = []
    first_body = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await first_body.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message)
            first_body.set()
            await asyncio.sleep(0.01)  # a slow client: the disconnect arrives while this is sent

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/finance/journal",
        "raw_path": b"/v1/finance/journal",
        "query_string": query,
        "headers": [(b"authorization", program.auth("finance")["Authorization"].encode()), (b"host", b"test")],
        "server": ("test", 80),
        "client": ("client", 1),
        "root_path": "",
        "state": {},
    }
    gc.disable()  # only the response itself may end the export, not a collection meanwhile
    try:
        await app(scope, receive, send)  # type: ignore[arg-type]
        assert bodies and bodies[-1]["more_body"]  # it stopped part way
        assert await open_exports(owner_connection) == 0
    finally:
        gc.enable()
        gc.collect()
