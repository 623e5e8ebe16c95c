-- docgate schema, version 1.
-- Applied by the gate at start (or `docgate db migrate`) inside a transaction
-- under an advisory lock; also appliable by hand:
--   psql "$DATABASE_URL" -1 -f database/migrations/0001_initial.sql

CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Admin keys are stored only as sha256 hashes: they are long random strings,
-- so a fast hash is enough and a slow KDF per request would only cost latency.
CREATE TABLE admin_keys (
    key_hash   bytea PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE clients (
    client_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    client_name       text NOT NULL,
    client_host       text,
    api_key_hash      bytea NOT NULL UNIQUE,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    docs_per_minute   double precision
);

CREATE TABLE jobs (
    job_id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source          text NOT NULL,
    params          jsonb NOT NULL,
    chunk_size      integer NOT NULL,
    priority        integer NOT NULL,
    tasks_total     integer NOT NULL,
    idempotency_key text UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    task_id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Age order without ties: tasks created by one statement share now().
    task_seq             bigint GENERATED ALWAYS AS IDENTITY,
    job_id               uuid REFERENCES jobs (job_id) ON DELETE CASCADE,
    source               text NOT NULL DEFAULT 'search',
    search_params        jsonb NOT NULL DEFAULT '{}',
    start_page           integer NOT NULL DEFAULT 1,
    max_documents        integer NOT NULL DEFAULT 100,
    params               jsonb NOT NULL DEFAULT '{}',
    priority             integer NOT NULL DEFAULT 0,
    max_attempts         integer NOT NULL,
    attempts             integer NOT NULL DEFAULT 0,
    run_after            timestamptz NOT NULL DEFAULT now(),
    idempotency_key      text UNIQUE,
    status               text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'assigned', 'completed', 'failed', 'cancelled')),
    assigned_to          uuid REFERENCES clients (client_id) ON DELETE SET NULL,
    session_id           text,
    lease_token          uuid,
    lease_expires_at     timestamptz,
    documents_downloaded integer NOT NULL DEFAULT 0,
    documents_failed     integer NOT NULL DEFAULT 0,
    documents_skipped    integer NOT NULL DEFAULT 0,
    result_summary       jsonb,
    last_error           text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    assigned_at          timestamptz,
    completed_at         timestamptz,
    CHECK (status <> 'assigned' OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- The lease walks this index in order and stops after max_tasks rows, so it
-- costs the same with ten pending tasks or ten million. Partial: finished
-- tasks (the vast majority over time) never enter it.
CREATE UNIQUE INDEX tasks_leasable ON tasks (priority DESC, task_seq) WHERE status = 'pending';
-- The reaper looks only at live leases.
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE status = 'assigned';
-- Keyset pagination of the task list, newest first, with and without a status filter.
CREATE UNIQUE INDEX tasks_newest ON tasks (task_seq DESC);
CREATE INDEX tasks_status_newest ON tasks (status, task_seq DESC);
CREATE INDEX tasks_job ON tasks (job_id, status) WHERE job_id IS NOT NULL;
CREATE INDEX tasks_assigned_to ON tasks (assigned_to) WHERE status = 'assigned';

-- Append-only history of what happened to each task: one row per lease,
-- completion, failure, expiry, cancel and retry. Throughput and the
-- exactly-once checks read it.
CREATE TABLE task_events (
    event_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     uuid NOT NULL,
    event       text NOT NULL,
    client_id   uuid,
    lease_token uuid,
    documents   integer NOT NULL DEFAULT 0,
    detail      text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_events_task ON task_events (task_id);
CREATE INDEX task_events_at ON task_events (at, event);

-- Counts by status without COUNT(*) over millions of rows. A statement-level
-- trigger appends one delta row per status a statement changed; appending
-- never contends (unlike updating one counter row per status, which would
-- serialise every lease). The gate folds deltas into the totals periodically;
-- readers sum both.
CREATE TABLE task_counts (
    status text PRIMARY KEY,
    n      bigint NOT NULL
);
INSERT INTO task_counts (status, n)
VALUES ('pending', 0), ('assigned', 0), ('completed', 0), ('failed', 0), ('cancelled', 0);

CREATE TABLE task_count_deltas (
    delta_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status   text NOT NULL,
    delta    bigint NOT NULL
);

CREATE FUNCTION docgate_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT status, count(*) FROM new_rows GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION docgate_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT status, sum(d) FROM (
        SELECT status, 1 AS d FROM new_rows
        UNION ALL
        SELECT status, -1 AS d FROM old_rows
    ) changes
    GROUP BY status
    HAVING sum(d) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION docgate_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (status, delta)
    SELECT status, -count(*) FROM old_rows GROUP BY status;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docgate_count_inserted();
CREATE TRIGGER tasks_count_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docgate_count_updated();
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION docgate_count_deleted();

-- Wake long-polling gates when tasks appear, whoever inserts them (the API,
-- psql, a script). One notification per statement, not per row.
CREATE FUNCTION docgate_notify_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('docgate_tasks', '');
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_notify_insert AFTER INSERT ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION docgate_notify_tasks();

INSERT INTO schema_migrations (version, name) VALUES (1, '0001_initial');
