-- docgate schema, version 15: harvests. A job over a stored source profile is cut into windows
-- (a date range, a value of one field, or both); each window is one search task, and the
-- window's row is its line of the coverage ledger: what the registry said it holds, what was
-- found, stored, failed, skipped as already held, and its state. A window over the registry's
-- cap is split into halves (down to a day, then by a second field), never truncated. A job
-- that repeats makes a new run of windows on its schedule; each run has its own ledger.
--   psql "$DATABASE_URL" -1 -f database/migrations/0015_harvests.sql

ALTER TABLE jobs
    ADD COLUMN harvest      jsonb,          -- the harvest's spec (protocol.harvests.Harvest)
    ADD COLUMN runs         integer NOT NULL DEFAULT 0,
    ADD COLUMN next_run_at  timestamptz,    -- a repeating job's next run (NULL: none due)
    ADD COLUMN covered_to   date;           -- the last day its runs have searched up to
CREATE INDEX jobs_next_run ON jobs (next_run_at) WHERE next_run_at IS NOT NULL;

CREATE TABLE harvest_windows (
    window_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    run           integer NOT NULL,
    parent_id     bigint REFERENCES harvest_windows (window_id),
    date_from     date,
    date_to       date,                     -- inclusive
    value         text,                     -- of the partition's field
    split_value   text,                     -- of split_by's field, once days are too few
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'searching', 'split', 'complete', 'short',
                                   'over_cap', 'failed', 'cancelled')),
    stated_total  bigint,                   -- what the registry said the search holds
    found         integer NOT NULL DEFAULT 0,
    stored        integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    skipped       integer NOT NULL DEFAULT 0,
    task_id       uuid,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- a window exists once: a repeated creation, a split done twice, find the first
    UNIQUE NULLS NOT DISTINCT (job_id, run, date_from, date_to, value, split_value)
);
CREATE INDEX harvest_windows_task ON harvest_windows (task_id);

ALTER TABLE tasks
    ADD COLUMN window_id bigint,
    -- documents recorded by the task's earlier attempts: its counters are the task's totals,
    -- not the last attempt's (set when an attempt is leased; see server/db/lifecycle.py)
    ADD COLUMN earlier_downloaded integer NOT NULL DEFAULT 0;

-- A window follows its task: leased → searching, back to pending, failed or cancelled for good.
-- Completion is settled by the gate in the completing transaction (server/db/harvests.py),
-- which knows what the listing said.
CREATE FUNCTION docgate_window_follows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE harvest_windows
    SET state = CASE NEW.status WHEN 'assigned' THEN 'searching' ELSE NEW.status END,
        failed = CASE WHEN NEW.status = 'failed' THEN NEW.documents_failed ELSE failed END,
        stored = CASE WHEN NEW.status = 'failed' THEN NEW.documents_downloaded ELSE stored END,
        updated_at = now()
    WHERE window_id = NEW.window_id;
    RETURN NULL;
END $$;
-- A row trigger with a WHEN: a task of no window, or a statement that sets no status
-- (progress, a heartbeat's extension), costs a comparison, not a call.
CREATE TRIGGER tasks_window AFTER UPDATE OF status ON tasks
    FOR EACH ROW
    WHEN (NEW.window_id IS NOT NULL AND NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status IN ('assigned', 'pending', 'failed', 'cancelled'))
    EXECUTE FUNCTION docgate_window_follows();

INSERT INTO schema_migrations (version, name) VALUES (15, '0015_harvests');
