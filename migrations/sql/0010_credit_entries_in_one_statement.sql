-- Credit-only entries (grants: a customer account is credited, system accounts are debited)
-- in one call. Such an entry cannot overdraw and consumes no lots, so nothing has to be
-- decided between locking the balance and writing: the balance update, the entry, its
-- postings with balance_after, its lot, its seal-queue row and its idempotency record are
-- one statement, and with p_claim the idempotency keys are claimed (and used ones
-- replayed) in the same call. The caller (service/db/ledger.py) has validated each draft
-- and decided it is credit-only; the checks below back that up.
--
-- Arguments: per entry (1..n) its kind, actor, metadata (JSON text), lot expiry and which
-- of p_accounts (the distinct customer account codes of the call) it credits; per posting
-- (in entry order, then line order) its entry, line, account code, amount and, for a
-- posting on the customer account, that account's position in p_accounts; optionally per
-- entry an idempotency key, the request fingerprint and the refusal to remember if the
-- customer account does not exist (status and encoded problem). Everything is addressed
-- by position, so no plan depends on how many rows the arrays hold.
--
-- With p_claim (only in a transaction of its own, e.g. an autocommitted call): the keys'
-- transaction locks are taken in the same order as lock_idempotency_keys takes them, the
-- program's ledger settings must still be p_time_zone/p_expiry_policy/p_expiry_period
-- (the drafts' lot expiry was computed with them; SQLSTATE LY001 otherwise, and nothing is
-- written), and a key already used is answered with its record instead of being written.
--
-- One row per entry, in entry order: a written entry has its id, posted_at, the account
-- id and balance_after of each posting (by line) and, with keys, the record stored under
-- its key; an entry whose customer account does not exist has no id (and its remembered
-- refusal); with p_claim, a key already used has no id and the record stored before.
CREATE FUNCTION append_credit_entries(
    p_program_id text,
    p_now timestamptz,
    p_kinds text[],
    p_actors text[],
    p_metadata text[],
    p_lot_expires_at timestamptz[],
    p_entry_accounts integer[],
    p_accounts text[],
    p_posting_entries integer[],
    p_posting_lines smallint[],
    p_posting_accounts text[],
    p_posting_amounts bigint[],
    p_posting_customers integer[],
    p_keys text[] DEFAULT NULL,
    p_fingerprints bytea[] DEFAULT NULL,
    p_refusal_status integer[] DEFAULT NULL,
    p_refusal_responses bytea[] DEFAULT NULL,
    p_claim boolean DEFAULT false,
    p_time_zone text DEFAULT NULL,
    p_expiry_policy text DEFAULT NULL,
    p_expiry_period integer DEFAULT NULL
)
RETURNS TABLE (ord integer, entry_id bigint, posted_at timestamptz, account_ids bigint[],
               balances_after bigint[], fingerprint bytea, status_code integer, response bytea)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_entries integer := cardinality(p_kinds);
    v_skip boolean[] := array_fill(false, ARRAY[cardinality(p_kinds)]);  -- key already used
    v_entry_ids bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(p_kinds)]);
    -- the customer accounts, by position in p_accounts, as the UPDATE found them
    v_account_ids bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(p_accounts)]);
    v_units text[] := array_fill(NULL::text, ARRAY[cardinality(p_accounts)]);
    v_balances bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(p_accounts)]);
    v_versions bigint[] := array_fill(NULL::bigint, ARRAY[cardinality(p_accounts)]);
    v_posted_at timestamptz[] := array_fill(NULL::timestamptz, ARRAY[cardinality(p_accounts)]);
    v_system_codes text[];
    v_system_ids bigint[];
    v_system_units text[];
    v_row record;
BEGIN
    IF cardinality(p_actors) <> v_entries OR cardinality(p_metadata) <> v_entries
       OR cardinality(p_lot_expires_at) <> v_entries OR cardinality(p_entry_accounts) <> v_entries
       OR EXISTS (SELECT FROM unnest(p_posting_entries, p_posting_customers) AS x (entry, pos)
                   WHERE x.entry NOT BETWEEN 1 AND v_entries OR x.pos <> p_entry_accounts[x.entry]) THEN
        RAISE EXCEPTION 'append_credit_entries: arguments out of step' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF p_claim THEN
        IF cardinality(p_keys) IS DISTINCT FROM v_entries THEN
            RAISE EXCEPTION 'claiming needs one idempotency key per entry' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        PERFORM pg_advisory_xact_lock(h)
           FROM (SELECT DISTINCT hashtextextended(p_program_id || '/' || k, 0) AS h
                   FROM unnest(p_keys) AS k ORDER BY 1) AS ordered;
        -- a fresh snapshot from here on (VOLATILE): what the lock holders committed is seen
        IF NOT EXISTS (SELECT FROM programs WHERE id = p_program_id AND time_zone = p_time_zone
                          AND expiry_policy = p_expiry_policy AND expiry_period = p_expiry_period) THEN
            RAISE EXCEPTION 'the ledger settings of program % are not the ones the entries were made with',
                p_program_id USING ERRCODE = 'LY001';
        END IF;
        FOR v_row IN
            SELECT k.ord::integer AS ord, i.fingerprint, i.status_code, i.response
              FROM unnest(p_keys) WITH ORDINALITY AS k (key, ord)
              JOIN idempotency_keys AS i ON i.program_id = p_program_id AND i.key = k.key
        LOOP
            v_skip[v_row.ord] := true;
            RETURN QUERY SELECT v_row.ord, NULL::bigint, NULL::timestamptz, NULL::bigint[], NULL::bigint[],
                                v_row.fingerprint, v_row.status_code, v_row.response;
        END LOOP;
    END IF;

    -- Several customer accounts: lock them in id order first, as every writer does, so
    -- concurrent batches cannot deadlock. (One account is locked by its UPDATE.)
    IF cardinality(p_accounts) > 1 THEN
        PERFORM FROM accounts
          WHERE program_id = p_program_id AND customer_id IS NOT NULL AND code = ANY (p_accounts)
          ORDER BY id FOR NO KEY UPDATE;
    END IF;
    -- Credit each account what the batch credits it; the UPDATE reads the balance after
    -- the lock, and what it returns less the batch's credits is what the postings run from.
    FOR v_row IN
        UPDATE accounts AS a
           SET balance = a.balance + d.delta, version = a.version + d.postings,
               last_posted_at = greatest(p_now, a.last_posted_at)
          FROM (SELECT x.pos, sum(x.amount)::bigint AS delta, count(*)::bigint AS postings
                  FROM unnest(p_posting_entries, p_posting_customers, p_posting_amounts) AS x (entry, pos, amount)
                 WHERE x.pos IS NOT NULL AND NOT v_skip[x.entry]
                 GROUP BY x.pos) AS d
         WHERE a.program_id = p_program_id AND a.code = p_accounts[d.pos] AND a.customer_id IS NOT NULL
        RETURNING d.pos, a.id, a.unit, a.balance - d.delta AS balance, a.version - d.postings AS version,
                  a.last_posted_at AS posted_at
    LOOP
        v_account_ids[v_row.pos] := v_row.id;
        v_units[v_row.pos] := v_row.unit;
        v_balances[v_row.pos] := v_row.balance;
        v_versions[v_row.pos] := v_row.version;
        v_posted_at[v_row.pos] := v_row.posted_at;
    END LOOP;
    -- Entry ids, drawn once every account is locked, in entry order (an entry written after
    -- another on the same account has the higher id). No account, no entry: refused.
    FOR i IN 1 .. v_entries LOOP
        IF NOT v_skip[i] AND v_account_ids[p_entry_accounts[i]] IS NOT NULL THEN
            v_entry_ids[i] := nextval('entry_id_seq');
        END IF;
    END LOOP;
    SELECT array_agg(code), array_agg(id), array_agg(unit) INTO v_system_codes, v_system_ids, v_system_units
      FROM accounts WHERE program_id = p_program_id AND customer_id IS NULL;

    RETURN QUERY
    WITH b AS (  -- postings of the written entries; a customer balance runs in entry order
        SELECT x.entry, v_entry_ids[x.entry] AS entry_id, x.line, x.amount, x.n,
               coalesce(v_account_ids[x.pos], v_system_ids[array_position(v_system_codes, x.account)]) AS account_id,
               coalesce(p_accounts[x.pos], x.account) AS code,
               coalesce(v_units[x.pos], v_system_units[array_position(v_system_codes, x.account)]) AS unit,
               (v_balances[x.pos] + sum(x.amount) OVER running)::bigint AS balance_after,
               v_versions[x.pos] + count(*) OVER running AS account_version,
               v_posted_at[p_entry_accounts[x.entry]] AS posted_at
          FROM unnest(p_posting_entries, p_posting_lines, p_posting_accounts, p_posting_amounts, p_posting_customers)
               WITH ORDINALITY AS x (entry, line, account, amount, pos, n)
         WHERE v_entry_ids[x.entry] IS NOT NULL
        WINDOW running AS (PARTITION BY x.pos ORDER BY x.n ROWS UNBOUNDED PRECEDING)
    ), new_entries AS (
        INSERT INTO entries (program_id, id, kind, posted_at, actor, reverses_entry_id, metadata)
        SELECT p_program_id, v_entry_ids[i], p_kinds[i], v_posted_at[p_entry_accounts[i]], p_actors[i], NULL,
               p_metadata[i]::jsonb
          FROM generate_subscripts(p_kinds, 1) AS i WHERE v_entry_ids[i] IS NOT NULL
    ), queued AS (
        INSERT INTO seal_queue (program_id, entry_id)
        SELECT p_program_id, v_entry_ids[i] FROM generate_subscripts(p_kinds, 1) AS i WHERE v_entry_ids[i] IS NOT NULL
    ), new_postings AS (
        INSERT INTO postings (program_id, entry_id, line, account_id, unit, amount, balance_after,
                              account_version, posted_at)
        SELECT p_program_id, b.entry_id, b.line, b.account_id, b.unit, b.amount, b.balance_after,
               b.account_version, b.posted_at
          FROM b ORDER BY b.n
    ), new_lots AS (  -- the one lot of each entry: what it credits, earned now
        INSERT INTO lots (program_id, entry_id, account_id, remaining, amount, earned_at, expires_at)
        SELECT p_program_id, b.entry_id, v_account_ids[p_entry_accounts[b.entry]], sum(b.amount), sum(b.amount),
               p_now, p_lot_expires_at[b.entry]
          FROM b WHERE b.balance_after IS NOT NULL
         GROUP BY b.entry, b.entry_id ORDER BY b.entry_id
    ), outcomes AS (
        SELECT b.entry AS ord, b.entry_id, min(b.posted_at) AS posted_at,
               array_agg(b.account_id ORDER BY b.line) AS account_ids,
               array_agg(b.balance_after ORDER BY b.line) AS balances_after,
               p_fingerprints[b.entry] AS fingerprint, 200 AS status_code,
               CASE WHEN p_keys IS NOT NULL THEN convert_to(json_build_object(
                   'id', b.entry_id,
                   'kind', p_kinds[b.entry],
                   'posted_at', to_char(min(b.posted_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'actor', p_actors[b.entry],
                   'metadata', p_metadata[b.entry]::json,
                   'reverses_entry_id', NULL,
                   'postings', json_agg(json_build_object(
                       'line', b.line, 'account_id', b.account_id, 'account', b.code, 'unit', b.unit,
                       'amount', b.amount, 'balance_after', b.balance_after) ORDER BY b.line)
                       FILTER (WHERE p_keys IS NOT NULL)  -- no answer to build without keys
               )::text, 'UTF8') END AS response
          FROM b GROUP BY b.entry, b.entry_id
        UNION ALL  -- refused: no such customer account
        SELECT i, NULL, NULL, NULL, NULL, p_fingerprints[i], p_refusal_status[i], p_refusal_responses[i]
          FROM generate_subscripts(p_kinds, 1) AS i WHERE NOT v_skip[i] AND v_entry_ids[i] IS NULL
    ), remembered AS (
        INSERT INTO idempotency_keys (program_id, key, fingerprint, status_code, response)
        SELECT p_program_id, p_keys[o.ord], o.fingerprint, o.status_code, o.response
          FROM outcomes AS o WHERE p_keys IS NOT NULL
    )
    SELECT o.ord::integer, o.entry_id, o.posted_at, o.account_ids, o.balances_after, o.fingerprint,
           o.status_code, o.response
      FROM outcomes AS o ORDER BY o.ord;
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT EXECUTE ON FUNCTION append_credit_entries(text, timestamptz, text[], text[], text[],
            timestamptz[], integer[], text[], integer[], smallint[], text[], bigint[], integer[], text[], bytea[],
            integer[], bytea[], boolean, text, text, integer) TO loyalty_app;
    END IF;
END
$$;

-- The function's statements address everything by position, so one plan fits every batch
-- size; without this each call would be planned anew (custom plans look cheaper for the
-- array sizes of the call), which costs more than the rest of a one-grant call.
ALTER FUNCTION append_credit_entries SET plan_cache_mode = force_generic_plan;

-- An entry is reversed at most once: only reversals need the unique index, so it holds
-- them alone and other entries (nearly all) are not indexed there at all.
ALTER TABLE entries DROP CONSTRAINT entries_program_id_reverses_entry_id_key;
CREATE UNIQUE INDEX entries_reversed_once ON entries (program_id, reverses_entry_id)
    WHERE reverses_entry_id IS NOT NULL;

-- The key from postings to their entry, checked by the statement-level trigger that already
-- looks at each INSERT's postings entry by entry (migration 0006), without a row lock: the
-- key took a KEY SHARE lock on the entry for every posting, one query per posting. Entries
-- are never deleted (the append-only triggers refuse DELETE and TRUNCATE to everyone, and
-- the app role has neither), so what the key guarded beyond that check cannot happen.
ALTER TABLE postings DROP CONSTRAINT postings_program_id_entry_id_fkey;

CREATE OR REPLACE FUNCTION refuse_postings_added_later() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offending record;
BEGIN
    SELECT n.entry_id, e.id IS NULL AS orphan INTO offending
      FROM (SELECT program_id, entry_id, count(*) AS arriving FROM new_postings GROUP BY program_id, entry_id) AS n
      LEFT JOIN entries AS e ON e.program_id = n.program_id AND e.id = n.entry_id
     WHERE e.id IS NULL
        OR (SELECT count(*) FROM postings p WHERE p.program_id = n.program_id AND p.entry_id = n.entry_id)
           <> n.arriving
     LIMIT 1;
    IF offending.orphan THEN
        RAISE EXCEPTION 'postings name entry %, which does not exist', offending.entry_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF offending.entry_id IS NOT NULL THEN
        RAISE EXCEPTION 'entry % already has postings; an entry''s postings are written once, together',
            offending.entry_id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END
$$;

-- The per-entry check at COMMIT in one query instead of two: the same checks, in the same
-- order, with the same errors (at least two postings, every posting on an account of the
-- program in the account's unit, zero sum per unit).
CREATE OR REPLACE FUNCTION check_entry_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lines integer;
    unknown integer;
    unbalanced text;
BEGIN
    SELECT coalesce(sum(per_unit.lines), 0), coalesce(sum(per_unit.unknown), 0),
           string_agg(per_unit.unit || '=' || per_unit.total, ', ') FILTER (WHERE per_unit.total <> 0)
      INTO lines, unknown, unbalanced
      FROM (SELECT p.unit, count(*) AS lines, count(*) FILTER (WHERE a.id IS NULL) AS unknown,
                   sum(p.amount) AS total
              FROM postings p
              LEFT JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id AND a.unit = p.unit
             WHERE p.program_id = NEW.program_id AND p.entry_id = NEW.id
             GROUP BY p.unit) AS per_unit;
    IF lines < 2 THEN
        RAISE EXCEPTION 'entry % has % posting(s); an entry needs at least two', NEW.id, lines
            USING ERRCODE = 'check_violation';
    END IF;
    IF unknown > 0 THEN
        RAISE EXCEPTION 'entry % names an account that is not the program''s in that unit', NEW.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'entry % does not balance: %', NEW.id, unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
