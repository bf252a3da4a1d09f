"""Enrol, read, update and list a program's customers."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from service.db import ledger_accounts
from service.db.events import emit
from service.db.transaction import in_transaction
from service.domain.access import Principal
from service.domain.clock import Clock
from service.domain.customers import (
    Customer,
    Enrolment,
    ProfileChange,
    check_attributes,
    same_enrolment,
)
from service.domain.errors import Conflict, InvalidInput, NotFound
from service.domain.events import CustomerEnrolled, EventType
from service.domain.ids import new_id
from service.usecases.programs import shop_exists

_COLUMNS = "id, external_id, shop_id, email, name, attributes, enrolled_at, updated_at"
_FIELDS = _COLUMNS.split(", ")


def _customer(row: asyncpg.Record) -> Customer:
    values: dict[str, Any] = {column: row[column] for column in _FIELDS}
    values["attributes"] = msgspec.json.decode(values["attributes"])
    return msgspec.convert(values, Customer)


async def enrol_customer(principal: Principal, request: Enrolment, clock: Clock) -> tuple[Customer, bool]:
    """Enrol once per external id; the same enrolment again returns the same customer. A
    shop-bound key may record only its own shop as the enrolling one (or none)."""
    if request.shop_id is not None:
        principal.check_shop(request.shop_id)
    check_attributes(request.attributes)
    program_id = principal.program_id
    if request.shop_id is not None and not await shop_exists(program_id, request.shop_id):
        raise InvalidInput(f"shop {request.shop_id} does not exist", field="shop_id")

    attributes = msgspec.json.encode(request.attributes).decode()

    async def work(connection: asyncpg.Connection) -> tuple[Customer, bool]:
        now = clock.now()
        row = await connection.fetchrow(
            f"INSERT INTO customers (program_id, id, external_id, shop_id, email, name,"
            f" attributes, enrolled_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
            f" ON CONFLICT (program_id, external_id) DO NOTHING RETURNING {_COLUMNS}",
            program_id,
            new_id("cus", int(now.timestamp() * 1000)),
            request.external_id,
            request.shop_id,
            request.email,
            request.name,
            attributes,
            now,
        )
        if row is not None:
            customer = _customer(row)
            await ledger_accounts.open_customer_accounts(connection, program_id, customer.id)
            enrolled = CustomerEnrolled(
                customer_id=customer.id,
                external_id=customer.external_id,
                shop_id=customer.shop_id,
                email=customer.email,
                name=customer.name,
                enrolled_at=customer.enrolled_at,
            )
            await emit(connection, program_id, EventType.CUSTOMER_ENROLLED, enrolled, customer.id, occurred_at=now)
            return customer, True
        # attributes compared as jsonb, as they are stored: it writes 1e23 back as an integer
        row = await connection.fetchrow(
            f"SELECT {_COLUMNS}, attributes = $3::jsonb AS same_attributes FROM customers"
            " WHERE program_id = $1 AND external_id = $2",
            program_id,
            request.external_id,
            attributes,
        )
        if row is None:
            raise NotFound(f"customer {request.external_id!r} not found")
        existing = _customer(row)
        if not (row["same_attributes"] and same_enrolment(existing, request)):
            raise Conflict(
                f"customer {request.external_id!r} is already enrolled with other details",
                field="external_id",
                customer_id=existing.id,
            )
        return existing, False

    return await in_transaction(work)


async def get_customer(program_id: str, customer_id: str) -> Customer:
    """One customer of the program, or NotFound (also for other programs' customers)."""

    async def work(connection: asyncpg.Connection) -> Customer:
        row = await connection.fetchrow(
            f"SELECT {_COLUMNS} FROM customers WHERE program_id = $1 AND id = $2",
            program_id,
            customer_id,
        )
        if row is None:
            raise NotFound(f"customer {customer_id} not found", field="customer_id")
        return _customer(row)

    return await in_transaction(work)


async def update_customer(program_id: str, customer_id: str, change: ProfileChange, clock: Clock) -> Customer:
    """Change profile fields; unset fields keep their value. Repeating it changes nothing more."""
    if change.attributes is not msgspec.UNSET:
        check_attributes(change.attributes)
    assignments: list[str] = []
    differences: list[str] = []
    values: list[object] = [program_id, customer_id]
    for field in ("email", "name", "attributes"):
        value = getattr(change, field)
        if value is msgspec.UNSET:
            continue
        if field == "attributes":
            value = msgspec.json.encode(value).decode()
        values.append(value)
        assignments.append(f"{field} = ${len(values)}")
        differences.append(f"{field} IS DISTINCT FROM ${len(values)}")

    async def work(connection: asyncpg.Connection) -> Customer:
        if not assignments:
            return await get_customer(program_id, customer_id)
        parameters = [*values, clock.now()]  # built afresh on every attempt (retries)
        # updated_at moves only with a value, so the same change again answers and stores the same
        row = await connection.fetchrow(
            f"UPDATE customers SET {', '.join(assignments)}, updated_at = CASE WHEN {' OR '.join(differences)}"
            f" THEN ${len(parameters)} ELSE updated_at END"
            f" WHERE program_id = $1 AND id = $2 RETURNING {_COLUMNS}",
            *parameters,
        )
        if row is None:
            raise NotFound(f"customer {customer_id} not found", field="customer_id")
        return _customer(row)

    return await in_transaction(work)


async def list_customers(program_id: str, limit: int, after: str | None) -> tuple[list[Customer], str | None]:
    """A page of customers in enrolment order, and the cursor of the next page."""

    async def work(connection: asyncpg.Connection) -> tuple[list[Customer], str | None]:
        rows = await connection.fetch(
            f"SELECT {_COLUMNS} FROM customers"
            " WHERE program_id = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
            program_id,
            after,
            limit + 1,
        )
        page = [_customer(row) for row in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    return await in_transaction(work)
