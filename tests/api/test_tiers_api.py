"""Tiers over HTTP: the ladder, progress for shops and the app, grants, bad input."""

from __future__ import annotations

import httpx

from tests.api.orders_support import order_body
from tests.api.support import assert_names_field, assert_problem
from tests.conftest import ProgramFixture

MEMBER = {"code": "member", "name": "Member", "threshold": 0}
INSIDER = {
    "code": "insider",
    "name": "Insider",
    "threshold": 1000,
    "earn_multiplier_bp": 20000,
    "perks": ["early access"],
}
LADDER = {"basis": "spend", "window": "calendar_year", "levels": [MEMBER, INSIDER]}


async def test_ladder_progress_grants_and_the_app(client: httpx.AsyncClient, program: ProgramFixture, ann: str) -> None:
    admin, till = program.auth("admin"), program.auth("checkout")
    missing = await client.get(f"/v1/customers/{ann}/tier", headers=till)
    assert_problem(missing, 404)
    put = await client.put("/v1/tiers", json=LADDER, headers={**admin, "Idempotency-Key": "ladder-1"})
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 1
    assert (await client.get("/v1/tiers", headers=till)).json() == put.json()

    order = await client.post(f"/v1/shops/{program.shop_id}/orders", json=order_body(ann), headers=till)
    assert order.status_code == 201, order.text  # 1100 minor units of spend: insider
    progress = (await client.get(f"/v1/customers/{ann}/tier", headers=till)).json()
    assert (progress["tier"]["code"], progress["measure"], progress["next_tier"]) == ("insider", 1100, None)
    assert progress["tier"]["perks"] == ["early access"]

    token = await client.post(f"/v1/customers/{ann}/tokens", headers=till)
    app = {"Authorization": f"Bearer {token.json()['token']}"}
    assert (await client.get("/v1/me/tier", headers=app)).json() == progress
    history = (await client.get("/v1/me/tier/history", headers=app)).json()
    assert [(h["kind"], h["from_code"], h["to_code"]) for h in history] == [("upgrade", "member", "insider")]

    grant = await client.post(
        f"/v1/customers/{ann}/tier/grants",
        json={"tier_code": "insider", "days": 30, "reason": "goodwill"},
        headers={**admin, "Idempotency-Key": "grant-1"},
    )
    assert grant.status_code == 201, grant.text
    denied = await client.post(
        f"/v1/customers/{ann}/tier/grants",
        json={"tier_code": "insider", "days": 30, "reason": "goodwill"},
        headers={**till, "Idempotency-Key": "grant-2"},
    )
    assert_problem(denied, 403)


async def test_a_bad_ladder_names_the_field(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    admin = {**program.auth("admin"), "Idempotency-Key": "bad"}
    falling = {**LADDER, "levels": [MEMBER, {**INSIDER, "threshold": 0}]}
    assert_names_field(
        assert_problem(await client.put("/v1/tiers", json=falling, headers=admin), 422), "levels[1].threshold"
    )
    bad_code = {**LADDER, "levels": [{"code": "Has Space", "name": "x", "threshold": 0}]}
    response = await client.put("/v1/tiers", json=bad_code, headers={**admin, "Idempotency-Key": "bad-2"})
    assert_names_field(assert_problem(response, 422), "levels[0].code")
    unknown = await client.put(
        "/v1/tiers", json={**LADDER, "window": "weekly"}, headers={**admin, "Idempotency-Key": "b3"}
    )
    assert_names_field(assert_problem(unknown, 422), "window")


async def test_a_level_has_at_most_20_perks(client: httpx.AsyncClient, program: ProgramFixture) -> None:
    """The ladder is read for every order: a level's perks are bounded (docs/api.md), 422
    naming `levels[i].perks` over it, and nothing is set."""
    admin = program.auth("admin")
    perks = [f"perk {n}" for n in range(21)]
    over = {**LADDER, "levels": [MEMBER, {**INSIDER, "perks": perks}]}
    refused = await client.put("/v1/tiers", json=over, headers={**admin, "Idempotency-Key": "over"})
    assert_names_field(assert_problem(refused, 422, "invalid-input"), "levels[1].perks")
    assert_problem(await client.get("/v1/tiers", headers=admin), 404)
    at_limit = {**LADDER, "levels": [MEMBER, {**INSIDER, "perks": perks[:20]}]}
    accepted = await client.put("/v1/tiers", json=at_limit, headers={**admin, "Idempotency-Key": "at"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["config"]["levels"][1]["perks"] == perks[:20]
