-- docgate schema, version 7: what each client was granted, so a host's shares never sum past
-- its budget while clients join (a newcomer gets what the others leave, until they shrink).
--   psql "$DATABASE_URL" -1 -f database/migrations/0007_grants.sql
--
-- rate, connections: the share last granted (NULL: no limit).
-- cap_rate, cap_connections: the strictest `politeness` of the jobs the client is working on
-- for that host; the host's fleet budget is the lowest cap of its active clients.
-- address: where the gate sees the client's requests come from (its egress address, after a
-- trusted proxy's X-Forwarded-For): clients behind one address share a per-address budget.
ALTER TABLE host_clients
    ADD COLUMN address text NOT NULL DEFAULT '',
    ADD COLUMN rate double precision,
    ADD COLUMN connections integer,
    ADD COLUMN cap_rate double precision,
    ADD COLUMN cap_connections integer;

INSERT INTO schema_migrations (version, name) VALUES (7, '0007_grants');
