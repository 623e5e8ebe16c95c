-- docgate schema, version 5: a document's record may pin the object version it is.
--   psql "$DATABASE_URL" -1 -f database/migrations/0005_versions.sql
--
-- On a versioned bucket (Backblaze B2 keeps every version of a file) without
-- conditional writes, a late writer can add a newer version at a document's
-- key; the record keeps the version that was reported, and the gate serves,
-- verifies and migrates that one. NULL where the store keeps no versions.

ALTER TABLE documents ADD COLUMN version_id text;

INSERT INTO schema_migrations (version, name) VALUES (5, '0005_versions');
