-- The sealer takes a batch from the queue by key: the batch's ids in primary-key order from
-- just above the previous batch's last id, then the DELETE of exactly those rows. Planned
-- freely, the statement read the program's whole queue for every batch (a sequential scan
-- hash-joined with the batch, or a bitmap scan sorted for its first rows, whichever the
-- statistics of the moment favoured), so draining a backlog cost the square of its length.
-- Inside this function sorts and sequential scans are off, so the index order is used
-- whatever the statistics say.
CREATE FUNCTION take_seal_batch(p_program_id text, p_after bigint, p_limit integer)
RETURNS SETOF bigint
LANGUAGE sql VOLATILE
SET enable_sort = off
SET enable_seqscan = off
AS $$
    DELETE FROM seal_queue
     WHERE program_id = p_program_id
       AND entry_id = ANY (ARRAY(SELECT entry_id FROM seal_queue
                                  WHERE program_id = p_program_id AND entry_id > p_after
                                  ORDER BY entry_id LIMIT p_limit))
    RETURNING entry_id;
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT EXECUTE ON FUNCTION take_seal_batch(text, bigint, integer) TO loyalty_app;
    END IF;
END
$$;
