-- One round trip where a batch needed two: take the idempotency keys' transaction locks in a
-- fixed order, then read the program and the keys already used. Inside a VOLATILE function
-- each statement takes a fresh snapshot, so the read sees what the lock holders committed.
CREATE FUNCTION lock_idempotency_keys(p_program_id text, p_keys text[])
RETURNS TABLE (time_zone text, expiry_policy text, expiry_period integer,
               key text, fingerprint bytea, status_code integer, response bytea)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(h)
       FROM (SELECT DISTINCT hashtextextended(p_program_id || '/' || k, 0) AS h
               FROM unnest(p_keys) AS k ORDER BY 1) AS ordered;
    RETURN QUERY
        SELECT p.time_zone, p.expiry_policy, p.expiry_period, i.key, i.fingerprint, i.status_code, i.response
          FROM programs p
          LEFT JOIN idempotency_keys i ON i.program_id = p.id AND i.key = ANY(p_keys)
         WHERE p.id = p_program_id;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT EXECUTE ON FUNCTION lock_idempotency_keys(text, text[]) TO loyalty_app;
    END IF;
END
$$;

-- The remaining journal tables refuse TRUNCATE too.
CREATE TRIGGER lot_allocations_no_truncate BEFORE TRUNCATE ON lot_allocations
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER entry_seals_no_truncate BEFORE TRUNCATE ON entry_seals
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();
