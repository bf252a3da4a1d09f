"""The scheduled work of every program, run in the service or by `loyalty jobs run`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from service.config import Settings
from service.db import job_failures
from service.db.job_failures import FailingItem
from service.db.programs import program_ids
from service.db.transaction import in_transaction
from service.domain.clock import Clock
from service.usecases import clv, ledger_jobs, lifecycle, orders, referrals, signals, tiers
from service.usecases.dispatch import DispatchConfig, dispatch_forever, publish_events
from service.usecases.lifecycle import LifecycleRules

log = logging.getLogger("loyalty.jobs")


class JobReport(msgspec.Struct, kw_only=True):
    program_id: str
    orders_released: int = 0
    referrals_rewarded: int = 0
    tiers_reviewed: int = 0
    tier_grants_ended: int = 0
    holds_expired: int = 0
    expiry_entries: int = 0
    lifecycle_events: int = 0
    churn_risk_red: int = 0
    events_published: int = 0
    entries_sealed: int = 0
    failed: list[str] = msgspec.field(default_factory=list)
    ltv_fits_refreshed: int = 0
    seal_stuck: str | None = None  # the entry the program's chain cannot go past, and why
    failing_items: list[FailingItem] = msgspec.field(default_factory=list)  # isolated, waiting for a retry


async def run_program_jobs(program_id: str, clock: Clock, rules: LifecycleRules | None = None) -> JobReport:
    """Release orders past their return window, reward referrals, end granted tiers, review
    tiers, void expired holds, expire points, emit lifecycle events, publish events, seal the
    chain and refresh lifetime-value fits, for one program. A job that fails is logged and
    the others still run; the failed one is tried again next round."""
    report = JobReport(program_id=program_id)
    lifecycle_rules = rules or LifecycleRules()
    steps: list[tuple[str, Callable[[], Awaitable[int]]]] = [
        ("orders_released", lambda: orders.release_due_orders(program_id, clock)),
        ("referrals_rewarded", lambda: referrals.reward_due(program_id, clock)),
        ("tier_grants_ended", lambda: tiers.end_grants(program_id, clock)),
        ("tiers_reviewed", lambda: tiers.review_due(program_id, clock)),
        ("holds_expired", lambda: ledger_jobs.expire_holds(program_id, clock)),
        ("expiry_entries", lambda: ledger_jobs.expire_points(program_id, clock)),
        ("lifecycle_events", lambda: lifecycle.run_lifecycle_jobs(program_id, clock, lifecycle_rules)),
        ("churn_risk_red", lambda: signals.emit_churn_risk_red(program_id, clock)),
        ("events_published", lambda: publish_events(program_id, clock)),
        ("entries_sealed", lambda: ledger_jobs.seal_chain(program_id)),
        ("ltv_fits_refreshed", lambda: _count(clv.refresh_fit(program_id, clock))),  # at most daily
    ]
    for field, step in steps:
        try:
            setattr(report, field, await step())
        except asyncio.CancelledError:
            raise
        except ledger_jobs.SealingStuck as stuck:
            log.error("%s", stuck)
            report.entries_sealed, report.seal_stuck = stuck.sealed, f"entry {stuck.entry_id}: {stuck.reason}"
            report.failed.append(field)
        except Exception:
            log.exception("job %s failed for program %s; the next round tries again", field, program_id)
            report.failed.append(field)
    try:
        report.failing_items = await in_transaction(lambda connection: job_failures.failing(connection, program_id))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the failing items of program %s could not be read", program_id)
        report.failed.append("failing_items")
    return report


async def _count(done: Awaitable[bool]) -> int:
    return int(await done)


async def run_all(clock: Clock, rules: LifecycleRules | None = None) -> list[JobReport]:
    """Every job for every program, once."""
    return [await run_program_jobs(program_id, clock, rules) for program_id in await in_transaction(program_ids)]


STUCK_RETRY_S = 60.0
_stuck: dict[str, float] = {}  # program -> when its sealing last ended stuck (time.monotonic())


async def seal_all() -> int:
    """Seal the queued entries of every program; one program's failure is logged and does
    not keep the others unsealed until the next full round. A program stuck at an entry is
    logged as an error and tried again once a minute, not every second: until the entry is
    mended its chain cannot move, and each try takes its queue and puts it back (the full
    rounds report it too)."""
    sealed = 0
    for program_id in await in_transaction(program_ids):
        if time.monotonic() - _stuck.get(program_id, -STUCK_RETRY_S) < STUCK_RETRY_S:
            continue
        try:
            sealed += await ledger_jobs.seal_chain(program_id)
            _stuck.pop(program_id, None)
        except asyncio.CancelledError:
            raise
        except ledger_jobs.SealingStuck as stuck:
            sealed += stuck.sealed
            _stuck[program_id] = time.monotonic()
            log.error("%s", stuck)
        except Exception:
            log.exception("sealing failed for program %s; the next round tries again", program_id)
    return sealed


async def scheduler(
    clock: Clock, interval_s: float, seal_interval_s: float = 1.0, rules: LifecycleRules | None = None
) -> None:
    """Run the jobs forever: the sealer every second, the rest every interval."""
    elapsed = interval_s
    while True:
        try:
            if elapsed >= interval_s:
                elapsed = 0.0
                for report in await run_all(clock, rules):
                    if report.orders_released or report.tiers_reviewed or report.holds_expired or report.expiry_entries:
                        log.info("jobs ran", extra={"fields": msgspec.structs.asdict(report)})
            else:
                await seal_all()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduled jobs failed; retrying next round")
        await asyncio.sleep(seal_interval_s)
        elapsed += seal_interval_s


async def run_scheduled(clock: Clock, settings: Settings) -> None:
    """The job scheduler and the webhook dispatcher, side by side until cancelled."""
    async with asyncio.TaskGroup() as group:
        group.create_task(scheduler(clock, settings.job_interval_s, rules=lifecycle.lifecycle_rules(settings)))
        group.create_task(dispatch_forever(clock, DispatchConfig.from_settings(settings)))
