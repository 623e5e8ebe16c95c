-- docgate schema, version 6: politeness budgets per origin host, held by the gate.
--   psql "$DATABASE_URL" -1 -f database/migrations/0006_hosts.sql
--
-- One row per origin host any client fetched from: the operator's overrides
-- (NULL = HOST_RATE_LIMIT / HOST_CONNECTIONS), whether it is paused, and the
-- fleet's back-off (effective_rate: halved on 429/503/errors, raised again
-- gradually on healthy answers; pause_until: the longest Retry-After seen).
CREATE TABLE hosts (
    host                text PRIMARY KEY,
    requests_per_second double precision CHECK (requests_per_second >= 0),
    max_connections     integer CHECK (max_connections >= 0),
    paused              boolean NOT NULL DEFAULT false,
    paused_reason       text,
    effective_rate      double precision,
    ceiling             double precision,  -- the rate the last trouble came at
    troubled_at         timestamptz,
    pause_until         timestamptz,
    adjusted_at         timestamptz NOT NULL DEFAULT now()
);

-- Who is working on each host, by the grant requests they send about once a
-- second: a host's budget is shared among the clients seen in the last seconds.
CREATE UNLOGGED TABLE host_clients (
    host       text NOT NULL,
    client_id  uuid NOT NULL,
    session_id text NOT NULL DEFAULT '',
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, client_id, session_id)
);

-- What the clients reported, per host and minute (GET /api/v1/hosts sums the last five).
CREATE TABLE host_stats (
    host      text NOT NULL,
    minute    timestamptz NOT NULL,
    ok        bigint NOT NULL DEFAULT 0,
    throttled bigint NOT NULL DEFAULT 0,
    errors    bigint NOT NULL DEFAULT 0,
    blocked   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (host, minute)
);

INSERT INTO schema_migrations (version, name) VALUES (6, '0006_hosts');
