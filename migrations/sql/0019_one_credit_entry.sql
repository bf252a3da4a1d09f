-- One credit-only entry of two postings (a grant: a customer account credited, a system
-- account debited), written by a handful of plain statements instead of the batch-shaped
-- CTE of append_credit_entries (migration 0010). For one entry, starting the executor for
-- that statement (some thirty plan nodes over unnest(...) of fifteen arrays) was about a
-- fifth of the call's server time, and encoding the arrays most of the client's.
--
-- It writes exactly what append_credit_entries writes for the same one entry, in the same
-- order: with p_claim the key's transaction lock (the same lock), the program's ledger
-- settings checked (LY001) and a used key answered with its record; then the customer
-- balance row updated (and so locked; the system account is not locked, nor read), the
-- entry's id drawn after that lock, the entry, its seal-queue row, its two postings in one
-- statement (the postings' statement trigger sees them together), its one lot, its
-- idempotency record (the same answer, byte for byte) and, given an event, its
-- `points.earned` in the outbox with the entry's id and posting time filled in (what the
-- caller's statement around append_credit_entries does). A missing customer account writes
-- nothing but, with a key, the refusal given. The entry's checks at COMMIT are the same
-- triggers.
--
-- Arguments as append_credit_entries's, for one entry, as scalars: the customer account's
-- code, its line (1 or 2: the system posting has the other) and the amount credited; the
-- system account's id, code and unit (the caller knows them: they are created with the
-- program and never change; the COMMIT check refuses an id that is not the program's in
-- that unit) and its amount. The event: id, type, customer id and payload (JSON text).
--
-- One row: the entry's id (NULL if not written), posted_at, the customer account's id and
-- balance_after (the system posting has no balance_after), and the record stored under
-- the key (or, with p_claim and a key already used, the record stored before).
CREATE FUNCTION append_credit_entry(
    p_program_id text,
    p_now timestamptz,
    p_kind text,
    p_actor text,
    p_metadata text,
    p_lot_expires_at timestamptz,
    p_account text,
    p_line smallint,
    p_amount bigint,
    p_system_id bigint,
    p_system_account text,
    p_system_unit text,
    p_system_amount bigint,
    p_key text DEFAULT NULL,
    p_fingerprint bytea DEFAULT NULL,
    p_refusal_status integer DEFAULT NULL,
    p_refusal_response bytea DEFAULT NULL,
    p_claim boolean DEFAULT false,
    p_time_zone text DEFAULT NULL,
    p_expiry_policy text DEFAULT NULL,
    p_expiry_period integer DEFAULT NULL,
    p_event_id text DEFAULT NULL,
    p_event_type text DEFAULT NULL,
    p_event_customer_id text DEFAULT NULL,
    p_event_payload text DEFAULT NULL
)
RETURNS TABLE (entry_id bigint, posted_at timestamptz, account_id bigint, balance_after bigint,
               fingerprint bytea, status_code integer, response bytea)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_account_id bigint;
    v_unit text;
    v_balance bigint;  -- after the credit
    v_version bigint;  -- after the credit
    v_posted_at timestamptz;
    v_entry_id bigint;
    v_system_line smallint := 3 - p_line;
    v_response bytea;
    v_stored record;
BEGIN
    IF p_line NOT IN (1, 2) OR p_account IS NULL OR p_system_id IS NULL THEN
        RAISE EXCEPTION 'append_credit_entry: arguments out of step' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF p_claim THEN
        IF p_key IS NULL THEN
            RAISE EXCEPTION 'claiming needs one idempotency key per entry' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended(p_program_id || '/' || p_key, 0));
        -- a fresh snapshot from here on (VOLATILE): what the lock holders committed is seen
        IF NOT EXISTS (SELECT FROM programs WHERE id = p_program_id AND time_zone = p_time_zone
                          AND expiry_policy = p_expiry_policy AND expiry_period = p_expiry_period) THEN
            RAISE EXCEPTION 'the ledger settings of program % are not the ones the entries were made with',
                p_program_id USING ERRCODE = 'LY001';
        END IF;
        SELECT i.fingerprint, i.status_code, i.response INTO v_stored
          FROM idempotency_keys AS i WHERE i.program_id = p_program_id AND i.key = p_key;
        IF FOUND THEN
            RETURN QUERY SELECT NULL::bigint, NULL::timestamptz, NULL::bigint, NULL::bigint,
                                v_stored.fingerprint, v_stored.status_code, v_stored.response;
            RETURN;
        END IF;
    END IF;

    -- the balance row, locked by its UPDATE; what the posting runs from is read after the lock
    UPDATE accounts AS a
       SET balance = a.balance + p_amount, version = a.version + 1,
           last_posted_at = greatest(p_now, a.last_posted_at)
     WHERE a.program_id = p_program_id AND a.code = p_account AND a.customer_id IS NOT NULL
    RETURNING a.id, a.unit, a.balance, a.version, a.last_posted_at
         INTO v_account_id, v_unit, v_balance, v_version, v_posted_at;
    IF v_account_id IS NULL THEN  -- no such customer account: refused
        IF p_key IS NOT NULL THEN
            INSERT INTO idempotency_keys (program_id, key, fingerprint, status_code, response)
            VALUES (p_program_id, p_key, p_fingerprint, p_refusal_status, p_refusal_response);
        END IF;
        RETURN QUERY SELECT NULL::bigint, NULL::timestamptz, NULL::bigint, NULL::bigint,
                            p_fingerprint, p_refusal_status, p_refusal_response;
        RETURN;
    END IF;
    v_entry_id := nextval('entry_id_seq');  -- drawn once the account is locked

    INSERT INTO entries (program_id, id, kind, posted_at, actor, reverses_entry_id, metadata)
    VALUES (p_program_id, v_entry_id, p_kind, v_posted_at, p_actor, NULL, p_metadata::jsonb);
    INSERT INTO seal_queue (program_id, entry_id) VALUES (p_program_id, v_entry_id);
    INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, balance_after,
                          account_version, posted_at)
    SELECT p_program_id, v_entry_id, x.line, x.account_id, x.unit, x.amount, x.balance_after, x.version, v_posted_at
      FROM (VALUES (p_line, v_account_id, v_unit, p_amount, v_balance, v_version),
                   (v_system_line, p_system_id, p_system_unit, p_system_amount, NULL::bigint, NULL::bigint))
           AS x (line, account_id, unit, amount, balance_after, version)
     ORDER BY x.line;
    INSERT INTO lots (program_id, entry_id, account_id, remaining, amount, earned_at, expires_at)
    VALUES (p_program_id, v_entry_id, v_account_id, p_amount, p_amount, p_now, p_lot_expires_at);

    IF p_key IS NOT NULL THEN
        v_response := convert_to(json_build_object(
            'id', v_entry_id,
            'kind', p_kind,
            'posted_at', to_char(v_posted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'actor', p_actor,
            'metadata', p_metadata::json,
            'reverses_entry_id', NULL,
            'postings', CASE WHEN p_line = 1
                THEN json_build_array(
                    json_build_object('line', p_line, 'account_id', v_account_id, 'account', p_account,
                                      'unit', v_unit, 'amount', p_amount, 'balance_after', v_balance),
                    json_build_object('line', v_system_line, 'account_id', p_system_id, 'account', p_system_account,
                                      'unit', p_system_unit, 'amount', p_system_amount, 'balance_after', NULL))
                ELSE json_build_array(
                    json_build_object('line', v_system_line, 'account_id', p_system_id, 'account', p_system_account,
                                      'unit', p_system_unit, 'amount', p_system_amount, 'balance_after', NULL),
                    json_build_object('line', p_line, 'account_id', v_account_id, 'account', p_account,
                                      'unit', v_unit, 'amount', p_amount, 'balance_after', v_balance))
                END
        )::text, 'UTF8');
        INSERT INTO idempotency_keys (program_id, key, fingerprint, status_code, response)
        VALUES (p_program_id, p_key, p_fingerprint, 200, v_response);
    END IF;

    IF p_event_id IS NOT NULL THEN
        INSERT INTO event_outbox (program_id, id, type, customer_id, payload, occurred_at)
        VALUES (p_program_id, p_event_id, p_event_type, p_event_customer_id,
                p_event_payload::jsonb || jsonb_build_object('entry_id', v_entry_id, 'available_from',
                    to_char(v_posted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
                v_posted_at);
    END IF;

    RETURN QUERY SELECT v_entry_id, v_posted_at, v_account_id, v_balance, p_fingerprint, 200, v_response;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT EXECUTE ON FUNCTION append_credit_entry(text, timestamptz, text, text, text, timestamptz, text,
            smallint, bigint, bigint, text, text, bigint, text, bytea, integer, bytea, boolean, text, text, integer,
            text, text, text, text) TO loyalty_app;
    END IF;
END
$$;
