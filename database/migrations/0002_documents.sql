-- docgate schema, version 2: the documents clients stored, and the ones they could not fetch.
--   psql "$DATABASE_URL" -1 -f database/migrations/0002_documents.sql

-- One row per document stored once and whole. Written only in the same
-- transaction as a fenced progress or completion, so a stale lease can never
-- record a document. storage_key is relative to the store and checked to be
-- the key storage/keys.py computes for doc_id.
CREATE TABLE documents (
    doc_id       text PRIMARY KEY,
    source       text NOT NULL,
    storage_key  text NOT NULL,
    storage_url  text NOT NULL,
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size         bigint NOT NULL CHECK (size >= 0),
    content_type text,
    compressed   boolean NOT NULL DEFAULT false,
    task_id      uuid,
    job_id       uuid,
    client_id    uuid,
    stored_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_job ON documents (job_id) WHERE job_id IS NOT NULL;

-- Documents a task could not fetch (404, too large, …): what `docgate jobs
-- refetch-failed` turns back into tasks. The latest failure per document wins.
CREATE TABLE document_failures (
    doc_id    text NOT NULL,
    job_id    uuid,
    task_id   uuid NOT NULL,
    url       text,
    error     text,
    failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (doc_id, task_id)
);
CREATE INDEX document_failures_job ON document_failures (job_id) WHERE job_id IS NOT NULL;

INSERT INTO schema_migrations (version, name) VALUES (2, '0002_documents');
