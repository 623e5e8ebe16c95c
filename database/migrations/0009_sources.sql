-- docgate schema, version 9: source profiles, a registry's search described as data.
--   psql "$DATABASE_URL" -1 -f database/migrations/0009_sources.sql
--
-- A task whose `source` names a profile gets it with its lease (protocol.sources).
CREATE TABLE sources (
    name       text PRIMARY KEY,
    profile    jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO schema_migrations (version, name) VALUES (9, '0009_sources');
