-- Lifecycle events: a transactional outbox, the append-only event log with a per-program
-- sequence (the pull feed's cursor), webhook endpoints and their deliveries.
--
-- The write path only appends to `event_outbox`, in the transaction of the change that
-- causes the event. The publisher (one per program at a time, on an advisory lock) moves
-- outbox rows into `events` in the order they became visible, numbering them `seq` 1, 2,
-- ..., and fans them out to the deliveries of matching endpoints. A sequence drawn in the
-- writing transactions would commit out of order, and a feed reader could skip a number
-- that commits late; numbering at publication makes the feed a gap-free prefix.
--
-- No foreign key to `programs` from the outbox: every order would share-lock the program
-- row (see 0003). The publisher copies rows of one program only.

CREATE SEQUENCE event_position_seq AS bigint;

CREATE TABLE event_outbox (
    program_id   text NOT NULL,
    id           text NOT NULL,
    position     bigint NOT NULL DEFAULT nextval('event_position_seq'),
    type         text NOT NULL,
    customer_id  text,
    payload      jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (program_id, id)
);
CREATE INDEX event_outbox_position ON event_outbox (program_id, position);

CREATE TABLE events (
    program_id    text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    seq           bigint NOT NULL CHECK (seq > 0),
    id            text NOT NULL,
    type          text NOT NULL,
    customer_id   text,
    payload       jsonb NOT NULL,
    occurred_at   timestamptz NOT NULL,
    published_at  timestamptz NOT NULL,
    PRIMARY KEY (program_id, seq),
    UNIQUE (program_id, id)
);
CREATE INDEX events_customer ON events (program_id, customer_id, seq) WHERE customer_id IS NOT NULL;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();

-- "Once" records of the lifecycle jobs: an event that must be emitted once per key
-- (points expiring on a date, a lapse, a cross-sell opportunity) is emitted in the
-- transaction that inserts its key.
CREATE TABLE event_marks (
    program_id  text NOT NULL,
    key         text NOT NULL CHECK (length(key) BETWEEN 1 AND 300),
    event_id    text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (program_id, key)
);

CREATE TABLE webhook_endpoints (
    program_id            text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    id                    text NOT NULL,
    url                   text NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    description           text NOT NULL DEFAULT '',
    event_types           text[] NOT NULL CHECK (cardinality(event_types) > 0),
    secret                text NOT NULL,
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,
    consecutive_failures  integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (program_id, id),
    CHECK (enabled OR disabled_reason IS NOT NULL)
);

CREATE TABLE webhook_deliveries (
    program_id        text NOT NULL,
    id                text NOT NULL,
    endpoint_id       text NOT NULL,
    event_id          text NOT NULL,
    event_seq         bigint NOT NULL,
    customer_id       text,
    status            text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   timestamptz NOT NULL,
    retry_from        timestamptz NOT NULL,  -- retries stop a bounded time after this
    claimed_until     timestamptz,           -- a dispatcher's lease while it sends
    claim             text,
    last_attempt_at   timestamptz,
    last_status_code  integer,
    last_error        text,
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (program_id, id),
    UNIQUE (program_id, endpoint_id, event_id),
    FOREIGN KEY (program_id, endpoint_id) REFERENCES webhook_endpoints (program_id, id) ON DELETE CASCADE,
    FOREIGN KEY (program_id, event_seq) REFERENCES events (program_id, seq) ON DELETE RESTRICT
);
-- the dispatcher's queue, and the per-customer order check (an earlier undelivered event)
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (program_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_customer ON webhook_deliveries (program_id, endpoint_id, customer_id, event_seq)
    WHERE status = 'pending';
-- the delivery log of an endpoint, newest first
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (program_id, endpoint_id, event_seq);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, DELETE ON event_outbox TO loyalty_app;
        GRANT USAGE ON SEQUENCE event_position_seq TO loyalty_app;
        GRANT SELECT, INSERT ON events, event_marks TO loyalty_app;
        GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, webhook_deliveries TO loyalty_app;
    END IF;
END
$$;
