"""The schema fits distribution by program: every tenant table carries program_id in its
primary key and unique constraints, and no foreign key can cross from one program to another."""

from __future__ import annotations

import asyncpg

NOT_TENANT_TABLES = {"programs", "migration"}  # the tenants themselves; piccolo's bookkeeping


async def _tables(connection: asyncpg.Connection) -> list[str]:
    rows = await connection.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    return sorted(row["table_name"] for row in rows if row["table_name"] not in NOT_TENANT_TABLES)


async def _constraints(connection: asyncpg.Connection, kinds: str) -> list[asyncpg.Record]:
    return list(
        await connection.fetch(
            "SELECT c.conrelid::regclass::text AS table_name, c.conname, c.contype,"
            " ARRAY(SELECT a.attname FROM unnest(c.conkey) AS k(n)"
            "       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n)::text[] AS columns,"
            " c.confrelid::regclass::text AS referenced,"
            " ARRAY(SELECT a.attname FROM unnest(c.confkey) AS k(n)"
            "       JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n)::text[] AS referenced_columns"
            " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
            " WHERE n.nspname = 'public' AND c.contype = ANY($1::char[])",
            list(kinds),
        )
    )


async def test_every_tenant_table_is_keyed_by_program(owner_connection: asyncpg.Connection) -> None:
    tables = await _tables(owner_connection)
    assert {"accounts", "entries", "postings", "orders", "customer_tiers"} <= set(tables)
    keyed = {row["table_name"]: row for row in await _constraints(owner_connection, "p")}
    missing_key = [table for table in tables if table not in keyed]
    assert not missing_key, f"tables without a primary key: {missing_key}"
    wrong = {t: list(keyed[t]["columns"]) for t in tables if "program_id" not in keyed[t]["columns"]}
    assert not wrong, f"primary keys without program_id: {wrong}"


async def test_unique_constraints_and_indexes_include_the_program(owner_connection: asyncpg.Connection) -> None:
    unique = [row for row in await _constraints(owner_connection, "u") if row["table_name"] not in NOT_TENANT_TABLES]
    wrong = [(row["table_name"], row["conname"]) for row in unique if "program_id" not in row["columns"]]
    assert not wrong, f"unique constraints without program_id: {wrong}"
    indexes = await owner_connection.fetch(
        "SELECT i.indrelid::regclass::text AS table_name, i.indexrelid::regclass::text AS index_name,"
        " pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND i.indisunique"
    )
    wrong_indexes = [
        row["index_name"]
        for row in indexes
        if row["table_name"] not in NOT_TENANT_TABLES and "program_id" not in row["definition"]
    ]
    assert not wrong_indexes, f"unique indexes without program_id: {wrong_indexes}"


async def test_no_foreign_key_crosses_programs(owner_connection: asyncpg.Connection) -> None:
    foreign = await _constraints(owner_connection, "f")
    assert foreign
    crossing = []
    for row in foreign:
        if row["table_name"] in NOT_TENANT_TABLES:
            continue
        if row["referenced"] == "programs":  # the tenant itself: program_id -> programs.id
            ok = list(row["columns"]) == ["program_id"] and list(row["referenced_columns"]) == ["id"]
        else:  # program_id on both sides, at the same position
            pairs = list(zip(row["columns"], row["referenced_columns"], strict=True))
            ok = ("program_id", "program_id") in pairs
        if not ok:
            crossing.append((row["table_name"], row["conname"]))
    assert not crossing, f"foreign keys that could cross programs: {crossing}"
