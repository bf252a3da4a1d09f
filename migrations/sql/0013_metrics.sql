-- Metrics read from rollups kept in the transaction of the order or the refund
-- (service/db/metrics.py), never from the journal. A purchase is an order not fully
-- refunded; its value is net - refunded_net. Days are local days in the program's zone.

-- One row per customer per local day with an order: purchases that day and their net.
-- A day whose orders were all fully refunded keeps its row with purchases = 0.
CREATE TABLE customer_days (
    program_id   text NOT NULL,
    customer_id  text NOT NULL,
    day          date NOT NULL,
    purchases    integer NOT NULL CHECK (purchases >= 0),
    net          bigint NOT NULL CHECK (net >= 0),
    PRIMARY KEY (program_id, customer_id, day)
);
CREATE INDEX customer_days_by_day ON customer_days (program_id, day) INCLUDE (customer_id, purchases, net);

-- The same by local calendar month (the first of the month), for cohorts.
CREATE TABLE customer_months (
    program_id   text NOT NULL,
    customer_id  text NOT NULL,
    month        date NOT NULL CHECK (extract(day FROM month) = 1),
    purchases    integer NOT NULL CHECK (purchases >= 0),
    net          bigint NOT NULL CHECK (net >= 0),
    PRIMARY KEY (program_id, customer_id, month)
);
CREATE INDEX customer_months_by_month ON customer_months (program_id, month) INCLUDE (customer_id, purchases);

-- One row per customer with an order: first and last purchase day (NULL while every
-- order is fully refunded), purchases, distinct purchase days and net spend.
CREATE TABLE customer_summaries (
    program_id     text NOT NULL,
    customer_id    text NOT NULL,
    first_day      date,
    last_day       date,
    purchases      integer NOT NULL CHECK (purchases >= 0),
    purchase_days  integer NOT NULL CHECK (purchase_days >= 0),
    net            bigint NOT NULL CHECK (net >= 0),
    PRIMARY KEY (program_id, customer_id),
    CHECK ((first_day IS NULL) = (purchases = 0))
);
CREATE INDEX customer_summaries_first ON customer_summaries (program_id, first_day);

-- Rebuild one program's rollups from its orders (the backfill of orders placed before
-- this migration, and a repair on demand).
CREATE FUNCTION rebuild_metric_rollups(p_program text) RETURNS integer LANGUAGE plpgsql AS $$
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
           count(*) FILTER (WHERE refunded_net < net OR net = 0), sum(net - refunded_net)
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

SELECT rebuild_metric_rollups(id) FROM programs;

-- Signals from shops and the support desk; open complaints and tickets are the opened
-- references without a later close.
CREATE TABLE customer_signals (
    program_id   text NOT NULL,
    id           text NOT NULL,
    customer_id  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('complaint_opened', 'complaint_closed', 'ticket_opened',
                                               'ticket_closed', 'satisfaction')),
    reference    text,
    score        integer CHECK (score BETWEEN 0 AND 10),
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (program_id, id),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    CHECK ((kind = 'satisfaction') = (score IS NOT NULL)),
    CHECK ((kind = 'satisfaction') = (reference IS NULL))
);
CREATE INDEX customer_signals_customer ON customer_signals (program_id, customer_id, occurred_at);

-- A customer's signal state: open complaints and tickets, the latest satisfaction score.
CREATE TABLE customer_signal_states (
    program_id       text NOT NULL,
    customer_id      text NOT NULL,
    open_complaints  text[] NOT NULL DEFAULT '{}',
    open_tickets     text[] NOT NULL DEFAULT '{}',
    last_score       integer,
    last_score_at    timestamptz,
    PRIMARY KEY (program_id, customer_id)
);

-- Per-program metric settings (retention target, churn-risk rules); defaults when absent.
CREATE TABLE metric_settings (
    program_id  text PRIMARY KEY REFERENCES programs (id) ON DELETE RESTRICT,
    settings    jsonb NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- The latest BG/NBD + Gamma-Gamma fit of a program, refreshed by the metrics job.
CREATE TABLE clv_fits (
    program_id  text PRIMARY KEY REFERENCES programs (id) ON DELETE RESTRICT,
    as_of       date NOT NULL,
    fit         jsonb NOT NULL,
    fitted_at   timestamptz NOT NULL
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON customer_days, customer_months, customer_summaries,
            customer_signal_states, metric_settings, clv_fits TO loyalty_app;
        GRANT SELECT, INSERT ON customer_signals TO loyalty_app;
    END IF;
END
$$;
