-- The pending webhook deliveries whose event a dispatcher could not read (a newer version's,
-- kept for one that can: service/db/events.py, UNREADABLE_PENDING) are counted by every
-- `/metrics` scrape and every `loyalty jobs run`. Without an index of their own that count
-- read every pending delivery: a whole backlog, per scrape. The predicate is the query's, word
-- for word (the planner matches it as written); only such deliveries have an entry.
CREATE INDEX webhook_deliveries_unreadable ON webhook_deliveries (program_id)
    WHERE status = 'pending' AND starts_with(last_error, 'event unreadable by this version: ');
