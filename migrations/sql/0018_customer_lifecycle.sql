-- The lifecycle rollup: one row per customer with an order, written by the very statement
-- that stores the order (service/db/orders.py, insert_order), so the lifecycle jobs
-- (service/usecases/lifecycle.py) read the customers that are due through an index instead
-- of grouping every order of the program on every round.
--
-- `last_order_at` is the latest `placed_at` of the customer's orders and `orders` how many
-- there are, refunded or not: win-back is defined on the orders themselves (unlike
-- customer_summaries, whose last_day is a local day and leaves fully refunded orders out).
-- `category` is the one category of every line of every order so far, NULL once a second
-- one appeared (an order has at least one line).
--
-- `win_back_emitted_for` (the last_order_at whose lapse has had its win-back event) and
-- `cross_sell_emitted` are set by the jobs in the transaction that emits the event (or
-- finds its key already in event_marks). They only take a row out of the jobs' partial
-- indexes: event_marks, with the same keys as before, still makes each event once only.
-- No foreign keys, as for the metric rollups (0013): the order it follows has them.
CREATE TABLE customer_lifecycle (
    program_id            text NOT NULL,
    customer_id           text NOT NULL,
    last_order_at         timestamptz NOT NULL,
    orders                integer NOT NULL CHECK (orders > 0),
    category              text,
    win_back_emitted_for  timestamptz,
    cross_sell_emitted    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (program_id, customer_id)
);
-- Win-back candidates: customers whose current lapse has no event yet, by last order. The
-- job reads last_order_at <= cutoff: the customers due now, not the active ones above the
-- cutoff and not the lapsed ones already told (they left the index).
CREATE INDEX customer_lifecycle_win_back ON customer_lifecycle (program_id, last_order_at)
    WHERE win_back_emitted_for IS DISTINCT FROM last_order_at;
-- Cross-sell candidates: single-category customers without the event, by their orders. The
-- job reads orders >= the threshold.
CREATE INDEX customer_lifecycle_cross_sell ON customer_lifecycle (program_id, orders)
    WHERE category IS NOT NULL AND NOT cross_sell_emitted;

-- The jobs' candidates, read by key: through the partial indexes above, in index order,
-- with sorts and sequential scans off (as in 0014 and 0016), so the statistics of the
-- moment cannot turn a round into a read of the program's every customer.
CREATE FUNCTION lifecycle_win_back_due(p_program_id text, p_cutoff timestamptz, p_limit integer)
RETURNS TABLE (customer_id text, last_order_at timestamptz, orders integer, key text)
LANGUAGE sql STABLE
SET enable_sort = off
SET enable_seqscan = off
AS $$
    SELECT l.customer_id, l.last_order_at, l.orders,
           'win_back:' || l.customer_id || ':' || (extract(epoch FROM l.last_order_at) * 1000000)::bigint
      FROM customer_lifecycle l
     WHERE l.program_id = p_program_id AND l.last_order_at <= p_cutoff
       AND l.win_back_emitted_for IS DISTINCT FROM l.last_order_at
     ORDER BY l.last_order_at
     LIMIT p_limit;
$$;

CREATE FUNCTION lifecycle_cross_sell_due(p_program_id text, p_orders integer, p_limit integer)
RETURNS TABLE (customer_id text, category text, orders integer)
LANGUAGE sql STABLE
SET enable_sort = off
SET enable_seqscan = off
AS $$
    SELECT l.customer_id, l.category, l.orders
      FROM customer_lifecycle l
     WHERE l.program_id = p_program_id AND l.category IS NOT NULL AND NOT l.cross_sell_emitted
       AND l.orders >= p_orders
     ORDER BY l.orders
     LIMIT p_limit;
$$;

-- Rebuild one program's rollup from its orders and event_marks (the backfill of orders
-- placed before this migration, and a repair on demand: run it again after a deploy in
-- which an instance without the rollup kept storing orders). The marks' keys are those
-- the jobs emit under (service/usecases/lifecycle.py).
--
-- Safe while orders are being placed: it upserts row by row and merges with what is there
-- rather than deleting first (no lock on the whole program's rows, no duplicate key when a
-- new customer's first order commits meanwhile). The merge only moves each column the way
-- more orders would (the later last order, the larger count, a category only kept if both
-- agree), and the rows the jobs marked told stay told, so an order committed during the
-- rebuild is never undone by it.
CREATE FUNCTION rebuild_customer_lifecycle(p_program text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    rebuilt integer;
BEGIN
    INSERT INTO customer_lifecycle AS l
        (program_id, customer_id, last_order_at, orders, category, win_back_emitted_for, cross_sell_emitted)
    SELECT p_program, a.customer_id, a.last_order_at, a.orders, a.category,
           CASE WHEN EXISTS (SELECT FROM event_marks m WHERE m.program_id = p_program
                   AND m.key = 'win_back:' || a.customer_id || ':'
                               || (extract(epoch FROM a.last_order_at) * 1000000)::bigint)
                THEN a.last_order_at END,
           EXISTS (SELECT FROM event_marks m WHERE m.program_id = p_program
                   AND m.key = 'cross_sell:' || a.customer_id)
      FROM (SELECT o.customer_id, max(o.placed_at) AS last_order_at, count(*) AS orders,
                   CASE WHEN max(c.n) = 1 AND count(DISTINCT c.category) = 1 THEN min(c.category) END AS category
              FROM orders o
             CROSS JOIN LATERAL (SELECT count(DISTINCT l ->> 'category') AS n, min(l ->> 'category') AS category
                                   FROM jsonb_array_elements(o.lines) AS l) c
             WHERE o.program_id = p_program
             GROUP BY o.customer_id) a
    ON CONFLICT (program_id, customer_id) DO UPDATE SET
        last_order_at = greatest(l.last_order_at, EXCLUDED.last_order_at),
        orders = greatest(l.orders, EXCLUDED.orders),
        category = CASE WHEN l.category = EXCLUDED.category THEN l.category END,
        win_back_emitted_for = coalesce(EXCLUDED.win_back_emitted_for, l.win_back_emitted_for),
        cross_sell_emitted = l.cross_sell_emitted OR EXCLUDED.cross_sell_emitted;
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    RETURN rebuilt;
END
$$;

SELECT rebuild_customer_lifecycle(id) FROM programs;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON customer_lifecycle TO loyalty_app;
        GRANT EXECUTE ON FUNCTION lifecycle_win_back_due(text, timestamptz, integer),
            lifecycle_cross_sell_due(text, integer, integer), rebuild_customer_lifecycle(text) TO loyalty_app;
    END IF;
END
$$;
