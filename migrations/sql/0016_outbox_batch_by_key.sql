-- The publisher takes a batch from the event outbox by key, as the sealer takes its batch
-- from the seal queue (0014): the batch's rows in position order through the position
-- index, then the DELETE of exactly those rows by their row address (ctid: outbox rows are
-- never updated, and one publisher per program runs at a time), with sorts and sequential
-- scans off, so the statistics of the moment cannot turn a batch into a read of the
-- program's whole outbox (an index on another column, filtered, would be one). Unlike the
-- sealer's, each batch starts from the lowest visible position: an event that commits late
-- must be published before any later event of its customer, which commits after it.
CREATE FUNCTION take_outbox_batch(p_program_id text, p_limit integer)
RETURNS SETOF event_outbox
LANGUAGE sql VOLATILE
SET enable_sort = off
SET enable_seqscan = off
AS $$
    DELETE FROM event_outbox
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM event_outbox
                              WHERE program_id = p_program_id
                              ORDER BY position LIMIT p_limit))
    RETURNING *;
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT EXECUTE ON FUNCTION take_outbox_batch(text, integer) TO loyalty_app;
    END IF;
END
$$;
