"""Referrals over HTTP: settings, codes for shops and the app, redemption with its refusals
as problem types naming the rule, fingerprints, vanity and disabled codes, lists and stats."""

from __future__ import annotations

from datetime import timedelta

import httpx

from service.domain.clock import ManualClock
from service.usecases.jobs import run_program_jobs
from tests.api.orders_support import order_body
from tests.api.support import assert_problem, enrol_customer
from tests.conftest import ProgramFixture

SETTINGS = {
    "enabled": True,
    "min_order_minor": 1000,
    "referrer_reward": {"kind": "points", "amount": 300},
    "referee_reward": {"kind": "credit", "amount": 500},
    "share_url_template": "https://shop.example/r/{code}",
}


async def token(client: httpx.AsyncClient, program: ProgramFixture, customer_id: str) -> dict[str, str]:
    issued = await client.post(f"/v1/customers/{customer_id}/tokens", headers=program.auth("checkout"))
    assert issued.status_code == 201, issued.text
    return {"Authorization": f"Bearer {issued.json()['token']}"}


async def test_a_referral_through_the_api(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str, clock: ManualClock
) -> None:
    admin, till, finance = program.auth("admin"), program.auth("checkout"), program.auth("finance")
    defaults = await client.get("/v1/referrals/settings", headers=till)
    assert defaults.status_code == 200 and defaults.json()["enabled"] is False
    put = await client.put("/v1/referrals/settings", json=SETTINGS, headers={**admin, "Idempotency-Key": "ref-1"})
    assert put.status_code == 200, put.text
    assert (await client.get("/v1/referrals/settings", headers=finance)).json() == put.json()

    ann_app = await token(client, program, ann)
    code = (await client.get("/v1/me/referral-code", headers=ann_app)).json()
    assert code["share_url"] == f"https://shop.example/r/{code['code']}"
    assert (await client.get(f"/v1/customers/{ann}/referral-code", headers=till)).json() == code

    bob = await enrol_customer(client, program, "bob")
    bob_app = await token(client, program, bob)
    body = {"code": code["code"].lower(), "device_hash": "sha256:bob-phone"}
    first = await client.post("/v1/me/referral", json=body, headers=bob_app)
    assert first.status_code == 201, first.text
    assert (first.json()["status"], first.json()["referrer_id"]) == ("pending", ann)
    again = await client.post("/v1/me/referral", json=body, headers=bob_app)
    assert (again.status_code, again.json()) == (200, first.json())
    for app in (ann_app, bob_app):
        listed = (await client.get("/v1/me/referrals", headers=app)).json()
        assert [item["id"] for item in listed["items"]] == [first.json()["id"]] and listed["next_cursor"] is None

    # the qualifying order; with a return window of 0 days the rewards come at the next job run
    returns = {"window_days": 0, "policy": "within_balance"}
    assert (await client.put("/v1/program/returns", json=returns, headers=admin)).status_code == 200
    placed = await client.post(
        f"/v1/shops/{program.shop_id}/orders", json=order_body(bob, placed_at=clock.now().isoformat()), headers=till
    )
    assert placed.status_code == 201, placed.text
    clock.advance(timedelta(seconds=1))
    report = await run_program_jobs(program.id, clock)
    assert report.referrals_rewarded == 1
    [rewarded] = (await client.get(f"/v1/customers/{bob}/referrals", headers=till)).json()["items"]
    assert rewarded["status"] == "rewarded"
    assert sorted((r["role"], r["kind"], r["amount"]) for r in rewarded["rewards"]) == [
        ("referee", "credit", 500),
        ("referrer", "points", 300),
    ]
    balance = (await client.get(f"/v1/customers/{ann}/balance", headers=till)).json()
    assert balance["available"] == 300
    history = (await client.get(f"/v1/customers/{ann}/history", headers=till)).json()["items"]
    assert history[0]["description"] == "Received 300 points for referring a friend"
    bob_history = (await client.get("/v1/me/history", headers=bob_app)).json()["items"]
    assert "Received 5.00 EUR of store credit for joining through a friend's referral" in [
        item["description"] for item in bob_history
    ]

    stats = await client.get("/v1/referrals/stats", headers=finance)
    assert stats.status_code == 200, stats.text
    assert (stats.json()["redeemed"], stats.json()["rewarded"], stats.json()["rewarded_rate"]) == (1, 1, 1.0)
    assert stats.json()["rewards_paid"]["credit"] == 500
    mine = (await client.get(f"/v1/customers/{ann}/referrals/stats", headers=admin)).json()
    assert (mine["customer_id"], mine["codes_issued"], mine["rewards_paid"]["points"]) == (ann, 1, 300)
    assert_problem(await client.get("/v1/referrals/stats", headers=till), 403)


async def test_refusals_name_their_rule_and_field(client: httpx.AsyncClient, program: ProgramFixture, ann: str) -> None:
    admin, till = program.auth("admin"), program.auth("checkout")
    await client.put("/v1/referrals/settings", json=SETTINGS, headers={**admin, "Idempotency-Key": "ref-1"})
    code = (await client.get(f"/v1/customers/{ann}/referral-code", headers=till)).json()["code"]
    hashes = {"device_hashes": ["phone-1"], "payment_hashes": ["card-1"]}
    recorded = await client.post(f"/v1/customers/{ann}/fingerprints", json=hashes, headers=till)
    assert recorded.status_code == 200 and recorded.json()["device_hashes"] == ["phone-1"]
    bob = await enrol_customer(client, program, "bob")
    path = f"/v1/customers/{bob}/referral"

    shared = await client.post(path, json={"code": code, "payment_hash": "card-1"}, headers=till)
    body = assert_problem(shared, 409, "referral-shared-payment")
    assert (body["field"], body["rule"]) == ("payment_hash", "shared_payment")
    self_referral = await client.post(f"/v1/customers/{ann}/referral", json={"code": code}, headers=till)
    assert assert_problem(self_referral, 409, "referral-self-referral")["rule"] == "self_referral"
    unknown = assert_problem(await client.post(path, json={"code": "ZZZZ9999"}, headers=till), 404, "not-found")
    assert unknown["field"] == "code"
    malformed = assert_problem(await client.post(path, json={"code": "no!"}, headers=till), 422)
    assert malformed["field"] == "code"

    disabled = await client.post(
        f"/v1/referral-codes/{code.lower()}/disable",
        json={"reason": "fraud"},
        headers={**admin, "Idempotency-Key": "d"},
    )
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    refused = assert_problem(await client.post(path, json={"code": code}, headers=till), 409, "referral-code-disabled")
    assert refused["reason"] == "fraud"
    enabled = await client.post(f"/v1/referral-codes/{code}/enable", headers={**admin, "Idempotency-Key": "e"})
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    assert (await client.post(path, json={"code": code}, headers=till)).status_code == 201

    # vanity codes: upper-cased, 409 when taken
    vanity = await client.put(
        f"/v1/customers/{bob}/referral-code", json={"code": "BobRocks"}, headers={**admin, "Idempotency-Key": "v1"}
    )
    assert vanity.status_code == 200 and vanity.json()["code"] == "BOBROCKS"
    taken = await client.put(
        f"/v1/customers/{ann}/referral-code", json={"code": "bobrocks"}, headers={**admin, "Idempotency-Key": "v2"}
    )
    assert assert_problem(taken, 409, "conflict")["field"] == "code"
    catalogue = (await client.get("/problems")).json()
    types = {item["type"] for item in catalogue}
    for rule in ("self-referral", "already-referred", "shared-email", "shared-device", "cap-reached"):
        assert f"/problems/referral-{rule}" in types


async def test_a_redemption_retried_after_its_code_was_retired_answers_the_same_referral(
    client: httpx.AsyncClient, program: ProgramFixture, ann: str
) -> None:
    """docs/api.md: redemption is idempotent by customer and code (the same again answers `200`
    with the same referral). A vanity code retiring the referrer's code in between must not
    turn the referee's retry into a 404."""
    admin, till = program.auth("admin"), program.auth("checkout")
    await client.put("/v1/referrals/settings", json=SETTINGS, headers={**admin, "Idempotency-Key": "ref-1"})
    code = (await client.get(f"/v1/customers/{ann}/referral-code", headers=till)).json()["code"]
    bob = await enrol_customer(client, program, "bob")
    path = f"/v1/customers/{bob}/referral"
    first = await client.post(path, json={"code": code}, headers=till)
    assert first.status_code == 201, first.text

    vanity = await client.put(
        f"/v1/customers/{ann}/referral-code", json={"code": "ANNSHOP"}, headers={**admin, "Idempotency-Key": "v"}
    )
    assert vanity.status_code == 200, vanity.text
    again = await client.post(path, json={"code": code}, headers=till)
    assert (again.status_code, again.json()) == (200, first.json())
    # the retired code is still refused to anyone else
    carl = await enrol_customer(client, program, "carl")
    refused = await client.post(f"/v1/customers/{carl}/referral", json={"code": code}, headers=till)
    assert assert_problem(refused, 404, "not-found")["field"] == "code"
