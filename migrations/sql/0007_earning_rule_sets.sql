-- Earning rules, versioned: each published set applies from its effective instant, so an
-- order is always computed with the rules in force when it was placed. Versions are never
-- changed or removed; a new version supersedes.
CREATE TABLE earning_rule_sets (
    program_id      text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    version         integer NOT NULL CHECK (version > 0),
    effective_from  timestamptz NOT NULL,
    rules           jsonb NOT NULL,
    published_by    text NOT NULL,
    published_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (program_id, version)
);
CREATE INDEX earning_rule_sets_in_force ON earning_rule_sets (program_id, effective_from DESC, version DESC);

CREATE TRIGGER earning_rule_sets_append_only BEFORE UPDATE OR DELETE ON earning_rule_sets
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT ON earning_rule_sets TO loyalty_app;
    END IF;
END
$$;
