-- docgate schema, version 8: jobs that pause, by an operator or by themselves.
--   psql "$DATABASE_URL" -1 -f database/migrations/0008_job_pause.sql
--
-- A paused job's pending tasks are held out of the leasable index (run_after =
-- 'infinity'), so leasing never walks past them; resuming makes them due now.
-- Tasks that come back pending while their job is paused (a lease that ran out,
-- a retry) are held by the lease's own check, and then by housekeeping.
ALTER TABLE jobs
    ADD COLUMN paused        boolean NOT NULL DEFAULT false,
    ADD COLUMN paused_reason text,
    ADD COLUMN paused_at     timestamptz,
    ADD COLUMN resumed_at    timestamptz;  -- the dead-man switch counts answers since then
CREATE INDEX jobs_paused ON jobs (job_id) WHERE paused;

-- How many of an attempt's documents were block pages (the job's dead-man switch counts them).
ALTER TABLE task_events ADD COLUMN blocked integer;

DROP INDEX tasks_leasable;
CREATE UNIQUE INDEX tasks_leasable ON tasks (priority DESC, task_seq)
    WHERE status = 'pending' AND run_after < 'infinity';

INSERT INTO schema_migrations (version, name) VALUES (8, '0008_job_pause');
