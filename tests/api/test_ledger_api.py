"""Ledger writes and the finance audit view over HTTP."""

from __future__ import annotations

from datetime import timedelta

import httpx

from service.domain.clock import ManualClock
from service.usecases import ledger_jobs
from tests.api.support import assert_problem, enrol_customer
from tests.conftest import ProgramFixture


async def test_adjust_hold_capture_and_audit(
    client: httpx.AsyncClient, program: ProgramFixture, clock: ManualClock
) -> None:
    ann = await enrol_customer(client, program, "ann")
    start = clock.now() - timedelta(seconds=1)
    admin = program.auth("admin")
    grant = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 1000, "reason": "welcome"},
        headers={**admin, "Idempotency-Key": "grant-1"},
    )
    assert grant.status_code == 201, grant.text
    retry = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 1000, "reason": "welcome"},
        headers={**admin, "Idempotency-Key": "grant-1"},
    )
    assert retry.json() == grant.json()
    conflict = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 5, "reason": "welcome"},
        headers={**admin, "Idempotency-Key": "grant-1"},
    )
    assert conflict.status_code == 409
    assert conflict.json()["type"] == "/problems/idempotency-key-reused"
    clock.advance(timedelta(seconds=5))

    checkout = program.auth("checkout")
    hold = await client.post(
        "/v1/holds",
        json={"customer_id": ann, "amount": 400},
        headers={**checkout, "Idempotency-Key": "h-1"},
    )
    assert hold.status_code == 201, hold.text
    too_much = await client.post(
        "/v1/holds",
        json={"customer_id": ann, "amount": 601},
        headers={**checkout, "Idempotency-Key": "h-2"},
    )
    assert too_much.status_code == 409
    assert too_much.json()["available"] == 600
    capture = await client.post(
        f"/v1/holds/{hold.json()['id']}/capture",
        json={"amount": 250},
        headers={**checkout, "Idempotency-Key": "c-1"},
    )
    assert capture.status_code == 200, capture.text
    assert capture.json()["status"] == "captured"

    balance = await client.get(f"/v1/customers/{ann}/balance", headers=checkout)
    assert balance.json()["available"] == 750
    assert balance.json()["held"] == 0

    finance = program.auth("finance")
    denied = await client.post(
        "/v1/ledger/adjustments",
        json={"customer_id": ann, "amount": 1, "reason": "x"},
        headers={**finance, "Idempotency-Key": "f-1"},
    )
    assert denied.status_code == 403

    trial = (await client.get("/v1/finance/trial-balance", headers=finance)).json()
    assert all(total["balanced"] for total in trial["totals"])
    points = next(t for t in trial["totals"] if t["unit"] == "POINTS")
    assert points["debit"] == points["credit"] == 1000 + 400 + 400

    liability = (await client.get("/v1/finance/liability", headers=finance)).json()
    assert liability["points_outstanding"] == 750
    period = {"from": start.isoformat(), "to": (clock.now() + timedelta(seconds=1)).isoformat()}
    activity = (await client.get("/v1/finance/activity", params=period, headers=finance)).json()
    assert (activity["issued"], activity["redeemed"], activity["expired"]) == (1000, 250, 0)

    journal = await client.get("/v1/finance/journal", params=period, headers=finance)
    assert journal.status_code == 200
    lines = journal.text.strip().splitlines()
    assert len(lines) == 2 + 2 + 3  # grant, hold, capture (held -> redeemed + available)
    csv_export = await client.get("/v1/finance/journal", params={**period, "format": "csv"}, headers=finance)
    assert csv_export.text.splitlines()[0].startswith("entry_id,posted_at,kind")
    assert len(csv_export.text.strip().splitlines()) == 1 + 7

    accounts = (await client.get("/v1/finance/accounts", params={"customer_id": ann}, headers=finance)).json()
    available = next(a for a in accounts["items"] if a["kind"] == "available")
    statement = await client.get(
        f"/v1/finance/accounts/{available['account_id']}/statement", params=period, headers=finance
    )
    assert [line["balance_after"] for line in statement.json()["lines"]] == [1000, 600, 750]
    as_of = await client.get(
        f"/v1/finance/accounts/{available['account_id']}/balance",
        params={"as_of": grant.json()["posted_at"]},
        headers=finance,
    )
    assert as_of.json()["balance"] == 1000

    traced = (await client.get(f"/v1/finance/entries/{capture.json()['resolve_entry_id']}", headers=finance)).json()
    assert [(p["account"], p["amount"]) for p in traced["postings"]] == [
        (f"customer:{ann}:held", -400),
        ("system:redeemed", 250),
        (f"customer:{ann}:available", 150),
    ]
    assert sum(m["amount"] for m in traced["lots_consumed"]) == 400
    assert [m["amount"] for m in traced["lots_created"]] == [150]
    hold_entry = (await client.get(f"/v1/finance/entries/{hold.json()['authorize_entry_id']}", headers=finance)).json()
    assert hold_entry["lots_consumed"][0]["earned_by_entry_id"] == int(grant.json()["id"])

    await ledger_jobs.seal_chain(program.id)
    chain = (await client.get("/v1/finance/chain", headers=finance)).json()
    assert chain["valid"] and chain["sealed"] == 3 and chain["unsealed"] == 0
    head = chain["head"]
    assert head["seq"] == 3 and len(head["chain_hash"]) == 64 and chain["anchor"] is None
    anchored = await client.get(
        "/v1/finance/chain", params={"anchor_seq": 3, "anchor_hash": head["chain_hash"]}, headers=finance
    )
    assert anchored.json()["valid"]
    assert anchored.json()["anchor"] == {"seq": 3, "chain_hash": head["chain_hash"], "holds": True}
    other = "0" * 64
    wrong = (
        await client.get("/v1/finance/chain", params={"anchor_seq": 2, "anchor_hash": other}, headers=finance)
    ).json()
    assert not wrong["valid"] and wrong["anchor"]["holds"] is False and wrong["first_break"]["seq"] == 2
    anchors: list[tuple[dict[str, str | int], str]] = [
        ({"anchor_seq": 3}, "anchor_hash"),
        ({"anchor_hash": other}, "anchor_seq"),
        ({"anchor_seq": 3, "anchor_hash": "xyz"}, "anchor_hash"),
        ({"anchor_seq": 0, "anchor_hash": other}, "anchor_seq"),
    ]
    for params, field in anchors:
        refused = await client.get("/v1/finance/chain", params=params, headers=finance)
        assert refused.status_code == 422 and refused.json()["field"] == field, (params, refused.json())


async def test_a_reversal_short_of_points_names_the_entry_and_is_refused_again_on_retry(
    client: httpx.AsyncClient, program: ProgramFixture
) -> None:
    """A reversal's body has only a `reason`: the `insufficient-points` refusal of a grant whose
    points were spent names `entry_id` (what cannot be undone), not an `amount` the request
    does not have; a retry with its key is refused the same way, even once it would succeed."""
    customer = await enrol_customer(client, program)
    admin = program.auth("admin")
    adjust = "/v1/ledger/adjustments"
    grant = await client.post(
        adjust, json={"customer_id": customer, "amount": 100, "reason": "x"}, headers=admin | {"Idempotency-Key": "g"}
    )
    spent = await client.post(
        adjust, json={"customer_id": customer, "amount": -60, "reason": "x"}, headers=admin | {"Idempotency-Key": "d"}
    )
    assert (grant.status_code, spent.status_code) == (201, 201)
    path = f"/v1/ledger/entries/{grant.json()['id']}/reversal"
    body, headers = {"reason": "granted by mistake"}, admin | {"Idempotency-Key": "r"}
    refused = assert_problem(await client.post(path, json=body, headers=headers), 409, "insufficient-points")
    assert (refused["field"], refused["available"], refused["requested"]) == ("entry_id", 40, 100)
    topped_up = await client.post(
        adjust, json={"customer_id": customer, "amount": 60, "reason": "x"}, headers=admin | {"Idempotency-Key": "t"}
    )
    assert topped_up.status_code == 201
    assert (await client.post(path, json=body, headers=headers)).json() == refused
