-- docgate schema, version 3: cheap counters for metrics and the dashboard.
--   psql "$DATABASE_URL" -1 -f database/migrations/0003_counters.sql
--
-- task_counts / task_count_deltas (version 1) now also hold, besides the
-- five task statuses:
--   job:<job_id>:<status>   tasks of one job by status
--   job:<job_id>:documents  documents recorded for one job
--   documents               documents recorded
--   document_bytes          their total size
-- Triggers append deltas; the gate folds them. Readers sum totals and deltas,
-- so a job of ten million tasks shows its progress without counting them.

CREATE OR REPLACE FUNCTION docgate_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT status, count(*) FROM new_rows GROUP BY status
    UNION ALL
    SELECT 'job:' || job_id || ':' || status, count(*) FROM new_rows
    WHERE job_id IS NOT NULL GROUP BY job_id, status;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION docgate_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT name, sum(d) FROM (
        SELECT status AS name, 1 AS d FROM new_rows
        UNION ALL SELECT status, -1 FROM old_rows
        UNION ALL SELECT 'job:' || job_id || ':' || status, 1 FROM new_rows WHERE job_id IS NOT NULL
        UNION ALL SELECT 'job:' || job_id || ':' || status, -1 FROM old_rows WHERE job_id IS NOT NULL
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
    WHERE job_id IS NOT NULL GROUP BY job_id, status;
    RETURN NULL;
END $$;

CREATE FUNCTION docgate_count_documents() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT 'documents', count(*) FROM new_rows HAVING count(*) > 0
    UNION ALL
    SELECT 'document_bytes', coalesce(sum(size), 0) FROM new_rows HAVING count(*) > 0
    UNION ALL
    SELECT 'job:' || job_id || ':documents', count(*) FROM new_rows
    WHERE job_id IS NOT NULL GROUP BY job_id;
    RETURN NULL;
END $$;

CREATE TRIGGER documents_count_insert AFTER INSERT ON documents
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docgate_count_documents();

-- Start the new counters from what is already there.
INSERT INTO task_counts (status, n)
SELECT 'job:' || job_id || ':' || status, count(*) FROM tasks WHERE job_id IS NOT NULL
GROUP BY job_id, status;
INSERT INTO task_counts (status, n)
SELECT 'job:' || job_id || ':documents', count(*) FROM documents WHERE job_id IS NOT NULL GROUP BY job_id;
INSERT INTO task_counts (status, n) SELECT 'documents', count(*) FROM documents;
INSERT INTO task_counts (status, n) SELECT 'document_bytes', coalesce(sum(size), 0) FROM documents;

INSERT INTO schema_migrations (version, name) VALUES (3, '0003_counters');
