-- docgate schema, version 13: capture records. How each document was fetched, recorded with it
-- in the same fenced write: the URL requested and the one it came from after redirects, the
-- redirects, the answer's status and headers (and the usual ones as columns), when the client
-- had the answer, the server's address, the client's version and the task's attempt.
--   psql "$DATABASE_URL" -1 -f database/migrations/0013_capture.sql
-- Documents recorded before have these null; `stored_at` is the gate's time of recording.
ALTER TABLE documents
    ADD COLUMN url              text,
    ADD COLUMN final_url        text,
    ADD COLUMN redirects        jsonb,
    ADD COLUMN http_status      integer,
    ADD COLUMN response_headers jsonb,
    ADD COLUMN etag             text,
    ADD COLUMN last_modified    text,
    ADD COLUMN http_date        text,
    ADD COLUMN content_length   text,
    ADD COLUMN content_encoding text,
    ADD COLUMN fetched_at       timestamptz,
    ADD COLUMN server_ip        text,
    ADD COLUMN server_port      integer,
    ADD COLUMN client_version   text,
    ADD COLUMN attempt          integer;

-- WARC files (`docgate client --warc`): one per report, stored write-once under warc/<job>/,
-- recorded with the documents whose records it holds, in the report's fenced write.
CREATE TABLE warc_files (
    storage_key text PRIMARY KEY,
    storage_url text NOT NULL,
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size        bigint NOT NULL CHECK (size > 0),
    records     integer NOT NULL,
    doc_ids     text[] NOT NULL,
    collection  text NOT NULL DEFAULT '',
    task_id     uuid,
    job_id      uuid,
    client_id   uuid,
    attempt     integer,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX warc_files_job ON warc_files (job_id, storage_key);
ALTER TABLE documents ADD COLUMN warc_key text;  -- the WARC holding its request and response

-- A job's documents in doc_id order, a page at a time (`docgate export`, GET …/jobs/{id}/documents).
DROP INDEX documents_job;
CREATE INDEX documents_job ON documents (job_id, doc_id) WHERE job_id IS NOT NULL;

INSERT INTO schema_migrations (version, name) VALUES (13, '0013_capture');
