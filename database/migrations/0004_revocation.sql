-- docgate schema, version 4: client keys can be revoked.
--   psql "$DATABASE_URL" -1 -f database/migrations/0004_revocation.sql
--
-- A revoked client's key no longer authenticates (the gates' positive look-up
-- caches hold it at most 10 s), it can lease nothing from the moment of the
-- revocation, and its leases were handed back when it was revoked.

ALTER TABLE clients ADD COLUMN revoked_at timestamptz;

INSERT INTO schema_migrations (version, name) VALUES (4, '0004_revocation');
