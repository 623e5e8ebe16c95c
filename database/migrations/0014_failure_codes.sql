-- docgate schema, version 14: failures as codes (protocol/failures.py). A failed document and a
-- task's last failed attempt carry a code beside their text; the gate groups by the code and a
-- source decides from it (an empty listing page, twice on the same page, is the listing's end).
--   psql "$DATABASE_URL" -1 -f database/migrations/0014_failure_codes.sql
ALTER TABLE document_failures ADD COLUMN code text NOT NULL DEFAULT 'other';
ALTER TABLE tasks
    ADD COLUMN last_error_code text,
    ADD COLUMN last_error_page integer;

-- Failures recorded before codes existed: sorted once, here, by the texts the clients of that
-- time wrote (nothing reads the texts after this).
UPDATE document_failures SET code = CASE
    WHEN error ~ '^HTTP [0-9]{3}: a block' THEN 'blocked'
    WHEN error ~ '^HTTP 404' THEN 'not_found'
    WHEN error ~ '^HTTP 410' THEN 'gone'
    WHEN error ~ '^HTTP 40[13]' THEN 'forbidden'
    WHEN error ~ '^HTTP (5[0-9]{2}|408|425|429)' THEN 'server_error'
    WHEN error ~ '^HTTP [0-9]{3}' THEN 'http_error'
    WHEN error ILIKE '%max-document-size%' OR error ILIKE '%too large%' THEN 'too_large'
    WHEN error ILIKE 'a block%' OR error ILIKE '%block page%' THEN 'blocked'
    WHEN error ILIKE 'an HTML page%' OR error ILIKE 'the origin sent %' OR error ILIKE 'not the document%'
        THEN 'wrong_type'
    WHEN error ILIKE 'refused%' THEN 'refused'
    WHEN error ILIKE '%timed out%' THEN 'timeout'
    WHEN error ILIKE '%not on the task''s hosts%' THEN 'off_hosts'
    WHEN error ILIKE 'storage:%' THEN 'storage'
    WHEN error ILIKE '%redirects%' THEN 'too_many_redirects'
    WHEN error ILIKE '%Content-Encoding%' OR error ILIKE '%cut short%' THEN 'bad_encoding'
    ELSE 'other'
END;

INSERT INTO schema_migrations (version, name) VALUES (14, '0014_failure_codes');
