-- docgate schema, version 11: collections. A collection is one registry's namespace: doc_id is
-- unique within it, and its documents are stored under its own prefix (`<collection>/<shard>/
-- <id><ext>`). The default collection is '' and keeps the keys documents always had.
--   psql "$DATABASE_URL" -1 -f database/migrations/0011_collections.sql
ALTER TABLE jobs ADD COLUMN collection text NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN collection text NOT NULL DEFAULT '';
ALTER TABLE documents ADD COLUMN collection text NOT NULL DEFAULT '';
ALTER TABLE documents DROP CONSTRAINT documents_pkey;
ALTER TABLE documents ADD PRIMARY KEY (collection, doc_id);
ALTER TABLE discoveries ADD COLUMN collection text NOT NULL DEFAULT '';
ALTER TABLE discoveries DROP CONSTRAINT discoveries_pkey;
ALTER TABLE discoveries ADD PRIMARY KEY (collection, doc_id);

INSERT INTO schema_migrations (version, name) VALUES (11, '0011_collections');
