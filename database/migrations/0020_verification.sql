-- docgate schema, version 20: workers checked against each other.
--   psql "$DATABASE_URL" -1 -f database/migrations/0020_verification.sql
--
-- A job's `verify_sample` (0 < x <= 1, in its tasks' params): that share of the documents each client records is
-- fetched again by another client (tasks.exclude_clients keeps the task from the client it
-- checks); a disagreement is settled by a third fetch, by another client still. A client that
-- loses QUARANTINE_AFTER disputes is quarantined: its key suspended (revoked_at), its leases
-- handed back, and the documents it recorded since its last good check queued again, to be
-- stored anew by others (server/db/verify.py).
ALTER TABLE tasks ADD COLUMN exclude_clients uuid[];
ALTER TABLE clients
    ADD COLUMN checks_passed      integer NOT NULL DEFAULT 0,
    ADD COLUMN checks_failed      integer NOT NULL DEFAULT 0,
    ADD COLUMN last_good_check_at timestamptz,
    ADD COLUMN quarantined_at     timestamptz;

CREATE TABLE verifications (
    verification_id bigserial PRIMARY KEY,
    collection      text NOT NULL,
    doc_id          text NOT NULL,
    version         integer NOT NULL,
    job_id          uuid,
    url             text NOT NULL,
    storage_key     text NOT NULL,
    size            bigint NOT NULL,
    claimed_sha256  text NOT NULL,
    recorded_by     uuid NOT NULL,
    opinions        jsonb NOT NULL DEFAULT '[]',  -- [{client_id, sha256, stored_sha256}], in order
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'queued', 'agreed', 'lied', 'mistaken', 'unsettled')),
    task_id         uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    settled_at      timestamptz
);
CREATE INDEX verifications_pending ON verifications (job_id, recorded_by) WHERE state = 'pending';
CREATE INDEX verifications_task ON verifications (task_id) WHERE state = 'queued';

INSERT INTO schema_migrations (version, name) VALUES (20, '0020_verification');
