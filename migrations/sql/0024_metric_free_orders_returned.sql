-- A purchase is an order not fully refunded (../shared/METRICS.md). An order of net 0 (free
-- items, perhaps paid with points) has no value to refund: its refunds return items, as the
-- clawback measures them (service/domain/earning.py, Clawback.items), and it is fully
-- refunded once every item bought came back. 0013 kept every order of net 0 a purchase; the
-- refund hook (service/usecases/metrics.py, after_refund) now removes it with its last item,
-- and the rebuild and the sell rates use the same test, metric_purchase.

-- Whether an order is a purchase: net > 0 and not all of it refunded, or net 0 and not every
-- item returned (its refunds read by the refunds' primary key, only for an order of net 0).
CREATE FUNCTION metric_purchase(p_program text, p_shop text, p_order text, p_net bigint, p_refunded bigint,
                                p_lines jsonb) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN CASE WHEN p_net > 0 THEN p_refunded < p_net
                ELSE (SELECT coalesce(sum((l ->> 'quantity')::bigint), 0)
                        FROM refunds r CROSS JOIN LATERAL jsonb_array_elements(coalesce(r.request -> 'lines', '[]')) l
                       WHERE r.program_id = p_program AND r.shop_id = p_shop AND r.order_id = p_order)
                     < (SELECT sum((l ->> 'quantity')::bigint) FROM jsonb_array_elements(p_lines) l) END;

-- 0013's rebuild of the daily, monthly and summary rows, with the test above.
CREATE OR REPLACE FUNCTION rebuild_metric_rows(p_program text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    zone text;
    rebuilt integer;
BEGIN
    SELECT time_zone INTO zone FROM programs WHERE id = p_program;
    DELETE FROM customer_days WHERE program_id = p_program;
    DELETE FROM customer_months WHERE program_id = p_program;
    DELETE FROM customer_summaries WHERE program_id = p_program;
    INSERT INTO customer_days (program_id, customer_id, day, purchases, net)
    SELECT p_program, customer_id, (placed_at AT TIME ZONE zone)::date,
           count(*) FILTER (WHERE metric_purchase(program_id, shop_id, id, net, refunded_net, lines)),
           sum(net - refunded_net)
      FROM orders WHERE program_id = p_program GROUP BY 2, 3;
    INSERT INTO customer_months (program_id, customer_id, month, purchases, net)
    SELECT p_program, customer_id, date_trunc('month', day)::date, sum(purchases), sum(net)
      FROM customer_days WHERE program_id = p_program GROUP BY 2, 3;
    INSERT INTO customer_summaries (program_id, customer_id, first_day, last_day, purchases, purchase_days, net)
    SELECT p_program, customer_id, min(day) FILTER (WHERE purchases > 0), max(day) FILTER (WHERE purchases > 0),
           sum(purchases), count(*) FILTER (WHERE purchases > 0), sum(net)
      FROM customer_days WHERE program_id = p_program GROUP BY 2;
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    RETURN rebuilt;
END
$$;

-- Repair the programs with an order of net 0 whose every item came back (found from the
-- refunds, far fewer than the orders).
SELECT rebuild_metric_rollups(program_id)
  FROM (SELECT DISTINCT o.program_id
          FROM refunds r
          JOIN orders o ON o.program_id = r.program_id AND o.shop_id = r.shop_id AND o.id = r.order_id
         WHERE o.net = 0 AND NOT metric_purchase(o.program_id, o.shop_id, o.id, o.net, o.refunded_net, o.lines)) x;
