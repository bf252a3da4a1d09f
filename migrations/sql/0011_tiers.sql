-- Tiers: the program's ladder, each customer's tier, temporary grants, and every change.

CREATE TABLE tier_configs (
    program_id  text PRIMARY KEY REFERENCES programs (id) ON DELETE RESTRICT,
    version     integer NOT NULL CHECK (version > 0),
    config      jsonb NOT NULL,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- earned_code moves by qualification; effective_code is the higher of it and any grant in
-- force. A tier is reviewed at review_at; a customer found short then keeps it until
-- grace_ends_at.
CREATE TABLE customer_tiers (
    program_id      text NOT NULL,
    customer_id     text NOT NULL,
    earned_code     text NOT NULL,
    effective_code  text NOT NULL,
    since           timestamptz NOT NULL,
    review_at       timestamptz,
    grace_ends_at   timestamptz,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (program_id, customer_id),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX customer_tiers_due ON customer_tiers (program_id, (coalesce(grace_ends_at, review_at)))
    WHERE review_at IS NOT NULL;

CREATE TABLE tier_grants (
    program_id   text NOT NULL,
    id           text NOT NULL,
    customer_id  text NOT NULL,
    tier_code    text NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL CHECK (ends_at > starts_at),
    reason       text NOT NULL,
    granted_by   text NOT NULL,
    closed_at    timestamptz,  -- set by the job once the end took effect
    PRIMARY KEY (program_id, id),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX tier_grants_customer ON tier_grants (program_id, customer_id, ends_at);
CREATE INDEX tier_grants_open ON tier_grants (program_id, ends_at) WHERE closed_at IS NULL;

CREATE TABLE tier_changes (
    program_id   text NOT NULL,
    id           text NOT NULL,
    customer_id  text NOT NULL,
    from_code    text,
    to_code      text NOT NULL,
    kind         text NOT NULL
        CHECK (kind IN ('upgrade', 'downgrade', 'grant', 'grant_ended', 'configuration', 'review_passed',
                        'grace_started')),
    cause        text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (program_id, id),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX tier_changes_customer ON tier_changes (program_id, customer_id, occurred_at, id);

CREATE TRIGGER tier_changes_append_only BEFORE UPDATE OR DELETE ON tier_changes
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE ON tier_configs, customer_tiers, tier_grants TO loyalty_app;
        GRANT SELECT, INSERT ON tier_changes TO loyalty_app;
    END IF;
END
$$;
