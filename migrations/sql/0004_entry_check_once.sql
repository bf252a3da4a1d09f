-- Check each entry once at COMMIT instead of once per posting row: the per-row trigger ran
-- three queries for every posting. The per-entry check covers the same ground: at least two
-- postings, each on an account of the program in the account's unit, summing to zero per unit.
-- (Postings added to an entry later are refused by migration 0006.)

DROP TRIGGER postings_balance ON postings;
DROP FUNCTION check_entry_balanced();

CREATE OR REPLACE FUNCTION check_entry_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lines integer;
    unknown integer;
    unbalanced text;
BEGIN
    SELECT count(*), count(*) FILTER (WHERE a.id IS NULL) INTO lines, unknown
      FROM postings p
      LEFT JOIN accounts a ON a.program_id = p.program_id AND a.id = p.account_id AND a.unit = p.unit
     WHERE p.program_id = NEW.program_id AND p.entry_id = NEW.id;
    IF lines < 2 THEN
        RAISE EXCEPTION 'entry % has % posting(s); an entry needs at least two', NEW.id, lines
            USING ERRCODE = 'check_violation';
    END IF;
    IF unknown > 0 THEN
        RAISE EXCEPTION 'entry % names an account that is not the program''s in that unit', NEW.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT string_agg(unit || '=' || total, ', ') INTO unbalanced FROM (
        SELECT unit, sum(amount) AS total FROM postings
         WHERE program_id = NEW.program_id AND entry_id = NEW.id
         GROUP BY unit HAVING sum(amount) <> 0
    ) AS sums;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'entry % does not balance: %', NEW.id, unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
