"""SQL of retention (../shared/METRICS.md): B, E, N, retained and reactivated per period,
from the activity spells and day counts for the spell window, from a scan of the daily
rollup for any other window."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from service.domain.metric_rollups import SPELL_WINDOW_DAYS
from service.domain.metrics import Period, RetentionCounts


async def retention_counts(
    connection: asyncpg.Connection, program_id: str, periods: Sequence[Period], window_days: int
) -> list[RetentionCounts]:
    """The counts of each period: from the spells when they serve the window, else a scan."""
    if window_days == SPELL_WINDOW_DAYS:
        return await spell_retention_counts(connection, program_id, periods)
    return await scanned_retention_counts(connection, program_id, periods, window_days)


# Per period [s, e] with u = e + 1. B and E are the spells covering s and u, from the day
# counts (started minus ended up to the boundary); N the first purchase days in [s, e]. The
# spells covering both s and u are B minus the spells covering s that end in (s, u]: those
# ending in (s, u] less those that start after s and end by u (`inside`). The rest of E are
# the spells starting in (s, u] that still cover u, counted from the index by start: a first
# spell is new, one whose previous spell ended by s is reactivated (`lapsed`), one whose
# previous spell covers s is retained (`kept`); when the previous spell itself started in
# the period (periods longer than the window + 2 days), the customer's last spell starting
# by s decides (`*_long`; none: new).
_LAST_BY_START = """(SELECT x.active_until FROM customer_spells x
     WHERE x.program_id = $1 AND x.customer_id = y.customer_id AND x.active_from <= p.s
     ORDER BY x.active_from DESC LIMIT 1)"""  # the end of the customer's last spell starting by s

_SPELLS = f"""
WITH periods AS (
    SELECT n, s, u FROM unnest($2::date[], $3::date[]) WITH ORDINALITY AS p(s, u, n)
), days AS (
    SELECT day, sum(spells_started - spells_ended) AS active, sum(spells_ended) AS ended,
           sum(first_purchases) AS firsts
      FROM metric_day_counts WHERE program_id = $1 AND day <= $4 GROUP BY day
), counted AS (
    SELECT p.n,
           coalesce(sum(d.active) FILTER (WHERE d.day <= p.s), 0)::bigint AS b,
           coalesce(sum(d.active) FILTER (WHERE d.day <= p.u), 0)::bigint AS e,
           coalesce(sum(d.ended) FILTER (WHERE d.day > p.s AND d.day <= p.u), 0)::bigint AS ended,
           coalesce(sum(d.firsts) FILTER (WHERE d.day >= p.s AND d.day < p.u), 0)::bigint AS new
      FROM periods p LEFT JOIN days d ON true GROUP BY p.n
), kinds AS (  -- per period, so each is one aggregate over its index range (no sort)
    SELECT p.n, k.*
      FROM periods p CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE y.active_until <= p.u) AS inside,
               count(*) FILTER (WHERE y.active_until > p.u AND y.prev_until <= p.s) AS lapsed,
               count(*) FILTER (WHERE y.active_until > p.u AND y.prev_until > p.s AND y.prev_from <= p.s) AS kept,
               count(*) FILTER (WHERE CASE WHEN y.active_until > p.u AND y.prev_from > p.s
                                           THEN {_LAST_BY_START} > p.s END) AS kept_long,
               count(*) FILTER (WHERE CASE WHEN y.active_until > p.u AND y.prev_from > p.s
                                           THEN {_LAST_BY_START} <= p.s END) AS lapsed_long
          FROM customer_spells y
         WHERE y.program_id = $1 AND y.active_from > p.s AND y.active_from <= p.u
      ) k
)
SELECT c.b, c.e, c.new, c.b - c.ended + k.inside + k.kept + k.kept_long AS retained,
       k.lapsed + k.lapsed_long AS reactivated
  FROM counted c JOIN kinds k USING (n) ORDER BY c.n
"""


async def spell_retention_counts(
    connection: asyncpg.Connection, program_id: str, periods: Sequence[Period]
) -> list[RetentionCounts]:
    """The counts of each period for the spell window (SPELL_WINDOW_DAYS), in one query."""
    ends = [p.end + timedelta(days=1) for p in periods]
    rows = await connection.fetch(_SPELLS, program_id, [p.start for p in periods], ends, max(ends))
    return [
        RetentionCounts(b=row["b"], e=row["e"], n=row["new"], retained=row["retained"], reactivated=row["reactivated"])
        for row in rows
    ]


_SCANNED = """
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


async def scanned_retention_counts(
    connection: asyncpg.Connection, program_id: str, periods: Sequence[Period], window_days: int
) -> list[RetentionCounts]:
    """B, E, N, retained and reactivated of each period, for any window, from the daily
    rollup in one scan per 30 periods: each customer's activity at every boundary is one
    bit of a mask."""
    found: list[RetentionCounts] = []
    for first in range(0, len(periods), _CHUNK):
        chunk = periods[first : first + _CHUNK]
        boundaries = sorted({p.start for p in chunk} | {p.end + timedelta(days=1) for p in chunk})
        index = {day: i for i, day in enumerate(boundaries)}
        rows = await connection.fetch(
            _SCANNED,
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
