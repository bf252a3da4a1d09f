-- The publisher takes a batch from the event outbox by key, as the sealer takes its batch
-- from the seal queue (0014): the batch's ids in position order, then the DELETE of exactly
-- those rows, with sorts and sequential scans off so the statistics of the moment cannot
-- turn each batch into a read of the program's whole outbox. (Unlike the sealer, each batch
-- starts from the lowest visible position: an event that commits late must be published
-- before any later event of its customer, which commits after it.)
CREATE FUNCTION take_outbox_batch(p_program_id text, p_limit integer)
RETURNS SETOF event_outbox
LANGUAGE sql VOLATILE
SET enable_sort = off
SET enable_seqscan = off
AS $$
    DELETE FROM event_outbox
     WHERE program_id = p_program_id
       AND id = ANY (ARRAY(SELECT id FROM event_outbox
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
