-- docgate schema, version 10: searches that spread their results over the fleet.
--   psql "$DATABASE_URL" -1 -f database/migrations/0010_discoveries.sql
--
-- A search task whose profile says `spread_chunk_size` reports the documents it finds
-- (POST /api/v1/tasks/{id}/discovered); each doc_id not yet recorded or discovered is queued,
-- once, in a `urls` task of its own chunk. documents.found_by: the search task that found a
-- document (its own task when the search downloaded it itself).
CREATE TABLE discoveries (
    doc_id   text PRIMARY KEY,
    found_by uuid NOT NULL,
    found_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE documents ADD COLUMN found_by uuid;

INSERT INTO schema_migrations (version, name) VALUES (10, '0010_discoveries');
