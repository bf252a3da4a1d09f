-- The work items of the scheduled jobs that failed (a hold that cannot be expired, a customer
-- whose points or tier cannot be settled, ...), one row per item while it keeps failing
-- (service/db/job_failures.py). A failed item is left out of its job's rounds until
-- `retry_at` (a back-off that doubles from a minute to an hour), so that it neither stops the
-- items behind it nor takes their place in a bounded batch; the row goes when the item is
-- done. The rows are what `loyalty jobs run` and the job reports name as failing.
CREATE TABLE job_failures (
    program_id      text NOT NULL REFERENCES programs (id) ON DELETE RESTRICT,
    job             text NOT NULL CHECK (length(job) BETWEEN 1 AND 100),
    item            text NOT NULL CHECK (length(item) BETWEEN 1 AND 255),
    attempts        integer NOT NULL CHECK (attempts > 0),
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    retry_at        timestamptz NOT NULL,
    last_error      text NOT NULL,
    PRIMARY KEY (program_id, job, item)
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'loyalty_app') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON job_failures TO loyalty_app;
    END IF;
END
$$;
