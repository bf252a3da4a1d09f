"""Predicted lifetime value, free of I/O: BG/NBD (Fader, Hardie & Lee 2005) for the number
of future purchases and P(alive), Gamma-Gamma (Fader & Hardie 2013) for the value per
purchase, both fitted by maximum likelihood, and the monthly discounted CLV of
../shared/METRICS.md. Pure numerical code: it imports numpy and scipy, nothing that does I/O.

Time is in weeks (as in the BG/NBD paper); a month is 365.25 / 12 days.
Per customer: x = repeat purchase days (purchase days after the first), t_x = weeks from the
first to the last purchase day, T = weeks from the first purchase day to the as-of date,
m_x = the mean value of the repeat purchase days.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

WEEKS_PER_MONTH = 365.25 / 12 / 7
Array = NDArray[np.float64]


class BgNbd(msgspec.Struct, frozen=True, kw_only=True):
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int


class GammaGamma(msgspec.Struct, frozen=True, kw_only=True):
    p: float
    q: float
    v: float
    log_likelihood: float
    customers: int  # those with at least one repeat purchase


def bgnbd_log_likelihood(params: Sequence[float] | Array, x: Array, t_x: Array, t: Array, weights: Array) -> float:
    """The BG/NBD log-likelihood (paper's equation 6), summed with weights."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + t)
    repeat = x > 0
    a4 = np.where(repeat, np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return float(np.sum(weights * (a1 + a2 + np.logaddexp(a3, a4))))


def _aggregate(*columns: Array) -> tuple[list[Array], Array]:
    stacked = np.column_stack(columns)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(np.float64)


def fit_bgnbd(x: Array, t_x: Array, t: Array) -> BgNbd:
    """Maximum-likelihood r, alpha, a, b (optimised on their logarithms)."""
    (ux, utx, ut), weights = _aggregate(x, t_x, t)

    def negative(log_params: Array) -> float:
        return -bgnbd_log_likelihood(np.exp(log_params), ux, utx, ut, weights)

    result = minimize(
        negative, np.zeros(4), method="Nelder-Mead", options={"maxiter": 8000, "xatol": 1e-7, "fatol": 1e-9}
    )
    r, alpha, a, b = (float(value) for value in np.exp(result.x))
    return BgNbd(r=r, alpha=alpha, a=a, b=b, log_likelihood=-float(result.fun), customers=len(x))


def expected_purchases(model: BgNbd, horizon: Array | float, x: Array, t_x: Array, t: Array) -> Array:
    """E[purchases in (T, T + horizon] | x, t_x, T] (paper's equation 10)."""
    r, alpha, a, b = model.r, model.alpha, model.a, model.b
    horizon = np.asarray(horizon, dtype=np.float64)
    first = (a + b + x - 1) / (a - 1)
    tail = 1 - ((alpha + t) / (alpha + t + horizon)) ** (r + x) * hyp2f1(
        r + x, b + x, a + b + x - 1, horizon / (alpha + t + horizon)
    )
    result: Array = first * tail / (1 + _death_odds(model, x, t_x, t))
    return result


def probability_alive(model: BgNbd, x: Array, t_x: Array, t: Array) -> Array:
    """P(alive | x, t_x, T) (paper's equation 11)."""
    result: Array = 1 / (1 + _death_odds(model, x, t_x, t))
    return result


def _death_odds(model: BgNbd, x: Array, t_x: Array, t: Array) -> Array:
    """The odds that a customer with these (x, t_x, T) has dropped out (0 without repeats);
    the common term of equations 10 and 11."""
    r, alpha, a, b = model.r, model.alpha, model.a, model.b
    odds: Array = np.where(x > 0, a / np.maximum(b + x - 1, 1e-300) * ((alpha + t) / (alpha + t_x)) ** (r + x), 0.0)
    return odds


def gamma_gamma_log_likelihood(params: Sequence[float] | Array, x: Array, m: Array) -> float:
    p, q, v = params
    terms = (
        gammaln(p * x + q)
        - gammaln(p * x)
        - gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(x * m + v)
    )
    return float(np.sum(terms))


def fit_gamma_gamma(x: Array, m: Array) -> GammaGamma | None:
    """Maximum-likelihood p, q, v on customers with a repeat purchase of positive value."""
    keep = (x > 0) & (m > 0)
    if keep.sum() < 2:
        return None
    xs, ms = x[keep], m[keep]

    def negative(log_params: Array) -> float:
        return -gamma_gamma_log_likelihood(np.exp(log_params), xs, ms)

    start = np.log(np.array([1.0, 2.0, float(np.mean(ms))]))
    result = minimize(negative, start, method="Nelder-Mead", options={"maxiter": 8000, "xatol": 1e-7, "fatol": 1e-9})
    p, q, v = (float(value) for value in np.exp(result.x))
    return GammaGamma(p=p, q=q, v=v, log_likelihood=-float(result.fun), customers=int(keep.sum()))


def expected_value(model: GammaGamma | None, x: Array, m: Array, fallback: float) -> Array:
    """E[value per purchase | x, m_x]; the population mean for customers without repeats.
    Without a model (too few repeat customers), `fallback` (the observed mean) for everyone."""
    if model is None or model.q <= 1:
        return np.full(len(x), fallback)
    population = model.p * model.v / (model.q - 1)
    conditional = (model.p * (model.v + x * m)) / (model.p * x + model.q - 1)
    result: Array = np.where(x > 0, conditional, population)
    return result


def discounted_clv(
    model: BgNbd, value: Array, x: Array, t_x: Array, t: Array, months: int, monthly_discount: float
) -> tuple[Array, Array]:
    """(expected purchases over `months`, CLV = sum over m of purchases in month m x value / (1 + d)^m)."""
    clv = np.zeros(len(x))
    previous = np.zeros(len(x))
    for month in range(1, months + 1):
        cumulative = expected_purchases(model, month * WEEKS_PER_MONTH, x, t_x, t)
        clv += (cumulative - previous) * value / (1 + monthly_discount) ** month
        previous = cumulative
    return previous, clv
