-- Two more job rounds read what is due instead of the program's every row: the tier
-- downgrade warnings (service/usecases/tiers.py) and the churn-risk red events
-- (service/usecases/signals.py).

-- Downgrade warnings. `downgrade_warned_for` is the grace_ends_at whose warning is out (or
-- whose key was found in event_marks), set by the job in the transaction that emits it; it
-- only takes a row out of the partial index below: event_marks, under the same keys as
-- before, still makes each warning once only. The index holds the customers in a grace
-- period not yet warned of its end: an order writes an entry into it only for such a
-- customer (a tier row outside a grace period, or warned, is not in it).
ALTER TABLE customer_tiers ADD COLUMN downgrade_warned_for timestamptz;
CREATE INDEX customer_tiers_warning ON customer_tiers (program_id, grace_ends_at)
    WHERE grace_ends_at IS NOT NULL AND downgrade_warned_for IS DISTINCT FROM grace_ends_at;

-- The warnings due: grace periods ending in (p_now, p_now + p_days days] not yet warned of,
-- through the index above, in its order, with sorts and sequential scans off (as in 0018).
-- The window's end is computed as the job computed it before (the session's zone).
CREATE FUNCTION tier_warnings_due(p_program_id text, p_now timestamptz, p_days integer, p_limit integer)
RETURNS TABLE (customer_id text, tier_code text, grace_ends_at timestamptz)
LANGUAGE sql STABLE
SET enable_sort = off
SET enable_seqscan = off
AS $$
    SELECT t.customer_id, t.earned_code, t.grace_ends_at
      FROM customer_tiers t
     WHERE t.program_id = p_program_id AND t.grace_ends_at IS NOT NULL
       AND t.downgrade_warned_for IS DISTINCT FROM t.grace_ends_at
       AND t.grace_ends_at > p_now AND t.grace_ends_at <= p_now + make_interval(days => p_days)
     ORDER BY t.grace_ends_at
     LIMIT p_limit;
$$;

-- Churn-risk red. A buyer is red by inactivity once their last purchase day
-- (customer_summaries.last_day) is `red_inactive_days` or more local days before today, and
-- the event is owed once per (customer, last purchase day). Every order moves last_day, so
-- no index of customer_summaries can hold the rows still owed an event without an entry per
-- order. Instead the round reads the days that crossed the cutoff since the round before,
-- in the daily rollup's index by day (customer_days_by_day, written by every order
-- already): `churn_red_progress.scanned_through` is the last purchase day whose customers
-- the rounds have read, and a round reads the customer_days of the days after it up to its
-- cutoff, keeping the customers whose last purchase day it is and who have no mark yet.
CREATE TABLE churn_red_progress (
    program_id       text PRIMARY KEY,
    scanned_through  date  -- NULL: no day read yet
);

-- What can make a buyer red by inactivity other than the days passing: a last purchase day
-- that was already behind the rounds when it was written. A refund that moves last_day back
-- (its order's purchase lost) and an order whose day is before the day it was stored on
-- (a backdated order, an import) write a row here; the round reads these rows (and deletes
-- them once read), whatever their day. An ordinary order, placed on the day it is stored,
-- writes nothing here.
CREATE TABLE churn_red_checks (
    program_id   text NOT NULL,
    customer_id  text NOT NULL,
    last_day     date,
    PRIMARY KEY (program_id, customer_id)
);

-- Red by an open complaint (the rule `red_on_open_complaint`): the customers with one,
-- written by the signals (not by orders).
CREATE INDEX customer_signal_states_complaints ON customer_signal_states (program_id, customer_id)
    WHERE open_complaints <> '{}';

-- The round's three reads, each row of the other tables looked up by its whole key. Sorts,
-- sequential scans, hash and merge joins are off, and every lookup is a scalar subquery on
-- its table's primary key: SQL functions may keep a plan made without the arguments'
-- values (and while the tables were small), and such a plan, left free, scans the
-- program's whole range of another index with a filter (customer_summaries has three
-- indexes leading with program_id, and its primary key with two conditions is no cheaper
-- than one of those with one while the statistics say a program has a row or two) or joins
-- event_marks by program alone. So a summary is looked up in the primary key's order with
-- sorts off, the customer given as a range of one (an equality would make that order
-- trivial): only the primary key gives (program_id, customer_id) order, so no plan reads a
-- summary through another index, whatever the statistics say.
CREATE FUNCTION churn_red_last_day(p_program_id text, p_customer_id text) RETURNS date
LANGUAGE sql STABLE
SET enable_sort = off
SET enable_seqscan = off
AS $$
    SELECT s.last_day FROM customer_summaries s
     WHERE s.program_id = p_program_id AND s.customer_id >= p_customer_id AND s.customer_id <= p_customer_id
     ORDER BY s.customer_id
     LIMIT 1;
$$;

CREATE FUNCTION churn_red_told(p_program_id text, p_mark text, p_customer_id text, p_last_day date)
RETURNS boolean
LANGUAGE sql STABLE
SET enable_seqscan = off
AS $$
    SELECT EXISTS (SELECT FROM event_marks m WHERE m.program_id = p_program_id
                    AND m.key = p_mark || ':' || p_customer_id || ':' || to_char(p_last_day, 'YYYY-MM-DD'));
$$;

-- Each returns what the risk rules look at (as service/db/metrics.py's risk inputs) for
-- buyers; `told` says whether the mark `<p_mark>:<customer>:<last purchase day>` is there
-- (churn_red_lapsed and churn_red_complaints return only those without it).
CREATE FUNCTION churn_red_lapsed(p_program_id text, p_today date, p_after date, p_through date, p_mark text,
                                 p_limit integer)
RETURNS TABLE (customer_id text, last_day date, days_inactive integer, open_complaints integer,
               open_tickets integer, last_score integer)
LANGUAGE sql STABLE
SET enable_sort = off
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
    SELECT d.customer_id, d.day, p_today - d.day,
           coalesce(cardinality(g.open_complaints), 0), coalesce(cardinality(g.open_tickets), 0), g.last_score
      FROM customer_days d
      LEFT JOIN LATERAL (SELECT x.open_complaints, x.open_tickets, x.last_score FROM customer_signal_states x
                          WHERE x.program_id = p_program_id AND x.customer_id = d.customer_id OFFSET 0) g ON true
     WHERE d.program_id = p_program_id AND d.day > coalesce(p_after, '-infinity'::date) AND d.day <= p_through
       AND d.purchases > 0
       AND churn_red_last_day(p_program_id, d.customer_id) = d.day
       AND NOT churn_red_told(p_program_id, p_mark, d.customer_id, d.day)
     ORDER BY d.day
     LIMIT p_limit;
$$;

CREATE FUNCTION churn_red_flagged(p_program_id text, p_today date, p_after text, p_mark text, p_limit integer)
RETURNS TABLE (customer_id text, flagged_day date, last_day date, days_inactive integer, open_complaints integer,
               open_tickets integer, last_score integer, told boolean)
LANGUAGE sql STABLE
SET enable_sort = off
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
    SELECT k.customer_id, k.last_day, k.now_day, p_today - k.now_day,
           coalesce(cardinality(g.open_complaints), 0), coalesce(cardinality(g.open_tickets), 0), g.last_score,
           k.now_day IS NOT NULL AND churn_red_told(p_program_id, p_mark, k.customer_id, k.now_day)
      FROM (SELECT c.customer_id, c.last_day, churn_red_last_day(p_program_id, c.customer_id) AS now_day
              FROM churn_red_checks c WHERE c.program_id = p_program_id AND c.customer_id > coalesce(p_after, '')
             ORDER BY c.customer_id LIMIT p_limit) k
      LEFT JOIN LATERAL (SELECT x.open_complaints, x.open_tickets, x.last_score FROM customer_signal_states x
                          WHERE x.program_id = p_program_id AND x.customer_id = k.customer_id OFFSET 0) g ON true
     ORDER BY k.customer_id;
$$;

CREATE FUNCTION churn_red_complaints(p_program_id text, p_today date, p_after text, p_mark text, p_limit integer)
RETURNS TABLE (customer_id text, last_day date, days_inactive integer, open_complaints integer,
               open_tickets integer, last_score integer)
LANGUAGE sql STABLE
SET enable_sort = off
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
    SELECT g.customer_id, g.last_day, p_today - g.last_day,
           cardinality(g.open_complaints), cardinality(g.open_tickets), g.last_score
      FROM (SELECT x.customer_id, x.open_complaints, x.open_tickets, x.last_score,
                   churn_red_last_day(p_program_id, x.customer_id) AS last_day
              FROM customer_signal_states x
             WHERE x.program_id = p_program_id AND x.open_complaints <> '{}' AND x.customer_id > coalesce(p_after, '')
             ORDER BY x.customer_id OFFSET 0) g
     WHERE g.last_day IS NOT NULL AND NOT churn_red_told(p_program_id, p_mark, g.customer_id, g.last_day)
     ORDER BY g.customer_id
     LIMIT p_limit;
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON churn_red_progress, churn_red_checks TO loyalty_app;
        GRANT EXECUTE ON FUNCTION tier_warnings_due(text, timestamptz, integer, integer),
            churn_red_lapsed(text, date, date, date, text, integer),
            churn_red_flagged(text, date, text, text, integer),
            churn_red_complaints(text, date, text, text, integer), churn_red_last_day(text, text),
            churn_red_told(text, text, text, date) TO loyalty_app;
    END IF;
END
$$;
