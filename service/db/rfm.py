"""SQL of RFM (../shared/METRICS.md): the quintile cuts from the counts of customers per last
purchase day, purchases and band of net spend, then each customer's scores and segment from
the summaries in one pass, without ranking."""

from __future__ import annotations

from datetime import date

import asyncpg

from service.domain.metrics import PURCHASES_CAP, SEGMENTS, RfmCuts, locate, quintile_cuts, quintile_positions

_NET_AT = """
SELECT (SELECT net FROM customer_summaries
         WHERE program_id = $1 AND purchases > 0 AND net >= metric_net_band_floor(t.band)
         ORDER BY net OFFSET t.position LIMIT 1) AS net
  FROM unnest($2::int[], $3::int[]) WITH ORDINALITY AS t(band, position, i) ORDER BY t.i
"""


async def load_cuts(connection: asyncpg.Connection, program_id: str) -> RfmCuts | None:
    """The cuts of the three scores; None when no customer has a purchase."""
    last_days = [
        (row["day"], row["customers"])
        for row in await connection.fetch(
            "SELECT day, sum(last_purchases)::int AS customers FROM metric_day_counts WHERE program_id = $1"
            " GROUP BY day HAVING sum(last_purchases) > 0 ORDER BY day",
            program_id,
        )
    ]
    if not last_days:
        return None
    values: dict[str, list[tuple[int, int]]] = {"purchases": [], "net_band": []}
    for row in await connection.fetch(
        "SELECT measure, value, sum(customers)::int AS customers FROM metric_value_counts WHERE program_id = $1"
        " GROUP BY measure, value HAVING sum(customers) > 0 ORDER BY measure, value",
        program_id,
    ):
        values[row["measure"]].append((row["value"], row["customers"]))
    customers = sum(count for _, count in last_days)
    located = [locate(values["net_band"], position) for position in quintile_positions(customers)]
    monetary = await connection.fetch(
        _NET_AT, program_id, [band for band, _ in located], [position for _, position in located]
    )
    return RfmCuts(
        customers=customers,
        recency=quintile_cuts(last_days),
        frequency=quintile_cuts(values["purchases"]),
        monetary=[row["net"] for row in monetary],
    )


def _score(column: str, parameter: str) -> str:
    """1 + the number of the four cuts in the array parameter the column is greater than."""
    return "(1" + "".join(f" + ({column} > ({parameter})[{i}])::int" for i in range(1, 5)) + ")"


_SCORES = (
    f"{_score('last_day', '$2::date[]')} AS r, {_score('purchases', '$3::bigint[]')} AS f,"
    f" {_score('net', '$4::bigint[]')} AS m"
)

_CELLS = f"""
SELECT r, f, m, least(frequency, $5) AS purchases, count(*) AS customers
  FROM (SELECT {_SCORES}, purchases AS frequency
          FROM customer_summaries WHERE program_id = $1 AND purchases > 0) x
 GROUP BY 1, 2, 3, 4
"""


async def score_cells(
    connection: asyncpg.Connection, program_id: str, cuts: RfmCuts
) -> list[tuple[int, int, int, int, int]]:
    """Customers per (R, F, M, purchases up to PURCHASES_CAP)."""
    rows = await connection.fetch(_CELLS, program_id, cuts.recency, cuts.frequency, cuts.monetary, PURCHASES_CAP)
    return [(row["r"], row["f"], row["m"], row["purchases"], row["customers"]) for row in rows]


def segment_case() -> str:
    """The SQL form of service.domain.metrics.SEGMENTS (first matching rule)."""
    arms = []
    for rule in SEGMENTS:
        condition = f"r BETWEEN {rule.r_min} AND {rule.r_max} AND f BETWEEN {rule.f_min} AND {rule.f_max}"
        condition += f" AND m >= {rule.m_min}"
        if rule.max_purchases is not None:
            condition += f" AND frequency <= {rule.max_purchases}"
        arms.append(f"WHEN {condition} THEN '{rule.name}'")
    return "CASE " + " ".join(arms) + " END"


_PAGE = f"""
SELECT customer_id, recency, frequency, monetary, r, f, m, segment
  FROM (SELECT x.*, {segment_case()} AS segment
          FROM (SELECT customer_id, $5::date - last_day AS recency, purchases AS frequency, net AS monetary, {_SCORES}
                  FROM customer_summaries
                 WHERE program_id = $1 AND purchases > 0 AND ($7::text IS NULL OR customer_id > $7)) x) y
 WHERE $6::text IS NULL OR segment = $6
 ORDER BY customer_id LIMIT $8
"""


async def rfm_page(
    connection: asyncpg.Connection,
    program_id: str,
    cuts: RfmCuts,
    today: date,
    segment: str | None,
    after: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Scored customers by id after the cursor, of one segment or all."""
    rows: list[asyncpg.Record] = await connection.fetch(
        _PAGE, program_id, cuts.recency, cuts.frequency, cuts.monetary, today, segment, after, limit
    )
    return rows
