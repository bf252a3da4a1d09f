"""Shop-bound keys in the use cases: authentication reads the key's shop, and every use case
that names a shop refuses another one before anything is written (bulk awards: the whole
request)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from service.domain.access import Principal, Scope
from service.domain.clock import ManualClock
from service.domain.customers import Enrolment
from service.domain.earning import Refund
from service.domain.errors import Forbidden, InvalidInput
from service.usecases import bulk, customers, ledger, orders, programs
from tests.conftest import ProgramFixture
from tests.integration.ledger_helpers import enrol
from tests.integration.test_order_life import basket, setup_program


async def _journal(connection: asyncpg.Connection, program_id: str) -> tuple[int, ...]:
    row = await connection.fetchrow(
        "SELECT (SELECT count(*) FROM entries WHERE program_id = $1),"
        " (SELECT count(*) FROM orders WHERE program_id = $1),"
        " (SELECT count(*) FROM refunds WHERE program_id = $1),"
        " (SELECT count(*) FROM customers WHERE program_id = $1),"
        " (SELECT count(*) FROM idempotency_keys WHERE program_id = $1)",
        program_id,
    )
    assert row is not None
    return tuple(row)


def _placement(order_id: str, customer_id: str) -> orders.OrderPlacement:
    return orders.OrderPlacement(order_id=order_id, customer_id=customer_id, order=basket())


async def test_authentication_reads_the_keys_shop(program: ProgramFixture, clock: ManualClock) -> None:
    bound = await programs.create_api_key(program.id, "till", Scope.CHECKOUT, program.shop_id)
    assert bound.shop_id == program.shop_id
    principal = await programs.authenticate(bound.key, clock)
    assert (principal.scope, principal.shop_id, principal.key_id) == (Scope.CHECKOUT, program.shop_id, bound.id)
    wide = await programs.authenticate(program.keys["checkout"], clock)
    assert wide.shop_id is None


async def test_making_a_bound_key_checks_scope_and_shop(program: ProgramFixture) -> None:
    for scope, shop_id in ((Scope.ADMIN, program.shop_id), (Scope.FINANCE, program.shop_id), (Scope.CHECKOUT, "shp_x")):
        with pytest.raises(InvalidInput) as refused:
            await programs.create_api_key(program.id, "x", scope, shop_id)
        assert refused.value.field == "shop_id"
    assert len(await programs.list_api_keys(program.id)) == 3


async def test_bulk_awards_with_another_shops_order_refuse_the_whole_request(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    other = await programs.create_shop(program.id, "Web shop")
    till = Principal(program_id=program.id, scope=Scope.CHECKOUT, key_id="key_till", shop_id=program.shop_id)
    grant = bulk.BulkGrant(key="goodwill", adjustment=ledger.Adjustment(customer_id=ann, amount=10, reason="welcome"))
    items: list[bulk.BulkOrder | bulk.BulkGrant] = [
        bulk.BulkOrder(shop_id=program.shop_id, placement=_placement("A-1", ann)),
        grant,
        bulk.BulkOrder(shop_id=other.id, placement=_placement("A-2", ann)),
    ]
    before = await _journal(owner_connection, program.id)
    for _ in range(2):
        with pytest.raises(Forbidden) as refused:
            await bulk.award_in_bulk(till, items, clock)
        assert refused.value.field == "items[2].shop_id"
    assert await _journal(owner_connection, program.id) == before

    outcomes = await bulk.award_in_bulk(till, items[:2], clock)
    assert [type(outcome).__name__ for outcome in outcomes] == ["OrderView", "WrittenEntry"]


async def test_every_use_case_naming_a_shop_refuses_another_before_writing(
    program: ProgramFixture, clock: ManualClock, owner_connection: asyncpg.Connection
) -> None:
    await setup_program(program, clock)
    ann = await enrol(program.id, "ann", clock)
    other = await programs.create_shop(program.id, "Web shop")
    wide = Principal(program_id=program.id, scope=Scope.CHECKOUT, key_id="key_wide")
    till = Principal(program_id=program.id, scope=Scope.CHECKOUT, key_id="key_till", shop_id=program.shop_id)
    placement = _placement("A-1", ann)
    await orders.place_order(wide, other.id, placement, clock)
    before = await _journal(owner_connection, program.id)

    refusals: list[Callable[[], Awaitable[object]]] = [
        lambda: orders.place_order(till, other.id, placement, clock),
        lambda: orders.get_order(till, other.id, "A-1"),
        lambda: orders.refund_order(till, other.id, "A-1", "R-1", Refund(amount=100), clock),
        lambda: customers.enrol_customer(till, Enrolment(external_id="bob", shop_id=other.id), clock),
    ]
    for refusal in refusals:
        with pytest.raises(Forbidden) as refused:
            await refusal()
        assert refused.value.field == "shop_id"
    assert await _journal(owner_connection, program.id) == before
    assert (await orders.get_order(wide, other.id, "A-1")).order_id == "A-1"
