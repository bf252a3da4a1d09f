-- Rollups that let retention, cohorts and RFM read a few thousand rows instead of one or
-- more per customer: each customer's activity spells for the default 90-day window, and
-- counts of customers per day, per cohort month and per value. Kept in the transaction of
-- the order and of the refund (service/db/metric_rollups.py) as the difference of one
-- customer's contributions after and before; rebuilt by rebuild_metric_counts.
--
-- The counts are split in 16 shards by customer (metric_shard), so concurrent orders of
-- different customers rarely wait on the same count row; readers sum the shards.

CREATE FUNCTION metric_shard(customer_id text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (hashtext(customer_id) & 15)::smallint;

-- Net spend in bands of its two leading digits (0..99 exact, then 100-109 is 110,
-- 3500-3599 is 235, ...), ascending with the value; the RFM monetary histogram.
CREATE FUNCTION metric_net_band(net bigint) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN net < 100 THEN net::integer
                ELSE (length(net::text) - 2) * 100 + left(net::text, 2)::integer END;

-- The smallest net spend of a band.
CREATE FUNCTION metric_net_band_floor(band integer) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN band < 100 THEN band::bigint
                ELSE ((band % 100) * power(10::numeric, band / 100))::bigint END;

-- A customer is active at boundary t (window 90 days) when a spell has
-- active_from <= t < active_until: a run of purchase days each at most 90 days after the
-- one before gives [first day + 1, last day + 91). prev_* are the customer's previous spell.
CREATE TABLE customer_spells (
    program_id    text NOT NULL,
    customer_id   text NOT NULL,
    active_from   date NOT NULL,
    active_until  date NOT NULL,
    prev_from     date,
    prev_until    date,
    PRIMARY KEY (program_id, customer_id, active_from),
    CHECK (active_until > active_from),
    CHECK ((prev_from IS NULL) = (prev_until IS NULL)),
    CHECK (prev_until < active_from)
);
CREATE INDEX customer_spells_by_start ON customer_spells (program_id, active_from)
    INCLUDE (active_until, prev_from, prev_until, customer_id);

-- Per local day: spells starting and ending that day (window 90 days), customers whose first
-- and whose last purchase day it is.
CREATE TABLE metric_day_counts (
    program_id       text NOT NULL,
    day              date NOT NULL,
    shard            smallint NOT NULL,
    spells_started   integer NOT NULL,
    spells_ended     integer NOT NULL,
    first_purchases  integer NOT NULL,
    last_purchases   integer NOT NULL,
    PRIMARY KEY (program_id, day, shard)
);

-- Per cohort (month of the first purchase) and month: customers with a purchase that month.
CREATE TABLE metric_cohort_counts (
    program_id  text NOT NULL,
    cohort      date NOT NULL,
    month       date NOT NULL,
    shard       smallint NOT NULL,
    customers   integer NOT NULL,
    PRIMARY KEY (program_id, cohort, month, shard)
);

-- Customers with a purchase per number of purchases ('purchases') and per band of net
-- spend ('net_band').
CREATE TABLE metric_value_counts (
    program_id  text NOT NULL,
    measure     text NOT NULL CHECK (measure IN ('purchases', 'net_band')),
    value       bigint NOT NULL,
    shard       smallint NOT NULL,
    customers   integer NOT NULL,
    PRIMARY KEY (program_id, measure, value, shard)
);

-- The exact net spend at a position within a band (RFM's monetary cuts).
CREATE INDEX customer_summaries_net ON customer_summaries (program_id, net) WHERE purchases > 0;

-- Rebuild one program's spells and counts from its daily rollup and summaries.
CREATE FUNCTION rebuild_metric_counts(p_program text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    window_days CONSTANT integer := 90;  -- SPELL_WINDOW_DAYS in service/domain/metric_rollups.py
    rebuilt integer;
BEGIN
    DELETE FROM customer_spells WHERE program_id = p_program;
    DELETE FROM metric_day_counts WHERE program_id = p_program;
    DELETE FROM metric_cohort_counts WHERE program_id = p_program;
    DELETE FROM metric_value_counts WHERE program_id = p_program;
    INSERT INTO customer_spells (program_id, customer_id, active_from, active_until, prev_from, prev_until)
    SELECT p_program, customer_id, active_from, active_until,
           lag(active_from) OVER w, lag(active_until) OVER w
      FROM (SELECT customer_id, min(day) + 1 AS active_from, max(day) + window_days + 1 AS active_until
              FROM (SELECT customer_id, day, count(*) FILTER (WHERE gap) OVER (PARTITION BY customer_id ORDER BY day) AS run
                      FROM (SELECT customer_id, day,
                                   day - lag(day) OVER (PARTITION BY customer_id ORDER BY day) > window_days AS gap
                              FROM customer_days WHERE program_id = p_program AND purchases > 0) d) r
             GROUP BY customer_id, run) s
    WINDOW w AS (PARTITION BY customer_id ORDER BY active_from);
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    INSERT INTO metric_day_counts (program_id, day, shard, spells_started, spells_ended, first_purchases, last_purchases)
    SELECT p_program, day, shard, sum(started), sum(ended), sum(firsts), sum(lasts)
      FROM (SELECT active_from AS day, metric_shard(customer_id) AS shard, 1 AS started, 0 AS ended, 0 AS firsts, 0 AS lasts
              FROM customer_spells WHERE program_id = p_program
            UNION ALL
            SELECT active_until, metric_shard(customer_id), 0, 1, 0, 0 FROM customer_spells WHERE program_id = p_program
            UNION ALL
            SELECT first_day, metric_shard(customer_id), 0, 0, 1, 0
              FROM customer_summaries WHERE program_id = p_program AND purchases > 0
            UNION ALL
            SELECT last_day, metric_shard(customer_id), 0, 0, 0, 1
              FROM customer_summaries WHERE program_id = p_program AND purchases > 0) x
     GROUP BY day, shard;
    INSERT INTO metric_cohort_counts (program_id, cohort, month, shard, customers)
    SELECT p_program, date_trunc('month', s.first_day)::date, m.month, metric_shard(m.customer_id), count(*)
      FROM customer_months m
      JOIN customer_summaries s ON s.program_id = m.program_id AND s.customer_id = m.customer_id
     WHERE m.program_id = p_program AND m.purchases > 0
     GROUP BY 2, 3, 4;
    INSERT INTO metric_value_counts (program_id, measure, value, shard, customers)
    SELECT p_program, measure, value, shard, count(*)
      FROM (SELECT 'purchases' AS measure, purchases::bigint AS value, metric_shard(customer_id) AS shard
              FROM customer_summaries WHERE program_id = p_program AND purchases > 0
            UNION ALL
            SELECT 'net_band', metric_net_band(net), metric_shard(customer_id)
              FROM customer_summaries WHERE program_id = p_program AND purchases > 0) x
     GROUP BY 2, 3, 4;
    RETURN rebuilt;
END
$$;

-- The full rebuild now ends with the spells and counts: 0013's rebuild keeps its body under
-- the name rebuild_metric_rows, and rebuild_metric_rollups runs it, then the counts.
ALTER FUNCTION rebuild_metric_rollups(text) RENAME TO rebuild_metric_rows;
CREATE FUNCTION rebuild_metric_rollups(p_program text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    rebuilt integer := rebuild_metric_rows(p_program);
BEGIN
    PERFORM rebuild_metric_counts(p_program);
    RETURN rebuilt;
END
$$;

SELECT rebuild_metric_counts(id) FROM programs;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON customer_spells, metric_day_counts, metric_cohort_counts,
            metric_value_counts TO loyalty_app;
    END IF;
END
$$;
