-- docgate schema, version 18: the body as transferred.
--   psql "$DATABASE_URL" -1 -f database/migrations/0018_transfer.sql
--
-- A document that came content-encoded (Content-Encoding: gzip or deflate) is stored decoded,
-- and its sha256 and size are of the decoded bytes; these are of the body as the origin sent
-- it (transfer coding undone, content coding kept): the payload of its WARC response record
-- and that record's WARC-Payload-Digest. NULL when the body came as is (the same bytes).
ALTER TABLE documents
    ADD COLUMN transfer_sha256 text CHECK (transfer_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN transfer_size   bigint CHECK (transfer_size >= 0);

INSERT INTO schema_migrations (version, name) VALUES (18, '0018_transfer');
