"""BG/NBD and Gamma-Gamma fitted on the CDNOW sample (tests/data, from the `lifetimes`
package) against the published parameters."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from service.domain import clv

DATASETS = Path(__file__).parent.parent / "data"


def _summary() -> tuple[clv.Array, clv.Array, clv.Array]:
    with (DATASETS / "cdnow_customers_summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    columns = [np.array([float(row[name]) for row in rows]) for name in ("frequency", "recency", "T")]
    return columns[0], columns[1], columns[2]


def test_bgnbd_fit_on_cdnow_matches_the_paper() -> None:
    x, t_x, t = _summary()
    fit = clv.fit_bgnbd(x, t_x, t)
    # Fader, Hardie & Lee (2005): r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4
    assert (round(fit.r, 3), round(fit.alpha, 3), round(fit.a, 3), round(fit.b, 3)) == (0.243, 4.414, 0.793, 2.426)
    assert fit.log_likelihood == pytest.approx(-9582.4, abs=0.1)
    assert fit.customers == 2357
    # the paper's worked customer: x = 2, t_x = 30.43, T = 38.86; 39 weeks ahead ~ 1.226
    one = (np.array([2.0]), np.array([30.43]), np.array([38.86]))
    assert float(clv.expected_purchases(fit, 39.0, *one)[0]) == pytest.approx(1.226, abs=0.002)
    assert 0 < float(clv.probability_alive(fit, *one)[0]) < 1
    nobody = clv.probability_alive(fit, np.array([0.0]), np.array([0.0]), np.array([38.86]))
    assert float(nobody[0]) == 1.0  # no repeat purchase: BG/NBD cannot have seen a drop-out


def test_gamma_gamma_recovers_the_value_scale() -> None:
    rng = np.random.default_rng(7)
    p, q, v = 6.0, 4.0, 15.0
    customers = 3000
    nu = rng.gamma(q, 1 / v, customers)  # per-customer rate of the Gamma of spend
    x = rng.integers(1, 8, customers).astype(np.float64)
    m = np.array([rng.gamma(p, 1 / rate, int(n)).mean() for rate, n in zip(nu, x, strict=True)])
    fit = clv.fit_gamma_gamma(x, m)
    assert fit is not None
    assert fit.p * fit.v / (fit.q - 1) == pytest.approx(p * v / (q - 1), rel=0.1)
    assert clv.fit_gamma_gamma(np.array([0.0, 0.0]), np.array([0.0, 0.0])) is None


def test_discounted_clv_is_monthly_purchases_times_value_discounted() -> None:
    fit = clv.BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=0.0, customers=1)
    x, t_x, t = np.array([2.0]), np.array([30.43]), np.array([38.86])
    purchases, value = clv.discounted_clv(fit, np.array([100.0]), x, t_x, t, 3, 0.0)
    assert float(value[0]) == pytest.approx(100 * float(purchases[0]))
    _, discounted = clv.discounted_clv(fit, np.array([100.0]), x, t_x, t, 3, 0.05)
    months = [float(clv.expected_purchases(fit, k * clv.WEEKS_PER_MONTH, x, t_x, t)[0]) for k in range(4)]
    expected = sum((months[k] - months[k - 1]) * 100 / 1.05**k for k in range(1, 4))
    assert float(discounted[0]) == pytest.approx(expected)
