"""Create and configure programs, shops and API keys; authenticate callers."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import asyncpg
import msgspec

from service.db import credentials
from service.db.ledger_accounts import open_system_accounts
from service.db.tables import ApiKey, Program, Shop
from service.db.transaction import autocommit, transaction
from service.domain import access
from service.domain.access import Principal, Scope
from service.domain.clock import Clock
from service.domain.errors import ApiKeySecretShownOnce, Forbidden, InvalidInput, NotFound, Unauthorized
from service.domain.ids import new_id
from service.domain.programs import ApiKeyRecord, CreatedApiKey, ProgramSettings
from service.domain.programs import Program as ProgramRecord
from service.domain.programs import Shop as ShopRecord
from service.usecases.idempotency import fingerprint, run_once_if_keyed

_PROGRAM_COLUMNS = (
    Program.id,
    Program.name,
    Program.time_zone,
    Program.currency,
    Program.point_value_minor,
    Program.created_at,
)
_KEY_COLUMNS = (ApiKey.id, ApiKey.name, ApiKey.scope, ApiKey.shop_id, ApiKey.created_at, ApiKey.revoked_at)


async def create_program(settings: ProgramSettings, program_id: str | None = None) -> ProgramRecord:
    """Create a program (the tenant) with its token signing secret."""
    settings = settings.validated()
    program_id = program_id or new_id("prg")
    async with transaction() as connection:
        await Program.insert(
            Program(
                id=program_id,
                name=settings.name,
                time_zone=settings.time_zone,
                currency=settings.currency,
                point_value_minor=settings.point_value_minor,
                token_secret=secrets.token_bytes(32),
            )
        ).run()
        await open_system_accounts(connection, program_id)
    return await get_program(program_id)


async def get_program(program_id: str) -> ProgramRecord:
    """The program, or NotFound."""
    row = await Program.select(*_PROGRAM_COLUMNS).where(Program.id == program_id).first().run()
    if row is None:
        raise NotFound(f"program {program_id} not found")
    return msgspec.convert(row, ProgramRecord)


async def create_shop(program_id: str, name: str, key: str | None = None) -> ShopRecord:
    """Add a sales channel to a program; with an idempotency key, once per key (a retry
    answers the shop made first)."""

    async def work(connection: asyncpg.Connection) -> ShopRecord:
        row = await connection.fetchrow(
            "INSERT INTO shops (program_id, id, name) VALUES ($1, $2, $3) RETURNING id, name, created_at",
            program_id,
            new_id("shp"),
            name,
        )
        assert row is not None
        return msgspec.convert(dict(row), ShopRecord)

    return await run_once_if_keyed(program_id, key, lambda: fingerprint("create-shop", name), ShopRecord, work)


async def list_shops(program_id: str) -> list[ShopRecord]:
    rows = (
        await Shop.select(Shop.id, Shop.name, Shop.created_at)
        .where(Shop.program_id == program_id)
        .order_by(Shop.created_at)
        .run()
    )
    return [msgspec.convert(row, ShopRecord) for row in rows]


async def shop_exists(program_id: str, shop_id: str) -> bool:
    return bool(await Shop.exists().where((Shop.program_id == program_id) & (Shop.id == shop_id)).run())


async def create_api_key(
    program_id: str, name: str, scope: Scope, shop_id: str | None = None, key: str | None = None
) -> CreatedApiKey:
    """Make a key, for every shop or (a checkout key) for one; its plain text is returned here
    and never again. With an idempotency key, once per key: only the key's record (never its
    plain text) is remembered, so a retry is refused with `ApiKeySecretShownOnce` naming it."""
    if scope is Scope.CUSTOMER:
        raise ValueError("customer access uses customer tokens, not API keys")
    access.check_key_shop(scope, shop_id)
    plain_texts: dict[str, str] = {}  # key id -> plain text, of the keys this call made

    async def work(connection: asyncpg.Connection) -> ApiKeyRecord:
        if shop_id is not None and not await connection.fetchval(
            "SELECT true FROM shops WHERE program_id = $1 AND id = $2", program_id, shop_id
        ):
            raise InvalidInput(f"shop {shop_id} does not exist", field="shop_id")
        issued = access.issue_api_key(program_id)
        row = await connection.fetchrow(
            "INSERT INTO api_keys (program_id, id, name, scope, shop_id, secret_hash) VALUES ($1, $2, $3, $4, $5, $6)"
            " RETURNING id, name, scope, shop_id, created_at, revoked_at",
            program_id,
            issued.key_id,
            name,
            scope.value,
            shop_id,
            issued.secret_hash,
        )
        assert row is not None
        plain_texts[issued.key_id] = issued.plain_text
        return msgspec.convert(dict(row), ApiKeyRecord)

    request = [name, scope.value, shop_id]
    record = await run_once_if_keyed(
        program_id, key, lambda: fingerprint("create-api-key", request), ApiKeyRecord, work
    )
    if record.id not in plain_texts:  # made by an earlier request with this key
        current = await _key_record(program_id, record.id) or record
        raise ApiKeySecretShownOnce(
            f"API key {record.id} was made by an earlier request with this Idempotency-Key, and its secret"
            f" is shown only in that request's answer; use that secret, or revoke {record.id} and make"
            " another key with a new Idempotency-Key",
            field="Idempotency-Key",
            api_key=msgspec.to_builtins(current),
        )
    return CreatedApiKey(
        id=record.id,
        name=record.name,
        scope=record.scope,
        shop_id=record.shop_id,
        created_at=record.created_at,
        key=plain_texts[record.id],
    )


async def _key_record(program_id: str, key_id: str) -> ApiKeyRecord | None:
    where = (ApiKey.program_id == program_id) & (ApiKey.id == key_id)
    row = await ApiKey.select(*_KEY_COLUMNS).where(where).first().run()
    return None if row is None else msgspec.convert(row, ApiKeyRecord)


async def list_api_keys(program_id: str) -> list[ApiKeyRecord]:
    rows = await ApiKey.select(*_KEY_COLUMNS).where(ApiKey.program_id == program_id).order_by(ApiKey.created_at).run()
    return [msgspec.convert(row, ApiKeyRecord) for row in rows]


async def revoke_api_key(program_id: str, key_id: str, clock: Clock) -> ApiKeyRecord:
    """Revoke a key at once; revoking twice keeps the first time."""
    where = (ApiKey.program_id == program_id) & (ApiKey.id == key_id)
    async with transaction():
        row = await ApiKey.select(*_KEY_COLUMNS).where(where).first().run()
        if row is None:
            raise NotFound(f"api key {key_id} not found", field="key_id")
        if row["revoked_at"] is None:
            await ApiKey.update({ApiKey.revoked_at: clock.now()}).where(where).run()
        row = await ApiKey.select(*_KEY_COLUMNS).where(where).first().run()
    return msgspec.convert(row, ApiKeyRecord)


async def authenticate(credential: str, clock: Clock) -> Principal:
    """Turn a presented API key or customer token into a Principal, or raise Unauthorized.

    One statement on a pooled connection for an API key, and one for a customer token once
    its program's secret is known (after its signature and expiry are checked): the key
    that issued the token and the customer, so revoking a key ends its tokens on the next
    request too, in every process."""
    parsed = access.parse_api_key(credential)
    if parsed is not None:
        async with autocommit() as connection:
            row = await credentials.api_key(connection, parsed.program_id, parsed.key_id)
        if row is None or not access.secret_matches(parsed.secret, row["secret_hash"]):
            raise Unauthorized("unknown API key")
        if row["revoked_at"] is not None:
            raise Unauthorized("API key revoked")
        return Principal(
            program_id=parsed.program_id, scope=Scope(row["scope"]), key_id=parsed.key_id, shop_id=row["shop_id"]
        )
    program_id = access.token_program(credential)
    if program_id is None:
        raise Unauthorized("credential is neither an API key nor a customer token")
    secret = await _token_secret(program_id)
    claims = access.verify_customer_token(credential, secret, clock.now())
    async with autocommit() as connection:
        if claims.key_id is not None:
            row = await credentials.token_standing(connection, program_id, claims.customer_id, claims.key_id)
        else:  # signed before tokens named their key (by the previous version, in a rolling deploy);
            # none is left 24 h after every process names the key: then this branch can go
            row = await credentials.unattributed_token_standing(
                connection, program_id, claims.customer_id, claims.issued_no_earlier_than()
            )
    access.check_token_standing(claims, access.TokenStanding(**dict(row)))
    return Principal(program_id=program_id, scope=Scope.CUSTOMER, customer_id=claims.customer_id)


async def issue_customer_token(
    issuer: Principal, customer_id: str, ttl: timedelta, clock: Clock
) -> tuple[str, datetime]:
    """A short-lived token that lets the app act as one customer only, for as long as the
    checkout key that asks for it (`issuer`) is not revoked."""
    if issuer.key_id is None or issuer.scope is not Scope.CHECKOUT:
        raise Forbidden("customer tokens are issued to checkout keys")
    expires_at = clock.now() + ttl
    secret = await _token_secret(issuer.program_id)
    token = access.sign_customer_token(issuer.program_id, customer_id, expires_at, secret, key_id=issuer.key_id)
    return token, expires_at


_token_secrets: dict[str, bytes] = {}  # a program's secret is made with it and never changes


async def _token_secret(program_id: str) -> bytes:
    secret = _token_secrets.get(program_id)
    if secret is None:
        async with autocommit() as connection:
            secret = await credentials.token_secret(connection, program_id)
        if secret is None:
            raise Unauthorized("unknown program")
        _token_secrets[program_id] = secret
    return secret
