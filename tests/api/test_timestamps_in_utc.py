"""docs/api.md, Conventions: timestamps in answers are RFC 3339 in UTC (`...Z`), also those a
request gave with another offset (an `as_of`, a period, a rules version's `effective_from`)."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

import httpx

from service.domain.clock import ManualClock
from service.usecases.dispatch import publish_events
from tests.api.orders_support import RULES, order_body
from tests.api.test_tiers_api import LADDER
from tests.conftest import ProgramFixture

AS_OF = "2026-05-04T11:00:00+02:00"  # 09:00 UTC


async def test_instants_a_request_gave_are_answered_in_utc(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, clock: ManualClock
) -> None:
    finance = program.auth("finance")
    for path in ("/v1/finance/trial-balance", "/v1/finance/liability"):
        answer = await client.get(path, params={"as_of": AS_OF}, headers=finance)
        assert answer.status_code == 200, answer.text
        assert answer.json()["as_of"] == "2026-05-04T09:00:00Z", path
    period = {"from": "2026-05-01T00:00:00+02:00", "to": AS_OF}
    activity = (await client.get("/v1/finance/activity", params=period, headers=finance)).json()
    assert (activity["start"], activity["end"]) == ("2026-04-30T22:00:00Z", "2026-05-04T09:00:00Z")
    accounts = (await client.get("/v1/finance/accounts", params={"customer_id": ann}, headers=finance)).json()
    account_id = accounts["items"][0]["account_id"]
    balance = await client.get(f"/v1/finance/accounts/{account_id}/balance", params={"as_of": AS_OF}, headers=finance)
    assert balance.json()["as_of"] == "2026-05-04T09:00:00Z"
    statement = await client.get(f"/v1/finance/accounts/{account_id}/statement", params=period, headers=finance)
    assert statement.json()["account"]["as_of"] == "2026-05-04T08:59:59.999999Z"  # just before `to`

    starts = (clock.now() + timedelta(days=1)).replace(microsecond=0)
    in_utc = starts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    published = await client.post(
        "/v1/earning/rules",
        json=RULES | {"effective_from": starts.astimezone(timezone(timedelta(hours=2))).isoformat()},
        headers={**program.auth("admin"), "Idempotency-Key": "rules-2"},
    )
    assert published.status_code == 201, published.text
    assert published.json()["rules"]["effective_from"] == in_utc
    versions = (await client.get("/v1/earning/rules", headers=finance)).json()
    assert versions[0]["rules"]["effective_from"] == in_utc


async def test_local_midnights_are_answered_in_utc(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, clock: ManualClock
) -> None:
    """An instant the service computes as a local midnight of the program's time zone (when
    points expire, until when a tier is kept) is answered in UTC like any other."""
    admin, till = program.auth("admin"), program.auth("checkout")
    policy = await client.put("/v1/ledger/expiry-policy", json={"policy": "days", "period": 30}, headers=admin)
    assert policy.status_code == 200, policy.text
    ladder = await client.put("/v1/tiers", json=LADDER, headers={**admin, "Idempotency-Key": "ladder"})
    assert ladder.status_code == 200, ladder.text
    placed = await client.post(f"/v1/shops/{program.shop_id}/orders", json=order_body(ann), headers=till)
    assert placed.status_code == 201, placed.text
    grant = {"customer_id": ann, "amount": 50, "reason": "welcome"}
    granted = await client.post("/v1/ledger/adjustments", json=grant, headers={**admin, "Idempotency-Key": "g"})
    assert granted.status_code == 201, granted.text

    await publish_events(program.id, clock)
    feed = await client.get("/v1/events", params={"types": "points.earned"}, headers=admin)
    # the order's points spendable from 19 May (after the 14-day return window), the grant's
    # from 4 May: valid for 30 local days from then, through 18 June and 3 June in Amsterdam
    expiries = [event["data"]["expires_at"] for event in feed.json()["items"]]
    assert expiries == ["2026-06-18T22:00:00Z", "2026-06-03T22:00:00Z"]
    progress = (await client.get(f"/v1/customers/{ann}/tier", headers=till)).json()
    # reviewed a year after the upgrade's local day, kept through 30 days' grace after it
    assert progress["kept_until"] == "2027-06-02T22:00:00Z"
