-- The double-entry points ledger: accounts, entries, postings, lots, holds, hash chain.

ALTER TABLE programs
    ADD COLUMN expiry_policy text NOT NULL DEFAULT 'never'
        CHECK (expiry_policy IN ('never', 'days', 'end_of_month', 'end_of_year')),
    ADD COLUMN expiry_period integer NOT NULL DEFAULT 0 CHECK (expiry_period >= 0);

-- Accounts. Customer accounts keep a locked running balance that may never go below
-- zero; system accounts are hot (every award touches them), so they are never locked:
-- their balance is derived from their postings and `balance` stays NULL.
CREATE TABLE accounts (
    program_id      text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    id              bigint GENERATED ALWAYS AS IDENTITY,
    code            text NOT NULL,
    customer_id     text,
    kind            text NOT NULL,
    unit            text NOT NULL CHECK (unit IN ('POINTS', 'CREDIT')),
    normal_side     text NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    balance         bigint,
    version         bigint NOT NULL DEFAULT 0,
    last_posted_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (program_id, id),
    UNIQUE (program_id, code),
    UNIQUE (program_id, id, unit),
    UNIQUE (program_id, customer_id, kind),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    CHECK ((customer_id IS NULL) = (balance IS NULL)),
    CHECK (balance >= 0)
);

CREATE SEQUENCE entry_id_seq AS bigint;

CREATE TABLE entries (
    program_id         text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    id                 bigint NOT NULL DEFAULT nextval('entry_id_seq'),
    kind               text NOT NULL,
    posted_at          timestamptz NOT NULL,
    actor              text NOT NULL,
    reverses_entry_id  bigint,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (program_id, id),
    UNIQUE (program_id, reverses_entry_id),
    FOREIGN KEY (program_id, reverses_entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX entries_posted ON entries (program_id, posted_at, id);

CREATE TABLE postings (
    program_id       text NOT NULL,
    entry_id         bigint NOT NULL,
    line             smallint NOT NULL,
    account_id       bigint NOT NULL,
    unit             text NOT NULL,
    amount           bigint NOT NULL CHECK (amount <> 0),
    balance_after    bigint,
    account_version  bigint,
    posted_at        timestamptz NOT NULL,
    PRIMARY KEY (program_id, entry_id, line),
    FOREIGN KEY (program_id, entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, account_id, unit) REFERENCES accounts (program_id, id, unit) ON DELETE RESTRICT
);
CREATE INDEX postings_account ON postings (program_id, account_id, posted_at, entry_id)
    INCLUDE (amount, balance_after);

-- Lots: each credit to a customer account is a lot; debits consume the lots that expire
-- soonest. `remaining` is working state; lot_allocations is the immutable trail.
CREATE TABLE lots (
    program_id   text NOT NULL,
    id           bigint GENERATED ALWAYS AS IDENTITY,
    account_id   bigint NOT NULL,
    entry_id     bigint NOT NULL,
    amount       bigint NOT NULL CHECK (amount > 0),
    remaining    bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    earned_at    timestamptz NOT NULL,
    expires_at   timestamptz,
    PRIMARY KEY (program_id, id),
    FOREIGN KEY (program_id, account_id) REFERENCES accounts (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT
);
CREATE INDEX lots_open ON lots (program_id, account_id, expires_at NULLS LAST, id) WHERE remaining > 0;
CREATE INDEX lots_expiring ON lots (program_id, expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;

CREATE TABLE lot_allocations (
    program_id  text NOT NULL,
    entry_id    bigint NOT NULL,
    lot_id      bigint NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    PRIMARY KEY (program_id, entry_id, lot_id),
    FOREIGN KEY (program_id, entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, lot_id) REFERENCES lots (program_id, id) ON DELETE RESTRICT
);

-- Holds: two-phase redemption, resolved exactly once.
CREATE TABLE holds (
    program_id          text NOT NULL,
    id                  text NOT NULL,
    customer_id         text NOT NULL,
    unit                text NOT NULL,
    amount              bigint NOT NULL CHECK (amount > 0),
    captured            bigint NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= amount),
    status              text NOT NULL CHECK (status IN ('open', 'captured', 'voided', 'expired')),
    expires_at          timestamptz NOT NULL,
    authorize_entry_id  bigint NOT NULL,
    resolve_entry_id    bigint,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL,
    resolved_at         timestamptz,
    PRIMARY KEY (program_id, id),
    FOREIGN KEY (program_id, customer_id) REFERENCES customers (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, authorize_entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    FOREIGN KEY (program_id, resolve_entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT,
    CHECK ((status = 'open') = (resolve_entry_id IS NULL))
);
CREATE INDEX holds_open ON holds (program_id, expires_at) WHERE status = 'open';

-- Tamper evidence: entries wait in seal_queue until the sealer appends them to the
-- program's hash chain in batches, so the write path never waits on the chain.
CREATE TABLE seal_queue (
    program_id  text NOT NULL,
    entry_id    bigint NOT NULL,
    PRIMARY KEY (program_id, entry_id)
);

CREATE TABLE entry_seals (
    program_id  text NOT NULL,
    seq         bigint NOT NULL CHECK (seq > 0),
    entry_id    bigint NOT NULL,
    entry_hash  bytea NOT NULL,
    chain_hash  bytea NOT NULL,
    sealed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (program_id, seq),
    UNIQUE (program_id, entry_id),
    FOREIGN KEY (program_id, entry_id) REFERENCES entries (program_id, id) ON DELETE RESTRICT
);

-- The journal is append-only: the database refuses changes whoever asks.
CREATE FUNCTION refuse_journal_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER lot_allocations_append_only BEFORE UPDATE OR DELETE ON lot_allocations
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();
CREATE TRIGGER entry_seals_append_only BEFORE UPDATE OR DELETE ON entry_seals
    FOR EACH ROW EXECUTE FUNCTION refuse_journal_change();

-- Every entry balances per unit and has at least two postings, checked at COMMIT.
CREATE FUNCTION check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lines integer;
    unbalanced text;
BEGIN
    SELECT count(*) INTO lines FROM postings
     WHERE program_id = NEW.program_id AND entry_id = NEW.entry_id;
    IF lines < 2 THEN
        RAISE EXCEPTION 'entry % has % posting(s); an entry needs at least two', NEW.entry_id, lines
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT string_agg(unit || '=' || total, ', ') INTO unbalanced FROM (
        SELECT unit, sum(amount) AS total FROM postings
         WHERE program_id = NEW.program_id AND entry_id = NEW.entry_id
         GROUP BY unit HAVING sum(amount) <> 0
    ) AS sums;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'entry % does not balance: %', NEW.entry_id, unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER postings_balance AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION check_entry_balanced();

CREATE FUNCTION check_entry_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM postings WHERE program_id = NEW.program_id AND entry_id = NEW.id) THEN
        RAISE EXCEPTION 'entry % has no postings', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER entries_have_postings AFTER INSERT ON entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION check_entry_has_postings();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT ON entries, postings, lot_allocations, entry_seals TO loyalty_app;
        GRANT SELECT, INSERT, UPDATE ON accounts, lots, holds TO loyalty_app;
        GRANT SELECT, INSERT, DELETE ON seal_queue TO loyalty_app;
        GRANT USAGE ON SEQUENCE entry_id_seq TO loyalty_app;
    END IF;
END
$$;

-- Customers enrolled before the ledger existed get their accounts now.
INSERT INTO accounts (program_id, code, customer_id, kind, unit, normal_side, balance)
SELECT c.program_id, 'customer:' || c.id || ':' || k.kind, c.id, k.kind, k.unit, 'credit', 0
  FROM customers c
 CROSS JOIN (VALUES ('available', 'POINTS'), ('pending', 'POINTS'), ('held', 'POINTS'),
                    ('credit_available', 'CREDIT'), ('credit_held', 'CREDIT')) AS k (kind, unit);
