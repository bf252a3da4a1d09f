-- The journal's checks, per statement where a statement can carry them, so that a batch of
-- entries pays for each check once instead of once per entry. Same guarantees, same errors
-- (SQLSTATE and message); `bench/instructions.py` counts what each entry costs.
--
-- 1. The keys of `lots` (to its entry and to its account) were foreign keys: per lot, two
--    queries that also KEY SHARE-locked the entry and the account. Entries and accounts are
--    never deleted (triggers refuse DELETE and TRUNCATE to everyone), so all a key still
--    guarded was that the row exists when the lot is written: one statement trigger checks
--    that for all the statement's lots, and a lot's entry and account never change.
-- 2. "Every posting names an account of the program in the account's own unit" moves from
--    the per-entry check at COMMIT to the postings' statement trigger (which already joins
--    each statement's postings to their entries): one join per statement.
-- 3. The per-entry check at COMMIT keeps what only COMMIT can see: the entry has at least
--    two postings and they sum to zero per unit. One aggregate without the accounts; the
--    per-unit sums are only grouped for an entry in more than one unit.
-- 4. The statement triggers look each row up by its key (scalar subqueries), so their plans
--    never scan `entries` (a hash join over a seq scan was the planner's choice while the
--    table was small).
-- 5. The accounts identity trigger runs only for an UPDATE that sets an identity column
--    (a balance update does not).

ALTER TABLE lots DROP CONSTRAINT lots_program_id_account_id_fkey;
ALTER TABLE lots DROP CONSTRAINT lots_program_id_entry_id_fkey;

CREATE FUNCTION check_lots_keys() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offending record;
BEGIN
    -- each lot's rows looked up by their keys (scalar subqueries: never a scan of the table)
    SELECT l.id, l.entry_id, l.account_id,
           (SELECT count(*) FROM entries AS e WHERE e.program_id = l.program_id AND e.id = l.entry_id) = 0 AS no_entry
      INTO offending
      FROM new_lots AS l
     WHERE (SELECT count(*) FROM entries AS e WHERE e.program_id = l.program_id AND e.id = l.entry_id) = 0
        OR (SELECT count(*) FROM accounts AS a WHERE a.program_id = l.program_id AND a.id = l.account_id) = 0
     LIMIT 1;
    IF offending.no_entry THEN
        RAISE EXCEPTION 'lot % names entry %, which does not exist', offending.id, offending.entry_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF offending.id IS NOT NULL THEN
        RAISE EXCEPTION 'lot % names account %, which does not exist', offending.id, offending.account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER lots_keys AFTER INSERT ON lots
    REFERENCING NEW TABLE AS new_lots
    FOR EACH STATEMENT EXECUTE FUNCTION check_lots_keys();

CREATE FUNCTION refuse_lot_owner_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.program_id, NEW.id, NEW.entry_id, NEW.account_id)
       IS DISTINCT FROM (OLD.program_id, OLD.id, OLD.entry_id, OLD.account_id) THEN
        RAISE EXCEPTION 'lot % keeps its entry and account', OLD.id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER lots_owner_fixed BEFORE UPDATE OF program_id, id, entry_id, account_id ON lots
    FOR EACH ROW EXECUTE FUNCTION refuse_lot_owner_change();

CREATE OR REPLACE FUNCTION refuse_postings_added_later() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offending record;
BEGIN
    -- one query over the statement's postings, entry by entry, each row looked up by its
    -- key (scalar subqueries: never a scan of a table)
    SELECT n.entry_id, n.orphan, n.misplaced INTO offending
      FROM (SELECT program_id, entry_id, count(*) AS arriving,
                   (SELECT count(*) FROM entries AS e WHERE e.program_id = p.program_id AND e.id = p.entry_id) = 0
                       AS orphan,
                   bool_or((SELECT count(*) FROM accounts AS a
                             WHERE a.program_id = p.program_id AND a.id = p.account_id AND a.unit = p.unit) = 0)
                       AS misplaced
              FROM new_postings AS p GROUP BY program_id, entry_id) AS n
     WHERE n.orphan OR n.misplaced
        OR (SELECT count(*) FROM postings AS p WHERE p.program_id = n.program_id AND p.entry_id = n.entry_id)
           <> n.arriving
     ORDER BY n.orphan DESC, n.misplaced
     LIMIT 1;
    IF offending.orphan THEN
        RAISE EXCEPTION 'postings name entry %, which does not exist', offending.entry_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF offending.misplaced THEN
        RAISE EXCEPTION 'entry % names an account that is not the program''s in that unit', offending.entry_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF offending.entry_id IS NOT NULL THEN
        RAISE EXCEPTION 'entry % already has postings; an entry''s postings are written once, together',
            offending.entry_id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION check_entry_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lines integer;
    total numeric;
    first_unit text;
    last_unit text;
    unbalanced text;
BEGIN
    SELECT count(*), sum(amount), min(unit), max(unit) INTO lines, total, first_unit, last_unit
      FROM postings WHERE program_id = NEW.program_id AND entry_id = NEW.id;
    IF lines < 2 THEN
        RAISE EXCEPTION 'entry % has % posting(s); an entry needs at least two', NEW.id, lines
            USING ERRCODE = 'check_violation';
    END IF;
    IF first_unit = last_unit THEN
        IF total <> 0 THEN
            unbalanced := first_unit || '=' || total;
        END IF;
    ELSE
        SELECT string_agg(per_unit.unit || '=' || per_unit.total, ', ' ORDER BY per_unit.unit) INTO unbalanced
          FROM (SELECT unit, sum(amount) AS total FROM postings
                 WHERE program_id = NEW.program_id AND entry_id = NEW.id
                 GROUP BY unit HAVING sum(amount) <> 0) AS per_unit;
    END IF;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'entry % does not balance: %', NEW.id, unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER accounts_identity_fixed ON accounts;
CREATE TRIGGER accounts_identity_fixed BEFORE UPDATE OF program_id, id, code, kind, unit, customer_id ON accounts
    FOR EACH ROW EXECUTE FUNCTION refuse_account_identity_change();
