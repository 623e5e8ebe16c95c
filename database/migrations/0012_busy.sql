-- docgate schema, version 12: fast when busy.
--   psql "$DATABASE_URL" -1 -f database/migrations/0012_busy.sql
--
-- 1. Leasing walks only due work. A pending task whose run_after is still ahead
--    (a retry in back-off, a task created for later, a paused job's held task)
--    has due = false and is out of the leasable index; the gates' housekeeping
--    promotes due tasks in bulk (tasks_waiting, in run_after order). A trigger
--    keeps `due` right whoever writes status or run_after (the API, psql).
-- 2. Activity per 10 seconds and job (completed, failed, cancelled tasks and the
--    documents of the completed), appended by a trigger as tasks finish and
--    folded by the gates like the counters: the dashboard, throughput, ETAs and
--    /metrics read a few hundred rows, not task_events. task_events is pruned
--    after TASK_EVENTS_RETENTION_SECONDS.
-- 3. A job's document counts are counters too (job:<id>:downloaded, …), so
--    GET /api/v1/jobs/{id} never counts its tasks.
-- 4. Large jobs are created in the background: `creating` until every task is
--    inserted, slice by slice, each slice and the cursor in one transaction.

ALTER TABLE tasks ADD COLUMN due boolean NOT NULL DEFAULT true;
UPDATE tasks SET due = false WHERE status = 'pending' AND run_after > now();

CREATE FUNCTION docgate_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.due := NEW.run_after <= now();
    RETURN NEW;
END $$;
-- The WHEN is checked without calling the function, so leases and completions pay nothing.
CREATE TRIGGER tasks_due BEFORE INSERT OR UPDATE OF status, run_after ON tasks
    FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.due IS DISTINCT FROM (NEW.run_after <= now()))
    EXECUTE FUNCTION docgate_due();

DROP INDEX tasks_leasable;
CREATE UNIQUE INDEX tasks_leasable ON tasks (priority DESC, task_seq) WHERE status = 'pending' AND due;
CREATE INDEX tasks_waiting ON tasks (run_after) WHERE status = 'pending' AND NOT due;

CREATE TABLE activity (
    bucket    timestamptz NOT NULL,  -- the start of its 10 seconds
    job_id    uuid NOT NULL,         -- the zero uuid for tasks of no job
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    documents bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, job_id)
);
-- Appended to (never updated: no contention between completions), folded into activity.
CREATE TABLE activity_deltas (
    bucket    timestamptz NOT NULL,
    job_id    uuid NOT NULL,
    completed bigint NOT NULL,
    failed    bigint NOT NULL,
    cancelled bigint NOT NULL,
    documents bigint NOT NULL
);

CREATE FUNCTION docgate_activity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO activity_deltas (bucket, job_id, completed, failed, cancelled, documents)
    SELECT date_bin('10 seconds', now(), timestamptz '2000-01-01 00:00:00+00'),
           coalesce(n.job_id, '00000000-0000-0000-0000-000000000000'),
           count(*) FILTER (WHERE n.status = 'completed'),
           count(*) FILTER (WHERE n.status = 'failed'),
           count(*) FILTER (WHERE n.status = 'cancelled'),
           coalesce(sum(n.documents_downloaded) FILTER (WHERE n.status = 'completed'), 0)
    FROM new_rows n JOIN old_rows o ON o.task_id = n.task_id
    WHERE n.status IN ('completed', 'failed', 'cancelled') AND o.status <> n.status
    GROUP BY 2;
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_activity AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docgate_activity();

-- Start the activity from the events still there (the last day is all anybody reads).
INSERT INTO activity (bucket, job_id, completed, failed, cancelled, documents)
SELECT date_bin('10 seconds', e.at, timestamptz '2000-01-01 00:00:00+00'),
       coalesce(t.job_id, '00000000-0000-0000-0000-000000000000'),
       count(*) FILTER (WHERE e.event = 'completed'),
       count(*) FILTER (WHERE e.event = 'failed'),
       count(*) FILTER (WHERE e.event = 'cancelled'),
       coalesce(sum(e.documents) FILTER (WHERE e.event = 'completed'), 0)
FROM task_events e JOIN tasks t ON t.task_id = e.task_id
WHERE e.at > now() - interval '1 day' AND e.event IN ('completed', 'failed', 'cancelled')
GROUP BY 1, 2;

-- The job's document counts (what its tasks reported), beside its status counters.
CREATE OR REPLACE FUNCTION docgate_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT name, sum(d) FROM (
        SELECT status AS name, 1 AS d FROM new_rows
        UNION ALL SELECT status, -1 FROM old_rows
        UNION ALL SELECT 'job:' || job_id || ':' || status, 1 FROM new_rows WHERE job_id IS NOT NULL
        UNION ALL SELECT 'job:' || job_id || ':' || status, -1 FROM old_rows WHERE job_id IS NOT NULL
        UNION ALL SELECT 'job:' || job_id || ':' || k, v FROM new_rows,
            LATERAL (VALUES ('downloaded', documents_downloaded), ('docs_failed', documents_failed),
                            ('docs_skipped', documents_skipped)) x(k, v)
            WHERE job_id IS NOT NULL
        UNION ALL SELECT 'job:' || job_id || ':' || k, -v FROM old_rows,
            LATERAL (VALUES ('downloaded', documents_downloaded), ('docs_failed', documents_failed),
                            ('docs_skipped', documents_skipped)) x(k, v)
            WHERE job_id IS NOT NULL
    ) changes
    GROUP BY name
    HAVING sum(d) <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION docgate_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT status, -count(*) FROM old_rows GROUP BY status
    UNION ALL
    SELECT 'job:' || job_id || ':' || status, -count(*) FROM old_rows
    WHERE job_id IS NOT NULL GROUP BY job_id, status
    UNION ALL
    SELECT 'job:' || job_id || ':' || k, -sum(v) FROM old_rows,
        LATERAL (VALUES ('downloaded', documents_downloaded), ('docs_failed', documents_failed),
                        ('docs_skipped', documents_skipped)) x(k, v)
    WHERE job_id IS NOT NULL GROUP BY job_id, k;
    RETURN NULL;
END $$;

INSERT INTO task_counts (status, n)
SELECT 'job:' || job_id || ':' || k, sum(v) FROM tasks,
    LATERAL (VALUES ('downloaded', documents_downloaded), ('docs_failed', documents_failed),
                    ('docs_skipped', documents_skipped)) x(k, v)
WHERE job_id IS NOT NULL GROUP BY job_id, k
ON CONFLICT (status) DO UPDATE SET n = excluded.n;

ALTER TABLE jobs
    ADD COLUMN creating      boolean NOT NULL DEFAULT false,
    ADD COLUMN tasks_created bigint NOT NULL DEFAULT 0,
    -- how far background creation got: chunks made (a range job), ids looked at (only_missing)
    ADD COLUMN cursor        bigint NOT NULL DEFAULT 0,
    ADD COLUMN max_attempts  integer,
    ADD COLUMN only_missing  boolean NOT NULL DEFAULT false;
UPDATE jobs SET tasks_created = tasks_total;
CREATE INDEX jobs_creating ON jobs (created_at) WHERE creating;

INSERT INTO schema_migrations (version, name) VALUES (12, '0012_busy');
