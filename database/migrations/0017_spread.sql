-- docgate schema, version 17: a fleet spread over its hosts.
--   psql "$DATABASE_URL" -1 -f database/migrations/0017_spread.sql
--
-- jobs.host: the budget host a job's requests count against (its url_template's, its
-- profile's base_url's), NULL when unknown. A lease hands out no more of a host's tasks than
-- HOST_TASKS_PER_CONNECTION times its connection budget, counted over every job on the
-- host, and leases another host's tasks instead: a fleet bigger than one host's budget works
-- on many hosts at once instead of queueing on the first job's (server/db/lifecycle.py, LEASE).
ALTER TABLE jobs ADD COLUMN host text;
CREATE INDEX jobs_host ON jobs (host) WHERE host IS NOT NULL;

-- The jobs already there, where their url_template's host is plain ASCII (the gate names a
-- new job's host in Python, protocol.hosts.host_key: IDNA, IPv6 and all): lower case, no
-- user part, no final dot, no default port.
UPDATE jobs SET host = regexp_replace(regexp_replace(
        lower(substring(params->>'url_template' FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)')),
        '\.(:|$)', '\1'),
    CASE WHEN lower(params->>'url_template') LIKE 'https:%' THEN ':443$' ELSE ':80$' END, '')
WHERE source = 'id_range' AND host IS NULL
  AND substring(params->>'url_template' FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)')
      ~ '^[A-Za-z0-9.-]+(:[0-9]{1,5})?$';

-- The lease walks jobs in priority then age order and each job's due tasks in priority then
-- age order (direct tasks, job_id NULL, as one more such list).
CREATE INDEX tasks_leasable_by_job ON tasks (job_id, priority DESC, task_seq)
    WHERE status = 'pending' AND due;

-- A host's tasks in flight, counted job by job (only leased tasks are in it).
CREATE INDEX tasks_assigned_job ON tasks (job_id) WHERE status = 'assigned';

INSERT INTO schema_migrations (version, name) VALUES (17, '0017_spread');
