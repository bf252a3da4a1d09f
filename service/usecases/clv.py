"""Predicted lifetime value: BG/NBD + Gamma-Gamma fits cached per program (refreshed by the
metrics job, never per request) and the per-customer and program predictions from them."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import asyncpg
import msgspec
import numpy as np

from service.db import metrics as rows
from service.db.transaction import in_transaction, snapshot, transaction
from service.domain import clv as model
from service.domain.clock import Clock
from service.domain.errors import NotFound
from service.domain.metrics import DEFINITIONS, Definition
from service.usecases.ledger_settings import local_today

FIT_MAX_AGE = timedelta(hours=24)


class Fit(msgspec.Struct, frozen=True, kw_only=True):
    """A program's fitted models (time unit: weeks) and the observed mean value per purchase."""

    as_of: date
    fitted_at: datetime
    bgnbd: model.BgNbd | None
    gamma_gamma: model.GammaGamma | None
    observed_mean_value: float
    time_unit: str = "week"


def _columns(found: list[asyncpg.Record]) -> tuple[model.Array, model.Array, model.Array, model.Array]:
    x = np.array([row["x"] for row in found], dtype=np.float64)
    t_x = np.array([row["t_x_days"] for row in found], dtype=np.float64) / 7
    t = np.array([row["t_days"] for row in found], dtype=np.float64) / 7
    m = np.array([row["mean_repeat"] or 0.0 for row in found], dtype=np.float64)
    return x, t_x, t, m


async def refit(program_id: str, clock: Clock) -> Fit:
    """Fit BG/NBD and Gamma-Gamma on the program's customer summaries as of today; store it."""
    now = clock.now()
    async with snapshot() as connection:
        today = await local_today(connection, program_id, now)
        found = await rows.clv_summaries(connection, program_id, today)
    x, t_x, t, m = _columns(found)
    observed = float(np.mean([row["mean_value"] for row in found])) if found else 0.0
    fit = Fit(
        as_of=today,
        fitted_at=now,
        bgnbd=model.fit_bgnbd(x, t_x, t) if len(found) >= 2 and x.sum() > 0 else None,
        gamma_gamma=model.fit_gamma_gamma(x, m),
        observed_mean_value=observed,
    )

    async def save(connection: asyncpg.Connection) -> None:
        await rows.save_fit(connection, program_id, today, msgspec.json.encode(fit), now)

    await in_transaction(save)
    return fit


async def refresh_fit(program_id: str, clock: Clock, max_age: timedelta = FIT_MAX_AGE) -> bool:
    """Refit when there is no fit or it is older than max_age (the job's step); True if refitted."""
    async with transaction() as connection:
        stored = await rows.load_fit(connection, program_id)
    if stored is not None and clock.now() - stored["fitted_at"] < max_age:
        return False
    await refit(program_id, clock)
    return True


class CustomerPrediction(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    x: int
    t_x: float
    t: float
    mean_value: float | None
    expected_purchases: float
    p_alive: float
    expected_value: float
    clv: float


class PredictionPage(msgspec.Struct, frozen=True, kw_only=True):
    definition: str
    reference: str
    as_of: date  # the local day the customers' ages T run to (the fit's own is fit.as_of)
    fit: Fit
    horizon_months: int
    monthly_discount: float
    customers: int
    expected_purchases: float  # program total over the horizon
    clv: float  # program total, discounted
    mean_clv: float | None
    items: list[CustomerPrediction]
    next_cursor: str | None


async def predictions(
    program_id: str, now: datetime, horizon_months: int, monthly_discount: float, cursor: str | None, limit: int
) -> PredictionPage:
    """Per customer (a page) and for the program: expected purchases over the horizon,
    P(alive), expected value per purchase and discounted CLV, from the cached fit."""
    async with snapshot() as connection:
        stored = await rows.load_fit(connection, program_id)
        if stored is None:
            raise NotFound("no lifetime-value fit yet; the metrics job makes one", field="fit")
        fit = msgspec.json.decode(stored["fit"], type=Fit)
        if fit.bgnbd is None:
            raise NotFound("too few repeat customers to fit BG/NBD", field="fit")
        today = await local_today(connection, program_id, now)
        everyone = await rows.clv_summaries(connection, program_id, today)
    x, t_x, t, m = _columns(everyone)
    value = model.expected_value(fit.gamma_gamma, x, m, fit.observed_mean_value)
    purchases, clv = model.discounted_clv(fit.bgnbd, value, x, t_x, t, horizon_months, monthly_discount)
    alive = model.probability_alive(fit.bgnbd, x, t_x, t)
    start = 0 if cursor is None else int(np.searchsorted([row["customer_id"] for row in everyone], cursor, "right"))
    items = [
        CustomerPrediction(
            customer_id=everyone[i]["customer_id"],
            x=int(x[i]),
            t_x=round(float(t_x[i]), 4),
            t=round(float(t[i]), 4),
            mean_value=everyone[i]["mean_repeat"],
            expected_purchases=round(float(purchases[i]), 4),
            p_alive=round(float(alive[i]), 4),
            expected_value=round(float(value[i]), 2),
            clv=round(float(clv[i]), 2),
        )
        for i in range(start, min(start + limit, len(everyone)))
    ]
    return PredictionPage(
        definition=Definition.PREDICTED_LTV.value,
        reference=DEFINITIONS,
        as_of=today,
        fit=fit,
        horizon_months=horizon_months,
        monthly_discount=monthly_discount,
        customers=len(everyone),
        expected_purchases=round(float(purchases.sum()), 2),
        clv=round(float(clv.sum()), 2),
        mean_clv=round(float(clv.mean()), 2) if len(everyone) else None,
        items=items,
        next_cursor=items[-1].customer_id if start + limit < len(everyone) and items else None,
    )
