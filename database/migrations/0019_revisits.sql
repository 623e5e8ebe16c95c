-- docgate schema, version 19: revisits and versions.
--   psql "$DATABASE_URL" -1 -f database/migrations/0019_revisits.sql
--
-- A job may fetch its recorded documents again (jobs.revisit: every how many seconds; or on
-- demand, POST /api/v1/jobs/{id}/revisit, `docgate revisit JOB`). A document whose bytes
-- changed gets a new version: its row takes the new one (version, key, sha256, capture) and the
-- one it replaces moves to document_versions, whole, with its key: every version stays
-- readable. One that answers 404 or 410 is marked withdrawn and kept; one found as it was is
-- marked revisited.
ALTER TABLE documents
    ADD COLUMN version      integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    ADD COLUMN revisited_at timestamptz,
    ADD COLUMN withdrawn_at timestamptz;

CREATE TABLE document_versions (
    collection      text NOT NULL,
    doc_id          text NOT NULL,
    version         integer NOT NULL CHECK (version >= 1),
    storage_key     text NOT NULL,
    storage_url     text NOT NULL,
    sha256          text NOT NULL,
    size            bigint NOT NULL,
    content_type    text,
    compressed      boolean NOT NULL DEFAULT false,
    version_id      text,
    fetched_at      timestamptz,
    recorded_at     timestamptz NOT NULL,
    superseded_at   timestamptz NOT NULL DEFAULT now(),
    task_id         uuid,
    client_id       uuid,
    http_status     integer,
    etag            text,
    last_modified   text,
    transfer_sha256 text,
    warc_key        text,
    PRIMARY KEY (collection, doc_id, version)
);

ALTER TABLE jobs
    ADD COLUMN revisit         jsonb,
    ADD COLUMN next_revisit_at timestamptz;
CREATE INDEX jobs_next_revisit ON jobs (next_revisit_at) WHERE next_revisit_at IS NOT NULL;

INSERT INTO schema_migrations (version, name) VALUES (19, '0019_revisits');
