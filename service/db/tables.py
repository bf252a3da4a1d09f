"""Piccolo tables mirroring the schema the SQL migrations create.

The migrations own the schema (composite keys, triggers, checks); these classes give
typed queries for the plain CRUD tables. A test compares them with the database.
"""

from __future__ import annotations

from piccolo.columns import JSONB, Bytea, Integer, Text, Timestamptz
from piccolo.table import Table

from service.db.piccolo_conf import DB


class Program(Table, tablename="programs", db=DB):
    """The tenant: a loyalty program."""

    id = Text(primary_key=True)
    name = Text()
    time_zone = Text()
    currency = Text()
    point_value_minor = Integer()
    token_secret = Bytea()
    created_at = Timestamptz()


class Shop(Table, tablename="shops", db=DB):
    """A sales channel of a program."""

    program_id = Text()
    id = Text(primary_key=True)
    name = Text()
    created_at = Timestamptz()


class ApiKey(Table, tablename="api_keys", db=DB):
    """A server-to-server key with one scope; only its hash is stored."""

    program_id = Text()
    id = Text(primary_key=True)
    name = Text()
    scope = Text()
    shop_id = Text(null=True, default=None)
    secret_hash = Bytea()
    created_at = Timestamptz()
    revoked_at = Timestamptz(null=True, default=None)


class Customer(Table, tablename="customers", db=DB):
    """A member of a program, known to shops by its external id."""

    program_id = Text()
    id = Text(primary_key=True)
    external_id = Text()
    shop_id = Text(null=True, default=None)
    email = Text(null=True, default=None)
    name = Text(null=True, default=None)
    attributes = JSONB()
    enrolled_at = Timestamptz()
    updated_at = Timestamptz()


TABLES: tuple[type[Table], ...] = (Program, Shop, ApiKey, Customer)
