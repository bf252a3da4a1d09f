-- Orders at checkout, their refunds, the return window and the return policy.

ALTER TABLE programs
    ADD COLUMN return_window_days integer NOT NULL DEFAULT 14 CHECK (return_window_days BETWEEN 0 AND 365),
    ADD COLUMN return_policy text NOT NULL DEFAULT 'within_balance'
        CHECK (return_policy IN ('within_balance', 'allow_negative'));

-- A customer's debt (`owed`) is a debit-normal customer account: its balance is zero or
-- below. Every customer account stays on its normal side of zero.
ALTER TABLE accounts DROP CONSTRAINT accounts_balance_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_check
    CHECK (CASE normal_side WHEN 'credit' THEN balance >= 0 ELSE balance <= 0 END);

INSERT INTO accounts (program_id, code, customer_id, kind, unit, normal_side, balance)
SELECT c.program_id, 'customer:' || c.id || ':owed', c.id, 'owed', 'POINTS', 'debit', 0
  FROM customers c
ON CONFLICT (program_id, code) DO NOTHING;

-- An order as the shop sent it, with the award it earned. The ledger holds the points;
-- this row is the order's working state (what is still pending, what was refunded).
CREATE TABLE orders (
    program_id        text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    shop_id           text NOT NULL,
    id                text NOT NULL CHECK (length(id) BETWEEN 1 AND 200),
    customer_id       text NOT NULL,
    currency          text NOT NULL,
    placed_at         timestamptz NOT NULL,
    lines             jsonb NOT NULL,
    net               bigint NOT NULL CHECK (net >= 0),
    points            bigint NOT NULL CHECK (points >= 0),
    award             jsonb NOT NULL,
    award_entry_id    bigint,
    release_at        timestamptz NOT NULL,
    released_at       timestamptz,
    release_entry_id  bigint,
    refunded_net      bigint NOT NULL DEFAULT 0 CHECK (refunded_net >= 0 AND refunded_net <= net),
    clawed_back       bigint NOT NULL DEFAULT 0 CHECK (clawed_back >= 0 AND clawed_back <= points),
    created_at        timestamptz NOT NULL,
    PRIMARY KEY (program_id, shop_id, id),
    FOREIGN KEY (program_id, shop_id) REFERENCES shops (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, award_entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, release_entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX orders_customer ON orders (program_id, customer_id, placed_at);
-- the release job's queue: orders whose points are still pending, by when they are due
CREATE INDEX orders_release_due ON orders (program_id, release_at) WHERE released_at IS NULL;

CREATE TABLE refunds (
    program_id      text NOT NULL,
    shop_id         text NOT NULL,
    order_id        text NOT NULL,
    id              text NOT NULL CHECK (length(id) BETWEEN 1 AND 200),
    request         jsonb NOT NULL,
    refunded_net    bigint NOT NULL CHECK (refunded_net >= 0),
    points          bigint NOT NULL CHECK (points >= 0),
    from_pending    bigint NOT NULL CHECK (from_pending >= 0),
    from_available  bigint NOT NULL CHECK (from_available >= 0),
    owed            bigint NOT NULL CHECK (owed >= 0),
    forgiven        bigint NOT NULL CHECK (forgiven >= 0),
    entry_id        bigint,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (program_id, shop_id, order_id, id),
    FOREIGN KEY (program_id, shop_id, order_id) REFERENCES orders (program_id, shop_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    CHECK (points = from_pending + from_available + owed + forgiven)
);

CREATE TRIGGER refunds_append_only BEFORE UPDATE OR DELETE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER refunds_no_truncate BEFORE TRUNCATE ON refunds
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE ON orders TO loyalty_app;
        GRANT SELECT, INSERT ON refunds TO loyalty_app;
    END IF;
END
$$;
