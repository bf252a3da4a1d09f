"""SQL of the metrics: the queries that read the rollups (never the journal); the rollups
are kept by service/db/metric_rollups.py. Definitions: ../shared/METRICS.md."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec

from service.domain.metrics import MetricSettings, Period

# --- Repeat purchases and value --------------------------------------------------------

_REPEAT = """
SELECT count(*) AS customers,
       count(*) FILTER (WHERE purchases >= 2) AS repeat_by_purchases,
       count(*) FILTER (WHERE days >= 2) AS repeat_by_days,
       coalesce(sum(purchases), 0)::bigint AS purchases,
       coalesce(sum(days), 0)::bigint AS days,
       coalesce(sum(net), 0)::bigint AS net
  FROM (SELECT customer_id, sum(purchases) AS purchases, count(*) FILTER (WHERE purchases > 0) AS days,
               sum(net) AS net
          FROM customer_days WHERE program_id = $1 AND day BETWEEN $2 AND $3
         GROUP BY customer_id HAVING sum(purchases) > 0) c
"""


async def repeat_totals(connection: asyncpg.Connection, program_id: str, period: Period) -> asyncpg.Record:
    row = await connection.fetchrow(_REPEAT, program_id, period.start, period.end)
    assert row is not None
    return row


async def lifetime_totals(connection: asyncpg.Connection, program_id: str) -> asyncpg.Record:
    """Customers with a purchase to date, their net revenue (historical lifetime value) and its
    median (of an even count, halfway between the two middle customers)."""
    row = await connection.fetchrow(
        "SELECT count(*) AS customers, coalesce(sum(net), 0)::bigint AS net,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY net) AS median"
        " FROM customer_summaries WHERE program_id = $1 AND purchases > 0",
        program_id,
    )
    assert row is not None
    return row


# --- Cohorts ---------------------------------------------------------------------------


async def cohorts(
    connection: asyncpg.Connection, program_id: str, first: date, last: date
) -> tuple[dict[date, int], dict[tuple[date, date], int]]:
    """Cohort sizes by month of first purchase in [first, last] (months), and the customers
    of each cohort with a purchase in each month up to `last`, from the cohort counts."""
    after = date(last.year + last.month // 12, last.month % 12 + 1, 1)
    rows = await connection.fetch(
        "SELECT cohort, month, sum(customers) AS active FROM metric_cohort_counts"
        " WHERE program_id = $1 AND cohort >= $2 AND cohort < $3 AND month < $3"
        " GROUP BY cohort, month HAVING sum(customers) > 0",
        program_id,
        first,
        after,
    )
    active = {(row["cohort"], row["month"]): row["active"] for row in rows}
    return {cohort: count for (cohort, month), count in active.items() if cohort == month}, active


# --- Upsell and cross-sell -------------------------------------------------------------

_UPSELL = """
WITH o AS (
    SELECT customer_id, lines,
           row_number() OVER (PARTITION BY customer_id ORDER BY placed_at, shop_id, id) AS k
      FROM orders WHERE program_id = $1 AND metric_purchase(program_id, shop_id, id, net, refunded_net, lines)
), items AS (
    SELECT o.customer_id, o.k, l->>'category' AS category, (l->>'level')::numeric AS level
      FROM o CROSS JOIN LATERAL jsonb_array_elements(o.lines) AS l
), prior AS (
    SELECT customer_id, category, k, level,
           max(level) OVER (PARTITION BY customer_id, category ORDER BY k
                            RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before,
           min(k) OVER (PARTITION BY customer_id, category) AS first_k
      FROM items
)
SELECT (SELECT count(*) FROM (SELECT 1 FROM o GROUP BY customer_id HAVING count(*) >= 2) x) AS repeat_customers,
       (SELECT count(DISTINCT customer_id) FROM prior WHERE level > before) AS upsold,
       (SELECT count(DISTINCT customer_id) FROM prior WHERE first_k > 1) AS cross_sold
"""


async def upsell_totals(connection: asyncpg.Connection, program_id: str) -> asyncpg.Record:
    """Customers with 2+ purchases, upsold and cross-sold (from the orders' lines)."""
    row = await connection.fetchrow(_UPSELL, program_id)
    assert row is not None
    return row


# --- Settings --------------------------------------------------------------------------


async def load_settings(connection: asyncpg.Connection, program_id: str) -> MetricSettings:
    raw = await connection.fetchval("SELECT settings FROM metric_settings WHERE program_id = $1", program_id)
    return MetricSettings() if raw is None else msgspec.json.decode(raw, type=MetricSettings)


async def save_settings(
    connection: asyncpg.Connection, program_id: str, settings: MetricSettings, now: datetime
) -> None:
    await connection.execute(
        "INSERT INTO metric_settings (program_id, settings, updated_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (program_id) DO UPDATE SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at"
        " WHERE metric_settings.settings IS DISTINCT FROM EXCLUDED.settings",  # the same settings again: no change
        program_id,
        msgspec.json.encode(settings).decode(),
        now,
    )


# --- Customer signals and churn risk ---------------------------------------------------


async def customer_exists(connection: asyncpg.Connection, program_id: str, customer_id: str) -> bool:
    found: bool = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM customers WHERE program_id = $1 AND id = $2)", program_id, customer_id
    )
    return found


async def insert_signal(connection: asyncpg.Connection, program_id: str, values: dict[str, Any]) -> bool:
    """Store a signal once per id; False when the id was stored before (nothing changes)."""
    inserted = await connection.fetchval(
        "INSERT INTO customer_signals (program_id, id, customer_id, kind, reference, score, occurred_at, recorded_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (program_id, id) DO NOTHING RETURNING true",
        program_id,
        values["id"],
        values["customer_id"],
        values["kind"],
        values["reference"],
        values["score"],
        values["occurred_at"],
        values["recorded_at"],
    )
    return bool(inserted)


async def load_signal(connection: asyncpg.Connection, program_id: str, signal_id: str) -> asyncpg.Record:
    row = await connection.fetchrow(
        "SELECT id, customer_id, kind, reference, score, occurred_at, recorded_at FROM customer_signals"
        " WHERE program_id = $1 AND id = $2",
        program_id,
        signal_id,
    )
    assert row is not None
    return row


def _open_when_latest(column: str, thing: str) -> str:
    """The reference is in the column when its latest signal by occurred_at (then by arrival,
    a close before an open at the same instant) opened it: signals that arrive out of order
    leave the state the order they occurred in gives."""
    return (
        f"{column} = array_remove(s.{column}, $3) || CASE WHEN (SELECT x.kind FROM customer_signals x"
        f" WHERE x.program_id = $1 AND x.customer_id = $2 AND x.reference = $3"
        f" AND x.kind IN ('{thing}_opened', '{thing}_closed')"
        f" ORDER BY x.occurred_at DESC, x.recorded_at DESC, x.kind = '{thing}_closed' DESC LIMIT 1)"
        f" = '{thing}_opened' THEN ARRAY[$3] ELSE '{{}}'::text[] END"
    )


_SIGNAL_STATE = {
    "complaint_opened": _open_when_latest("open_complaints", "complaint"),
    "complaint_closed": _open_when_latest("open_complaints", "complaint"),
    "ticket_opened": _open_when_latest("open_tickets", "ticket"),
    "ticket_closed": _open_when_latest("open_tickets", "ticket"),
    "satisfaction": "last_score = CASE WHEN s.last_score_at IS NULL OR s.last_score_at <= $5 THEN $4"
    " ELSE s.last_score END, last_score_at = greatest(s.last_score_at, $5)",
}


async def apply_signal(
    connection: asyncpg.Connection,
    program_id: str,
    customer_id: str,
    kind: str,
    reference: str | None,
    score: int | None,
    occurred_at: datetime,
) -> None:
    """Open or close a complaint or ticket (from the signals stored so far, this one
    included), or keep the latest satisfaction score."""
    await connection.execute(
        "INSERT INTO customer_signal_states (program_id, customer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        program_id,
        customer_id,
    )
    # the customer's signals take turns here, so the update below (a statement of its own,
    # with a fresh snapshot) reads every signal committed before it
    await connection.execute(
        "SELECT FROM customer_signal_states WHERE program_id = $1 AND customer_id = $2 FOR UPDATE",
        program_id,
        customer_id,
    )
    await connection.execute(
        f"UPDATE customer_signal_states s SET {_SIGNAL_STATE[kind]}"
        " WHERE s.program_id = $1 AND s.customer_id = $2 AND ($3::text IS NULL OR true)"
        " AND ($4::int IS NULL OR true) AND ($5::timestamptz IS NULL OR true)",
        program_id,
        customer_id,
        reference,
        score,
        occurred_at,
    )


# inactive since the last purchase day, or since the local day of enrolment for a customer
# who never bought (a customer who joined yesterday has not been inactive for 60 days)
_RISK_INPUTS = """
SELECT c.id AS customer_id,
       $2::date - coalesce(s.last_day, (c.enrolled_at AT TIME ZONE p.time_zone)::date) AS days_inactive,
       s.last_day IS NULL AS never_bought,
       coalesce(cardinality(g.open_complaints), 0) AS open_complaints,
       coalesce(cardinality(g.open_tickets), 0) AS open_tickets, g.last_score
  FROM customers c
  JOIN programs p ON p.id = c.program_id
  LEFT JOIN customer_summaries s ON s.program_id = c.program_id AND s.customer_id = c.id
  LEFT JOIN customer_signal_states g ON g.program_id = c.program_id AND g.customer_id = c.id
 WHERE c.program_id = $1
"""


async def risk_groups(connection: asyncpg.Connection, program_id: str, today: date) -> list[asyncpg.Record]:
    """Customers grouped by what the risk rules look at, with how many share each."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT days_inactive, open_complaints, open_tickets, last_score, count(*) AS customers"
        f" FROM ({_RISK_INPUTS}) x GROUP BY 1, 2, 3, 4",
        program_id,
        today,
    )
    return rows


async def risk_inputs(
    connection: asyncpg.Connection, program_id: str, today: date, after: str | None, limit: int
) -> list[asyncpg.Record]:
    """What the risk rules look at, per customer by id after the cursor."""
    query = _RISK_INPUTS + " AND ($3::text IS NULL OR c.id > $3) ORDER BY c.id LIMIT $4"
    rows: list[asyncpg.Record] = await connection.fetch(query, program_id, today, after, limit)
    return rows


# --- Predicted lifetime value ----------------------------------------------------------

_CLV_SUMMARY = """
SELECT s.customer_id, s.purchase_days - 1 AS x, s.last_day - s.first_day AS t_x_days,
       $2::date - s.first_day AS t_days,
       CASE WHEN s.purchase_days > 1 THEN (s.net - d.net)::float8 / (s.purchase_days - 1) END AS mean_repeat,
       s.net::float8 / s.purchases AS mean_value
  FROM customer_summaries s
  JOIN customer_days d ON d.program_id = s.program_id AND d.customer_id = s.customer_id AND d.day = s.first_day
 WHERE s.program_id = $1 AND s.purchases > 0 AND s.first_day <= $2
 ORDER BY s.customer_id
"""


async def clv_summaries(connection: asyncpg.Connection, program_id: str, as_of: date) -> list[asyncpg.Record]:
    """Per customer: x (repeat purchase days), t_x and T in days, the mean repeat value."""
    rows: list[asyncpg.Record] = await connection.fetch(_CLV_SUMMARY, program_id, as_of)
    return rows


async def save_fit(connection: asyncpg.Connection, program_id: str, as_of: date, fit: bytes, now: datetime) -> None:
    await connection.execute(
        "INSERT INTO clv_fits (program_id, as_of, fit, fitted_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (program_id) DO UPDATE SET as_of = EXCLUDED.as_of, fit = EXCLUDED.fit,"
        " fitted_at = EXCLUDED.fitted_at",
        program_id,
        as_of,
        fit.decode(),
        now,
    )


async def load_fit(connection: asyncpg.Connection, program_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT as_of, fit, fitted_at FROM clv_fits WHERE program_id = $1", program_id
    )
    return row
