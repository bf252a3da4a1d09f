"""The `loyalty` command: serve, migrate, seed-demo, create-program, create-api-key, jobs, stop-db."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import msgspec

from service.config import Settings, SettingsError, load_settings
from service.db.engine import resolve_dsn
from service.db.migrate import migrate
from service.db.piccolo_conf import DB
from service.domain.access import Scope, check_key_shop
from service.domain.errors import DomainError, InvalidInput
from service.domain.programs import Name, ProgramSettings


async def prepare_database(settings: Settings) -> str:
    """Resolve (and start, if embedded) the database, migrate it, and return its DSN."""
    dsn = await resolve_dsn(settings)
    DB.configure({"dsn": dsn})
    await migrate()
    return dsn


def _print_demo(demo: object) -> None:
    from service.usecases.demo import DemoProgram

    assert isinstance(demo, DemoProgram)
    print(f"Seeded demo program {demo.program_id} with shop {demo.shop.id}.")
    print("API keys (shown once; store them now):")
    for key in demo.keys:
        print(f"  {key.scope.value:<9} {key.key}")


async def _seed(settings: Settings) -> None:
    from service.usecases.demo import seed_demo

    await prepare_database(settings)
    demo = await seed_demo()
    if demo is None:
        print("Demo program prg_demo exists already; its keys were shown when it was seeded.")
        print("Make another key with: loyalty create-api-key prg_demo --scope admin")
    else:
        _print_demo(demo)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def cmd_serve(settings: Settings) -> None:
    import uvicorn

    from service.app import create_app
    from service.http.observability import configure_logging

    dsn = asyncio.run(_serve_prepare(settings))
    configure_logging(settings.log_level)
    print(
        f"Serving on http://{settings.host}:{settings.port} (OpenAPI UI at /schema/swagger)",
        flush=True,
    )
    # uvicorn shuts down gracefully on SIGTERM and then raises it again: exit normally then
    # (as after Ctrl-C), so that the embedded PostgreSQL is let go of and stops with us
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(
        create_app(settings, dsn),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
    )


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port (taken, or no such address), or None. Checked
    first: otherwise the embedded PostgreSQL is started, the schema migrated and the demo keys
    printed before the server finds out."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:
        return error.strerror or str(error)
    return None


async def _serve_prepare(settings: Settings) -> str:
    if settings.seed_demo:
        await _seed(settings)
        return await resolve_dsn(settings)
    return await prepare_database(settings)


SHOWN_FAILING_ITEMS = 20


async def _run_jobs(settings: Settings) -> bool:
    """Every job for every program once, then a pass of the dispatcher; prints what each did
    and returns whether every job succeeded (a failed one is named, and the command exits 1)."""
    from service.db.engine import close_pool, start_pool
    from service.domain.clock import SystemClock
    from service.usecases.dispatch import DispatchConfig, dispatch_once, unreadable_deliveries
    from service.usecases.jobs import run_all
    from service.usecases.lifecycle import lifecycle_rules

    dsn = await prepare_database(settings)
    await start_pool(dsn, settings)
    succeeded = True
    try:
        for report in await run_all(SystemClock(), lifecycle_rules(settings)):
            failed = f"; failed: {', '.join(report.failed)}" if report.failed else ""
            succeeded = succeeded and not report.failed and not report.failing_items
            print(
                f"{report.program_id}: {report.orders_released} orders released,"
                f" {report.referrals_rewarded} referrals rewarded, {report.tier_grants_ended} tier grants ended,"
                f" {report.tiers_reviewed} tiers reviewed, {report.holds_expired} holds expired,"
                f" {report.expiry_entries} expiry entries, {report.lifecycle_events} lifecycle events,"
                f" {report.churn_risk_red} churn-risk events, {report.events_published} events published,"
                f" {report.entries_sealed} entries sealed{failed}"
            )
            if report.seal_stuck:
                print(f"  sealing stuck at {report.seal_stuck}")
            for item in report.failing_items[:SHOWN_FAILING_ITEMS]:
                print(
                    f"  failing: {item.job} {item.item}, {item.attempts} attempts since"
                    f" {item.first_failed_at.isoformat()}, retry at {item.retry_at.isoformat()}: {item.last_error}"
                )
            if len(report.failing_items) > SHOWN_FAILING_ITEMS:
                print(f"  failing: {len(report.failing_items) - SHOWN_FAILING_ITEMS} more items")
        sent = await dispatch_once(SystemClock(), DispatchConfig.from_settings(settings))
        errors = f", {sent.errors} dispatcher errors" if sent.errors else ""
        steps = list(sent.failed)
        # counted from the database, not from this pass: one leased by another dispatcher (or by
        # an earlier run, until its lease ends) holds its customer back all the same
        try:
            held = await unreadable_deliveries()
        except Exception:
            logging.getLogger("loyalty.webhooks").exception("the deliveries with an unreadable event went uncounted")
            held = {}
            steps.append("unreadable count")
        unreadable = f", {sum(held.values())} pending with an event a dispatcher could not read" if held else ""
        failed = f"; failed: {', '.join(steps)}" if steps else ""
        print(
            f"webhooks: {sent.delivered} delivered, {sent.failed_attempts} failed attempts{errors}{unreadable}{failed}"
        )
        for program_id, deliveries in sorted(held.items()):
            print(
                f"  unreadable: {program_id}: {deliveries} deliveries kept pending for a version that reads their"
                " event; their customers' later events to the endpoint wait behind them"
            )
        succeeded = succeeded and not steps and not sent.errors and not held
    finally:
        await close_pool()
    return succeeded


def _stop_database(settings: Settings) -> None:
    from service.db.embedded import start_embedded, stop_embedded

    if settings.database_url:
        print("DATABASE_URL is set: the server is not ours to stop.")
        return
    if not (settings.pgdata / "PG_VERSION").exists():
        print(f"No embedded database at {settings.pgdata}.")
        return
    start_embedded(settings.pgdata)  # attach to the server (starting it if needed) ...
    stop_embedded()  # ... and let go: it stops once no other process of ours uses it
    print(f"Embedded PostgreSQL at {settings.pgdata} released; it stops when no other process uses it.")


def _checked(value: Any, kind: Any, options: Mapping[str, str]) -> Any:
    """`value` as `kind`, checked against its constraints (a Struct made directly is not);
    InvalidInput naming the command-line option otherwise."""
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as error:
        message, _, where = str(error).partition(" - at `$")
        field = where.rstrip("`").lstrip(".")
        raise InvalidInput(f"{options[field]}: {message}", field=field) from None


def _program_settings(args: argparse.Namespace) -> ProgramSettings:
    options = {"name": "name", "time_zone": "--time-zone", "currency": "--currency"}
    options["point_value_minor"] = "--point-value-minor"
    values = {field: getattr(args, field) for field in options}
    program: ProgramSettings = _checked(values, ProgramSettings, options)
    try:
        return program.validated()
    except InvalidInput as error:
        raise InvalidInput(f"{options[error.field or 'name']}: {error.detail}", field=error.field) from None


def _key_request(args: argparse.Namespace) -> tuple[str, Scope]:
    name: str = _checked(args.name, Name, {"": "--name"})
    scope = Scope(args.scope)
    try:
        check_key_shop(scope, args.shop_id)
    except InvalidInput as error:
        raise InvalidInput(f"--shop-id: {error.detail}", field="shop_id") from None
    return name, scope


async def _create_program(settings: Settings, args: argparse.Namespace) -> None:
    from service.usecases.programs import create_api_key, create_program

    program_settings = _program_settings(args)  # before the database: a bad argument changes nothing
    await prepare_database(settings)
    program = await create_program(program_settings)
    key = await create_api_key(program.id, "initial admin", Scope.ADMIN)
    print(f"Program {program.id} created. Admin key (shown once): {key.key}")


async def _create_api_key(settings: Settings, args: argparse.Namespace) -> None:
    from service.usecases.programs import create_api_key, get_program

    name, scope = _key_request(args)
    await prepare_database(settings)
    await get_program(args.program_id)
    key = await create_api_key(args.program_id, name, scope, args.shop_id)
    bound = f" for shop {args.shop_id}" if args.shop_id else ""
    print(f"{key.scope.value} key {key.id}{bound} (shown once): {key.key}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loyalty", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="migrate, seed the demo program and serve the API")
    sub.add_parser("migrate", help="apply pending migrations")
    sub.add_parser("seed-demo", help="create the demo program if it does not exist")
    program = sub.add_parser("create-program", help="create a program and print its admin key")
    program.add_argument("name")
    program.add_argument("--time-zone", default="Europe/Amsterdam")
    program.add_argument("--currency", default="EUR")
    program.add_argument("--point-value-minor", type=int, default=1)
    key = sub.add_parser("create-api-key", help="create an API key for a program")
    key.add_argument("program_id")
    key.add_argument("--scope", choices=["checkout", "admin", "finance"], required=True)
    key.add_argument("--name", default="cli")
    key.add_argument("--shop-id", default=None, help="bind a checkout key to one shop of the program")
    jobs = sub.add_parser("jobs", help="run scheduled jobs on demand")
    jobs.add_argument("action", choices=["run"], help="run every job for every program once")
    sub.add_parser("stop-db", help="stop the embedded PostgreSQL of this checkout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"loyalty: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        taken = _cannot_listen(settings.host, settings.port)
        if taken is not None:  # before the database is started, migrated and seeded
            print(f"loyalty: cannot serve on {settings.host}:{settings.port}: {taken}", file=sys.stderr)
            return 2
        cmd_serve(settings)
    elif args.command == "migrate":
        asyncio.run(prepare_database(settings))
        print("Migrations applied.")
    elif args.command == "seed-demo":
        asyncio.run(_seed(settings))
    elif args.command in ("create-program", "create-api-key"):
        make = _create_program if args.command == "create-program" else _create_api_key
        try:
            asyncio.run(make(settings, args))
        except DomainError as refusal:  # a bad argument: a message naming it, exit code 2 as argparse's
            print(f"loyalty: {refusal.detail}", file=sys.stderr)
            return 2
    elif args.command == "jobs":
        if not asyncio.run(_run_jobs(settings)):
            return 1  # a job failed (logged, and named in its program's line): cron sees it
    elif args.command == "stop-db":
        _stop_database(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
