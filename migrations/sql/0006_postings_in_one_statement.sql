-- An entry's postings arrive in one INSERT statement, and never later: a posting added to
-- an entry that already had postings (committed or not, sealed or not) is refused at once.
-- Together with the per-entry check at COMMIT this keeps every entry balanced for good.
CREATE FUNCTION refuse_postings_added_later() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offending bigint;
BEGIN
    SELECT n.entry_id INTO offending
      FROM (SELECT program_id, entry_id, count(*) AS arriving FROM new_postings GROUP BY program_id, entry_id) AS n
     WHERE (SELECT count(*) FROM postings p WHERE p.program_id = n.program_id AND p.entry_id = n.entry_id)
           <> n.arriving
     LIMIT 1;
    IF offending IS NOT NULL THEN
        RAISE EXCEPTION 'entry % already has postings; an entry''s postings are written once, together',
            offending USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER postings_written_once AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_postings_added_later();
