"""SQL of the metrics rollups, kept in the order's and the refund's transaction: the daily,
monthly and summary rows of the customer, then the spells and counts by the difference of
the customer's contributions (service.domain.metric_rollups). Definitions: ../shared/METRICS.md."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from service.domain.metric_rollups import RollupChange

_BEFORE = """
before AS (
    SELECT coalesce(array_agg(day ORDER BY day), '{}') AS days FROM customer_days
     WHERE program_id = $1 AND customer_id = $2 AND purchases > 0
)"""

_ADD_ORDER = f"""
WITH {_BEFORE}, z AS (
    SELECT time_zone FROM programs WHERE id = $1
), d AS (
    INSERT INTO customer_days AS cd (program_id, customer_id, day, purchases, net)
    SELECT $1, $2, ($3::timestamptz AT TIME ZONE z.time_zone)::date, 1, $4 FROM z
    ON CONFLICT (program_id, customer_id, day)
        DO UPDATE SET purchases = cd.purchases + 1, net = cd.net + EXCLUDED.net
    RETURNING day, purchases
), m AS (
    INSERT INTO customer_months AS cm (program_id, customer_id, month, purchases, net)
    SELECT $1, $2, date_trunc('month', day)::date, 1, $4 FROM d
    ON CONFLICT (program_id, customer_id, month)
        DO UPDATE SET purchases = cm.purchases + 1, net = cm.net + EXCLUDED.net
), s AS (
    INSERT INTO customer_summaries AS s (program_id, customer_id, first_day, last_day, purchases, purchase_days, net)
    SELECT $1, $2, day, day, 1, (purchases = 1)::int, $4 FROM d
    ON CONFLICT (program_id, customer_id) DO UPDATE SET
        first_day = least(s.first_day, EXCLUDED.first_day),
        last_day = greatest(s.last_day, EXCLUDED.last_day),
        purchases = s.purchases + 1,
        purchase_days = s.purchase_days + EXCLUDED.purchase_days,
        net = s.net + EXCLUDED.net
    RETURNING purchases, net, last_day
), c AS (
    INSERT INTO churn_red_checks AS k (program_id, customer_id, last_day)
    SELECT $1, $2, s.last_day FROM s, z WHERE s.last_day < ($5::timestamptz AT TIME ZONE z.time_zone)::date
    ON CONFLICT (program_id, customer_id) DO UPDATE SET last_day = EXCLUDED.last_day
)
SELECT before.days, d.day, s.purchases, s.net FROM before, d, s
"""


async def add_order(
    connection: asyncpg.Connection, program_id: str, customer_id: str, placed_at: datetime, net: int, now: datetime
) -> asyncpg.Record:
    """Count a new order as a purchase on its local day, month and in the customer's summary;
    returns the purchase days before (`days`), the order's `day`, and the summary's
    `purchases` and `net` after. When the customer's last purchase day is then before the day
    of `now` (the order was backdated), the churn-risk round is told to look at them
    (`churn_red_checks`): its scan by day may have passed that day already."""
    row = await connection.fetchrow(_ADD_ORDER, program_id, customer_id, placed_at, net, now)
    assert row is not None
    return row


_REFUND_DAY = f"""
WITH {_BEFORE}, d AS (
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
           AND CASE WHEN c.day = d.day THEN d.purchases ELSE c.purchases END > 0) x,
       (SELECT last_day FROM customer_summaries WHERE program_id = $1 AND customer_id = $2) old
 WHERE s.program_id = $1 AND s.customer_id = $2
RETURNING (SELECT days FROM before) AS days, (SELECT day FROM d) AS day,
          (SELECT purchases FROM d) AS day_purchases, s.purchases, s.net, s.last_day,
          old.last_day AS last_day_before
"""


async def apply_refund(
    connection: asyncpg.Connection,
    program_id: str,
    customer_id: str,
    placed_at: datetime,
    net_delta: int,
    purchase_lost: bool,
) -> asyncpg.Record:
    """Lower the order's day, month and summary by the refunded net, and by its purchase when
    it became fully refunded; returns the purchase days before (`days`), the order's `day`
    and its purchases after (`day_purchases`), and the summary's `purchases` and `net` after."""
    row = await connection.fetchrow(_REFUND_DAY, program_id, customer_id, placed_at, int(purchase_lost), net_delta)
    assert row is not None
    if row["last_day"] is not None and row["last_day_before"] is not None and row["last_day"] < row["last_day_before"]:
        # the last purchase day moved back, maybe behind the churn-risk round's scan by day
        await connection.execute(
            "INSERT INTO churn_red_checks AS k (program_id, customer_id, last_day) VALUES ($1, $2, $3)"
            " ON CONFLICT (program_id, customer_id) DO UPDATE SET last_day = EXCLUDED.last_day",
            program_id,
            customer_id,
            row["last_day"],
        )
    return row


# The counts are written in one order (day counts, then cohort counts, then value counts,
# each by key) by every writer, so two orders of one shard never wait on each other in a
# cycle: each INSERT starts only once the one before has run (its one-time filter reads it).
_APPLY = """
WITH gone AS (
    DELETE FROM customer_spells WHERE program_id = $1 AND customer_id = $2 AND active_from = ANY($3::date[])
), kept AS (
    INSERT INTO customer_spells AS s (program_id, customer_id, active_from, active_until, prev_from, prev_until)
    SELECT $1, $2, f, u, pf, pu FROM unnest($4::date[], $5::date[], $6::date[], $7::date[]) AS x(f, u, pf, pu)
    ON CONFLICT (program_id, customer_id, active_from) DO UPDATE SET
        active_until = EXCLUDED.active_until, prev_from = EXCLUDED.prev_from, prev_until = EXCLUDED.prev_until
), days AS (
    INSERT INTO metric_day_counts AS c
        (program_id, day, shard, spells_started, spells_ended, first_purchases, last_purchases)
    SELECT $1, day, metric_shard($2), a, b, f, l
      FROM unnest($8::date[], $9::int[], $10::int[], $11::int[], $12::int[]) AS x(day, a, b, f, l)
     ORDER BY day
    ON CONFLICT (program_id, day, shard) DO UPDATE SET
        spells_started = c.spells_started + EXCLUDED.spells_started,
        spells_ended = c.spells_ended + EXCLUDED.spells_ended,
        first_purchases = c.first_purchases + EXCLUDED.first_purchases,
        last_purchases = c.last_purchases + EXCLUDED.last_purchases
    RETURNING 1
), cohorts AS (
    INSERT INTO metric_cohort_counts AS c (program_id, cohort, month, shard, customers)
    SELECT $1, cohort, month, metric_shard($2), n
      FROM unnest($13::date[], $14::date[], $15::int[]) AS x(cohort, month, n)
     WHERE (SELECT count(*) FROM days) >= 0
     ORDER BY cohort, month
    ON CONFLICT (program_id, cohort, month, shard) DO UPDATE SET customers = c.customers + EXCLUDED.customers
    RETURNING 1
)
INSERT INTO metric_value_counts AS c (program_id, measure, value, shard, customers)
SELECT $1, measure, value, metric_shard($2), sum(n)
  FROM (SELECT CASE WHEN m = 'net' THEN 'net_band' ELSE m END AS measure,
               CASE WHEN m = 'net' THEN metric_net_band(v) ELSE v END AS value, n
          FROM unnest($16::text[], $17::bigint[], $18::int[]) AS x(m, v, n)) x
 WHERE (SELECT count(*) FROM cohorts) >= 0
 GROUP BY measure, value HAVING sum(n) <> 0
 ORDER BY measure, value
ON CONFLICT (program_id, measure, value, shard) DO UPDATE SET customers = c.customers + EXCLUDED.customers
"""


async def apply_change(connection: asyncpg.Connection, program_id: str, customer_id: str, change: RollupChange) -> None:
    """Write one customer's spells and move the counts by the change, in one statement."""
    if change.empty:
        return
    spells, days = change.written_spells, change.days
    await connection.execute(
        _APPLY,
        program_id,
        customer_id,
        list(change.removed_spells),
        [s.active_from for s in spells],
        [s.active_until for s in spells],
        [s.prev_from for s in spells],
        [s.prev_until for s in spells],
        [d.day for d in days],
        [d.spells_started for d in days],
        [d.spells_ended for d in days],
        [d.first_purchases for d in days],
        [d.last_purchases for d in days],
        [c[0] for c in change.cohorts],
        [c[1] for c in change.cohorts],
        [c[2] for c in change.cohorts],
        [v[0] for v in change.values],
        [v[1] for v in change.values],
        [v[2] for v in change.values],
    )


async def rebuild(connection: asyncpg.Connection, program_id: str) -> int:
    """Rebuild a program's rollups from its orders (the backfill); returns the customers."""
    rebuilt: int = await connection.fetchval("SELECT rebuild_metric_rollups($1)", program_id)
    # the summaries' last purchase days may have moved anywhere: the churn-risk round reads
    # every day again once (it emits nothing twice: its marks decide)
    await connection.execute("DELETE FROM churn_red_progress WHERE program_id = $1", program_id)
    return rebuilt
