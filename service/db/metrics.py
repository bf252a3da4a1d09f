"""SQL of the metrics: the rollups kept with each order and refund, and the queries that
read them (never the journal). Definitions: ../shared/METRICS.md."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service.domain.metrics import SEGMENTS, MetricSettings, Period, RefundEffect, RetentionCounts

# --- Rollups, maintained in the order's and the refund's transaction -------------------

_ADD_ORDER = """
WITH d AS (
    INSERT INTO customer_days AS cd (program_id, customer_id, day, purchases, net)
    SELECT $1, $2, ($3::timestamptz AT TIME ZONE p.time_zone)::date, 1, $4 FROM programs p WHERE p.id = $1
    ON CONFLICT (program_id, customer_id, day)
        DO UPDATE SET purchases = cd.purchases + 1, net = cd.net + EXCLUDED.net
    RETURNING day, purchases
), m AS (
    INSERT INTO customer_months AS cm (program_id, customer_id, month, purchases, net)
    SELECT $1, $2, date_trunc('month', day)::date, 1, $4 FROM d
    ON CONFLICT (program_id, customer_id, month)
        DO UPDATE SET purchases = cm.purchases + 1, net = cm.net + EXCLUDED.net
)
INSERT INTO customer_summaries AS s (program_id, customer_id, first_day, last_day, purchases, purchase_days, net)
SELECT $1, $2, day, day, 1, (purchases = 1)::int, $4 FROM d
ON CONFLICT (program_id, customer_id) DO UPDATE SET
    first_day = least(s.first_day, EXCLUDED.first_day),
    last_day = greatest(s.last_day, EXCLUDED.last_day),
    purchases = s.purchases + 1,
    purchase_days = s.purchase_days + EXCLUDED.purchase_days,
    net = s.net + EXCLUDED.net
"""


async def add_order(
    connection: asyncpg.Connection, program_id: str, customer_id: str, placed_at: datetime, net: int
) -> None:
    """Count a new order as a purchase on its local day, month and in the customer's summary."""
    await connection.execute(_ADD_ORDER, program_id, customer_id, placed_at, net)


_REFUND_DAY = """
WITH d AS (
    UPDATE customer_days SET purchases = purchases - $4::int, net = net - $5
     WHERE program_id = $1 AND customer_id = $2
       AND day = ($3::timestamptz AT TIME ZONE (SELECT time_zone FROM programs WHERE id = $1))::date
    RETURNING day, purchases
), m AS (
    UPDATE customer_months SET purchases = purchases - $4::int, net = net - $5
     WHERE program_id = $1 AND customer_id = $2 AND month = (SELECT date_trunc('month', day)::date FROM d)
)
UPDATE customer_summaries s SET purchases = s.purchases - $4::int, net = s.net - $5,
       purchase_days = s.purchase_days - (SELECT ($4::int = 1 AND purchases = 0)::int FROM d),
       first_day = x.first_day, last_day = x.last_day
  FROM (SELECT min(c.day) AS first_day, max(c.day) AS last_day FROM customer_days c CROSS JOIN d
         WHERE c.program_id = $1 AND c.customer_id = $2
           AND CASE WHEN c.day = d.day THEN d.purchases ELSE c.purchases END > 0) x
 WHERE s.program_id = $1 AND s.customer_id = $2
"""


async def apply_refund(
    connection: asyncpg.Connection, program_id: str, customer_id: str, placed_at: datetime, effect: RefundEffect
) -> None:
    """Lower the order's day by the refunded net; drop its purchase when it became fully refunded."""
    if not effect.net_delta and not effect.purchase_lost:
        return
    await connection.execute(
        _REFUND_DAY, program_id, customer_id, placed_at, int(effect.purchase_lost), effect.net_delta
    )


async def rebuild(connection: asyncpg.Connection, program_id: str) -> int:
    """Rebuild a program's rollups from its orders (the backfill); returns the customers."""
    rebuilt: int = await connection.fetchval("SELECT rebuild_metric_rollups($1)", program_id)
    return rebuilt


# --- Retention -------------------------------------------------------------------------

_RETENTION = """
WITH bounds AS (
    SELECT t, i FROM unnest($2::date[]) WITH ORDINALITY AS b(t, i)
), masks AS (
    SELECT cd.customer_id, bit_or(1::bigint << (b.i - 1)::int) AS m
      FROM customer_days cd JOIN bounds b ON cd.day >= b.t - $3::int AND cd.day < b.t
     WHERE cd.program_id = $1 AND cd.purchases > 0 AND cd.day >= $4 AND cd.day < $5
     GROUP BY cd.customer_id
), periods AS (
    SELECT n, s, e, si, ei
      FROM unnest($6::date[], $7::date[], $8::int[], $9::int[]) WITH ORDINALITY AS p(s, e, si, ei, n)
), flags AS (
    SELECT p.n, (k.m >> p.si) & 1 = 1 AS at_start, (k.m >> p.ei) & 1 = 1 AS at_end, s.first_day < p.s AS older
      FROM periods p CROSS JOIN masks k
      JOIN customer_summaries s ON s.program_id = $1 AND s.customer_id = k.customer_id
)
SELECT p.n,
       count(f.n) FILTER (WHERE f.at_start) AS b,
       count(f.n) FILTER (WHERE f.at_end) AS e,
       count(f.n) FILTER (WHERE f.at_start AND f.at_end) AS retained,
       count(f.n) FILTER (WHERE f.at_end AND NOT f.at_start AND f.older) AS reactivated,
       (SELECT count(*) FROM customer_summaries s
         WHERE s.program_id = $1 AND s.first_day BETWEEN p.s AND p.e) AS new
  FROM periods p LEFT JOIN flags f ON f.n = p.n
 GROUP BY p.n, p.s, p.e ORDER BY p.n
"""

_CHUNK = 30  # periods per query: at most 62 boundaries fit the bigint mask


async def retention_counts(
    connection: asyncpg.Connection, program_id: str, periods: Sequence[Period], window_days: int
) -> list[RetentionCounts]:
    """B, E, N, retained and reactivated of each period from the daily rollup, in one scan
    per 30 periods: each customer's activity at every boundary is one bit of a mask."""
    found: list[RetentionCounts] = []
    for first in range(0, len(periods), _CHUNK):
        chunk = periods[first : first + _CHUNK]
        boundaries = sorted({p.start for p in chunk} | {p.end + timedelta(days=1) for p in chunk})
        index = {day: i for i, day in enumerate(boundaries)}
        rows = await connection.fetch(
            _RETENTION,
            program_id,
            boundaries,
            window_days,
            boundaries[0] - timedelta(days=window_days),
            boundaries[-1],
            [p.start for p in chunk],
            [p.end for p in chunk],
            [index[p.start] for p in chunk],
            [index[p.end + timedelta(days=1)] for p in chunk],
        )
        found.extend(
            RetentionCounts(
                b=row["b"], e=row["e"], n=row["new"], retained=row["retained"], reactivated=row["reactivated"]
            )
            for row in rows
        )
    return found


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
    """Customers with a purchase to date and their net revenue (historical lifetime value)."""
    row = await connection.fetchrow(
        "SELECT count(*) AS customers, coalesce(sum(net), 0)::bigint AS net,"
        " percentile_disc(0.5) WITHIN GROUP (ORDER BY net) AS median"
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
    of each cohort with a purchase in each month up to `last`."""
    after = date(last.year + last.month // 12, last.month % 12 + 1, 1)
    sizes = await connection.fetch(
        "SELECT date_trunc('month', first_day)::date AS cohort, count(*) AS size FROM customer_summaries"
        " WHERE program_id = $1 AND first_day >= $2 AND first_day < $3 GROUP BY 1",
        program_id,
        first,
        after,
    )
    active = await connection.fetch(
        "SELECT date_trunc('month', s.first_day)::date AS cohort, m.month, count(*) AS active"
        " FROM customer_summaries s JOIN customer_months m"
        "   ON m.program_id = s.program_id AND m.customer_id = s.customer_id"
        " WHERE s.program_id = $1 AND s.first_day >= $2 AND s.first_day < $3"
        "   AND m.month < $3 AND m.purchases > 0 GROUP BY 1, 2",
        program_id,
        first,
        after,
    )
    return (
        {row["cohort"]: row["size"] for row in sizes},
        {(row["cohort"], row["month"]): row["active"] for row in active},
    )


# --- RFM -------------------------------------------------------------------------------


def _segment_case() -> str:
    """The SQL form of service.domain.metrics.SEGMENTS (first matching rule)."""
    arms = []
    for rule in SEGMENTS:
        condition = f"r BETWEEN {rule.r_min} AND {rule.r_max} AND f BETWEEN {rule.f_min} AND {rule.f_max}"
        condition += f" AND m >= {rule.m_min}"
        if rule.max_purchases is not None:
            condition += f" AND frequency <= {rule.max_purchases}"
        arms.append(f"WHEN {condition} THEN '{rule.name}'")
    return "CASE " + " ".join(arms) + " END"


_SCORED = f"""
WITH base AS (
    SELECT customer_id, ($2::date - last_day) AS recency, purchases AS frequency, net AS monetary
      FROM customer_summaries WHERE program_id = $1 AND purchases > 0
), total AS (SELECT count(*) AS n FROM base), ranked AS (
    SELECT b.*,
           least(5, 1 + 5 * (rank() OVER (ORDER BY recency DESC) - 1) / t.n) AS r,
           least(5, 1 + 5 * (rank() OVER (ORDER BY frequency) - 1) / t.n) AS f,
           least(5, 1 + 5 * (rank() OVER (ORDER BY monetary) - 1) / t.n) AS m
      FROM base b CROSS JOIN total t
), scored AS (SELECT ranked.*, {_segment_case()} AS segment FROM ranked)
"""


async def segment_sizes(connection: asyncpg.Connection, program_id: str, today: date) -> dict[str, int]:
    rows = await connection.fetch(
        _SCORED + "SELECT segment, count(*) AS size FROM scored GROUP BY segment", program_id, today
    )
    return {row["segment"]: row["size"] for row in rows}


async def rfm_page(
    connection: asyncpg.Connection, program_id: str, today: date, segment: str | None, after: str | None, limit: int
) -> list[asyncpg.Record]:
    """Scored customers by id after the cursor, of one segment or all."""
    rows: list[asyncpg.Record] = await connection.fetch(
        _SCORED + "SELECT customer_id, recency, frequency, monetary, r, f, m, segment FROM scored"
        " WHERE ($3::text IS NULL OR segment = $3) AND ($4::text IS NULL OR customer_id > $4)"
        " ORDER BY customer_id LIMIT $5",
        program_id,
        today,
        segment,
        after,
        limit,
    )
    return rows


# --- Upsell and cross-sell -------------------------------------------------------------

_UPSELL = """
WITH o AS (
    SELECT customer_id, lines,
           row_number() OVER (PARTITION BY customer_id ORDER BY placed_at, shop_id, id) AS k
      FROM orders WHERE program_id = $1 AND (refunded_net < net OR net = 0)
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
        " ON CONFLICT (program_id) DO UPDATE SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at",
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


_SIGNAL_STATE = {
    "complaint_opened": "open_complaints = array_append(array_remove(s.open_complaints, $3), $3)",
    "complaint_closed": "open_complaints = array_remove(s.open_complaints, $3)",
    "ticket_opened": "open_tickets = array_append(array_remove(s.open_tickets, $3), $3)",
    "ticket_closed": "open_tickets = array_remove(s.open_tickets, $3)",
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
    """Open or close a complaint or ticket, or keep the latest satisfaction score."""
    await connection.execute(
        "INSERT INTO customer_signal_states (program_id, customer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
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


_RISK_INPUTS = """
SELECT c.id AS customer_id, $2::date - s.last_day AS days_inactive,
       coalesce(cardinality(g.open_complaints), 0) AS open_complaints,
       coalesce(cardinality(g.open_tickets), 0) AS open_tickets, g.last_score
  FROM customers c
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
    rows: list[asyncpg.Record] = await connection.fetch(
        _RISK_INPUTS + " AND ($3::text IS NULL OR c.id > $3) ORDER BY c.id LIMIT $4",
        program_id,
        today,
        after,
        limit,
    )
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
   AND ($3::text IS NULL OR s.customer_id > $3)
 ORDER BY s.customer_id
"""


async def clv_summaries(
    connection: asyncpg.Connection, program_id: str, as_of: date, after: str | None = None, limit: int | None = None
) -> list[asyncpg.Record]:
    """Per customer: x (repeat purchase days), t_x and T in days, the mean repeat value."""
    query = _CLV_SUMMARY + (" LIMIT $4" if limit is not None else "")
    arguments: list[Any] = [program_id, as_of, after] + ([limit] if limit is not None else [])
    rows: list[asyncpg.Record] = await connection.fetch(query, *arguments)
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
