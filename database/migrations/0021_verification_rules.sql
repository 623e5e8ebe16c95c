-- docgate schema, version 21: what a quarantine and a lost dispute put right.
--   psql "$DATABASE_URL" -1 -f database/migrations/0021_verification_rules.sql
--
-- A check made moot is `superseded`: its document is being stored anew already (its recorder was
-- quarantined), so its verdict would change nothing. A document both checkers found other than
-- recorded, where the origin says it was modified after the record, is `changed`: stored anew,
-- and no one's fault. A quarantine also queues a check of every
-- document its client recorded before its last good check, and a check of a document that finds
-- it wrong stores it anew: both look documents up by (collection, doc_id, version), hence the
-- index (server/db/verify.py).
ALTER TABLE verifications DROP CONSTRAINT verifications_state_check;
ALTER TABLE verifications ADD CONSTRAINT verifications_state_check
    CHECK (state IN ('pending', 'queued', 'agreed', 'lied', 'mistaken', 'unsettled', 'superseded', 'changed'));
CREATE INDEX verifications_document ON verifications (collection, doc_id, version);
-- A check is kept from the hosts of the clients it checks too (client_host), whoever registers
-- on them later.
ALTER TABLE tasks ADD COLUMN exclude_hosts text[];

INSERT INTO schema_migrations (version, name) VALUES (21, '0021_verification_rules');
