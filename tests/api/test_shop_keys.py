"""Checkout keys bound to one shop: made only for a shop of the program, acting for that
shop only (403 naming `shop_id` elsewhere, with nothing changed), and for everything that
is not shop-specific as before; keys without a shop act for every shop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.orders_support import order_body
from tests.api.support import assert_names_field, assert_problem, snapshot
from tests.conftest import ProgramFixture

REFUND = {"refund_id": "R-1", "lines": [{"line": 0, "quantity": 1}]}


@dataclass
class Shops:
    """The program's shop, a second shop, and a checkout key bound to the first."""

    own: str
    other: str
    key_id: str
    till: dict[str, str]


@pytest.fixture
async def shops(client: httpx.AsyncClient, program: ProgramFixture) -> Shops:
    admin = program.auth("admin")
    other = await client.post("/v1/shops", json={"name": "Web shop"}, headers={**admin, "Idempotency-Key": "web"})
    assert other.status_code == 201, other.text
    till = {"name": "till 1", "scope": "checkout", "shop_id": program.shop_id}
    made = await client.post("/v1/api-keys", json=till, headers={**admin, "Idempotency-Key": "till-1"})
    assert made.status_code == 201, made.text
    return Shops(
        own=program.shop_id,
        other=other.json()["id"],
        key_id=made.json()["id"],
        till={"Authorization": f"Bearer {made.json()['key']}"},
    )


async def _state(connection: asyncpg.Connection, program_id: str) -> dict[str, Any]:
    """What a refused request must leave as it was: orders, refunds, the journal and the
    idempotency records (rows, not counts), with the program's customers, shops and keys."""
    tables: dict[str, Any] = dict(await snapshot(connection, program_id))
    for table in ("orders", "refunds", "entries", "postings", "idempotency_keys"):
        rows = await connection.fetch(f"SELECT * FROM {table} t WHERE program_id = $1 ORDER BY t::text", program_id)
        tables[table] = [dict(row) for row in rows]
    return tables


def _refused_for_the_shop(response: httpx.Response, own_shop: str) -> None:
    body = assert_problem(response, 403, "forbidden")
    assert body["field"] == "shop_id", body
    assert body["key_shop_id"] == own_shop


# --- making keys -------------------------------------------------------------------------


async def test_a_shop_bound_key_is_listed_with_its_shop_and_others_with_none(
    client: httpx.AsyncClient, program: ProgramFixture, shops: Shops
) -> None:
    listed = await client.get("/v1/api-keys", headers=program.auth("admin"))
    assert listed.status_code == 200, listed.text
    by_name = {key["name"]: key for key in listed.json()}
    assert by_name["till 1"]["shop_id"] == shops.own
    assert by_name["till 1"]["id"] == shops.key_id
    assert {by_name[scope]["shop_id"] for scope in ("checkout", "admin", "finance")} == {None}
    admin = {**program.auth("admin"), "Idempotency-Key": "wide"}
    made = await client.post("/v1/api-keys", json={"name": "wide", "scope": "checkout"}, headers=admin)
    assert made.status_code == 201 and made.json()["shop_id"] is None
    assert (await client.get("/v1/program", headers=shops.till)).status_code == 200


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("admin key", {"name": "x", "scope": "admin", "shop_id": "{own}"}),
        ("finance key", {"name": "x", "scope": "finance", "shop_id": "{own}"}),
        ("unknown shop", {"name": "x", "scope": "checkout", "shop_id": "shp_doesnotexist"}),
        ("another program's shop", {"name": "x", "scope": "checkout", "shop_id": "{theirs}"}),
        ("empty shop id", {"name": "x", "scope": "checkout", "shop_id": ""}),
        ("NUL in shop id", {"name": "x", "scope": "checkout", "shop_id": "shp_\u0000"}),
    ],
)
async def test_a_key_is_bound_only_to_a_shop_of_the_program_and_only_if_checkout(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    other_program: ProgramFixture,
    owner_connection: asyncpg.Connection,
    case: str,
    body: dict[str, str],
) -> None:
    body = {**body, "shop_id": body["shop_id"].format(own=program.shop_id, theirs=other_program.shop_id)}
    before = await snapshot(owner_connection, program.id)
    admin = {**program.auth("admin"), "Idempotency-Key": "bound"}
    response = await client.post("/v1/api-keys", json=body, headers=admin)
    assert_names_field(assert_problem(response, 422, "invalid-input"), "shop_id")
    assert await snapshot(owner_connection, program.id) == before, case


# --- orders ------------------------------------------------------------------------------


async def test_a_shop_bound_key_places_reads_and_refunds_orders_of_its_shop(
    client: httpx.AsyncClient, shops: Shops, ann: str
) -> None:
    path = f"/v1/shops/{shops.own}/orders"
    placed = await client.post(path, json=order_body(ann), headers=shops.till)
    assert placed.status_code == 201, placed.text
    assert (placed.json()["shop_id"], placed.json()["points"]) == (shops.own, 18)
    assert (await client.get(f"{path}/W-1", headers=shops.till)).json() == placed.json()
    refund = await client.post(f"{path}/W-1/refunds", json=REFUND, headers=shops.till)
    assert refund.status_code == 201, refund.text
    assert (await client.post(path, json=order_body(ann), headers=shops.till)).json() == placed.json()


async def test_a_shop_bound_key_is_refused_another_shops_orders_and_changes_nothing(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    shops: Shops,
    ann: str,
    owner_connection: asyncpg.Connection,
) -> None:
    theirs = f"/v1/shops/{shops.other}/orders"
    before = await _state(owner_connection, program.id)
    for _ in range(2):  # a retry is refused the same way
        _refused_for_the_shop(await client.post(theirs, json=order_body(ann), headers=shops.till), shops.own)
        _refused_for_the_shop(await client.get(f"{theirs}/W-1", headers=shops.till), shops.own)
        _refused_for_the_shop(await client.post(f"{theirs}/W-1/refunds", json=REFUND, headers=shops.till), shops.own)
        # refused before the body is read, as a wrong scope is
        _refused_for_the_shop(await client.post(theirs, json={}, headers=shops.till), shops.own)
        # a shop that does not exist is not the key's shop either
        _refused_for_the_shop(await client.get("/v1/shops/shp_nowhere/orders/W-1", headers=shops.till), shops.own)
    assert await _state(owner_connection, program.id) == before

    # nothing was remembered under the order's key: the shop's own credential places it
    wide = program.auth("checkout")
    placed = await client.post(theirs, json=order_body(ann), headers=wide)
    assert placed.status_code == 201, placed.text
    after_placing = await _state(owner_connection, program.id)

    # the order exists now; the bound key still may not read, replay or refund it
    _refused_for_the_shop(await client.post(theirs, json=order_body(ann), headers=shops.till), shops.own)
    _refused_for_the_shop(await client.get(f"{theirs}/W-1", headers=shops.till), shops.own)
    _refused_for_the_shop(await client.post(f"{theirs}/W-1/refunds", json=REFUND, headers=shops.till), shops.own)
    assert await _state(owner_connection, program.id) == after_placing
    refunded = await client.post(f"{theirs}/W-1/refunds", json=REFUND, headers=wide)
    assert refunded.status_code == 201, refunded.text


async def test_keys_without_a_shop_act_for_every_shop(
    client: httpx.AsyncClient, program: ProgramFixture, shops: Shops, ann: str
) -> None:
    for scope in ("checkout", "admin"):
        for number, shop in enumerate((shops.own, shops.other)):
            path = f"/v1/shops/{shop}/orders"
            order_id = f"{scope}-{number}"
            placed = await client.post(path, json=order_body(ann, order_id), headers=program.auth(scope))
            assert placed.status_code == 201, placed.text
            refund = await client.post(f"{path}/{order_id}/refunds", json=REFUND, headers=program.auth(scope))
            assert refund.status_code == 201, refund.text
            for reader in ("checkout", "admin", "finance"):
                read = await client.get(f"{path}/{order_id}", headers=program.auth(reader))
                assert read.status_code == 200, read.text


# --- bulk awards and enrolment -----------------------------------------------------------


async def test_bulk_awards_stay_with_admin_keys(
    client: httpx.AsyncClient,
    program: ProgramFixture,
    shops: Shops,
    ann: str,
    owner_connection: asyncpg.Connection,
) -> None:
    item = {"type": "order", "shop_id": shops.own, **order_body(ann, "B-1")}
    before = await _state(owner_connection, program.id)
    refused = await client.post("/v1/bulk/awards", json={"items": [item]}, headers=shops.till)
    assert assert_problem(refused, 403, "forbidden")["scope"] == "checkout"
    assert await _state(owner_connection, program.id) == before
    items = [item, {**item, "shop_id": shops.other}]
    done = await client.post("/v1/bulk/awards", json={"items": items}, headers=program.auth("admin"))
    assert [result["status"] for result in done.json()["results"]] == [201, 201]


async def test_a_shop_bound_key_enrols_for_its_shop_or_none_but_not_for_another(
    client: httpx.AsyncClient, program: ProgramFixture, shops: Shops, owner_connection: asyncpg.Connection
) -> None:
    before = await snapshot(owner_connection, program.id)
    for _ in range(2):
        refused = await client.post(
            "/v1/customers", json={"external_id": "eve", "shop_id": shops.other}, headers=shops.till
        )
        _refused_for_the_shop(refused, shops.own)
    assert await snapshot(owner_connection, program.id) == before

    own = await client.post("/v1/customers", json={"external_id": "eve", "shop_id": shops.own}, headers=shops.till)
    assert own.status_code == 201 and own.json()["shop_id"] == shops.own
    again = await client.post("/v1/customers", json={"external_id": "eve", "shop_id": shops.own}, headers=shops.till)
    assert again.status_code == 200
    none = await client.post("/v1/customers", json={"external_id": "sam"}, headers=shops.till)
    assert none.status_code == 201 and none.json()["shop_id"] is None
    theirs = await client.post(
        "/v1/customers", json={"external_id": "tom", "shop_id": shops.other}, headers=program.auth("checkout")
    )
    assert theirs.status_code == 201 and theirs.json()["shop_id"] == shops.other


async def test_a_shop_bound_key_does_what_is_not_shop_specific(
    client: httpx.AsyncClient, program: ProgramFixture, shops: Shops, ann: str
) -> None:
    settings = {"enabled": True, "referrer_reward": {"kind": "points", "amount": 300}}
    put = await client.put(
        "/v1/referrals/settings", json=settings, headers={**program.auth("admin"), "Idempotency-Key": "ref"}
    )
    assert put.status_code == 200, put.text
    till = shops.till
    bob = (await client.post("/v1/customers", json={"external_id": "bob"}, headers=till)).json()["id"]
    code = await client.get(f"/v1/customers/{ann}/referral-code", headers=till)
    assert code.status_code == 200, code.text
    redeemed = await client.post(f"/v1/customers/{bob}/referral", json={"code": code.json()["code"]}, headers=till)
    assert redeemed.status_code == 201, redeemed.text
    token = await client.post(f"/v1/customers/{bob}/tokens", headers=till)
    assert token.status_code == 201, token.text
    quote = await client.post("/v1/redemptions/quote", json={"customer_id": ann}, headers=till)
    assert quote.status_code == 200, quote.text
    signal = {"signal_id": "s-1", "customer_id": ann, "kind": "satisfaction", "score": 9}
    signalled = await client.post("/v1/signals", json={**signal, "occurred_at": "2026-05-04T09:30:00Z"}, headers=till)
    assert signalled.status_code == 201, signalled.text
    held = await client.post(
        "/v1/holds", json={"customer_id": ann, "amount": 1}, headers={**till, "Idempotency-Key": "hold-1"}
    )
    assert_problem(held, 409, "insufficient-points")  # the ledger's answer, not the key's
    for path in (f"/v1/customers/{ann}", f"/v1/customers/{ann}/balance", f"/v1/customers/{ann}/history"):
        assert (await client.get(path, headers=till)).status_code == 200, path


async def test_a_revoked_shop_bound_key_is_refused_like_any_other(
    client: httpx.AsyncClient, program: ProgramFixture, shops: Shops
) -> None:
    revoked = await client.delete(f"/v1/api-keys/{shops.key_id}", headers=program.auth("admin"))
    assert revoked.status_code == 200 and revoked.json()["shop_id"] == shops.own
    assert_problem(await client.get(f"/v1/shops/{shops.own}/orders/W-1", headers=shops.till), 401, "unauthorized")
