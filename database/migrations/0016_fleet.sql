-- docgate schema, version 16: a fleet of a thousand.
--   psql "$DATABASE_URL" -1 -f database/migrations/0016_fleet.sql
--
-- hosts.answers / errors: the answers counted for a host's error rate, decayed with a
-- half-life of 30 seconds from counted_at (server/domain/budget.py): sporadic errors under the
-- noise threshold cost at most a fifth of the budget; noisy_at: when they last did.
ALTER TABLE hosts
    ADD COLUMN answers    double precision NOT NULL DEFAULT 0,
    ADD COLUMN errors     double precision NOT NULL DEFAULT 0,
    ADD COLUMN counted_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN noisy_at   timestamptz;

-- Each gate's slice of a host's budget (address ''), or of the budget of the clients behind one
-- egress address (HOST_RATE_LIMIT_PER_ADDRESS): the gate divides it among its own clients in
-- memory. rate / connections: what the gate may have granted (never less than its clients'
-- grants still valid); clients: its clients working on the host; cap_*: their jobs' strictest
-- politeness. A slice counts until expires_at; every client grant it backs ends before then.
CREATE TABLE host_slices (
    host            text NOT NULL,
    address         text NOT NULL DEFAULT '',
    gate_id         text NOT NULL,
    clients         integer NOT NULL,
    rate            double precision,
    connections     integer,
    cap_rate        double precision,
    cap_connections integer,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (host, address, gate_id)
);
DROP TABLE host_clients;

-- MAX_LEASES_PER_CLIENT for one key (NULL: the gate's setting).
ALTER TABLE clients ADD COLUMN max_leases integer CHECK (max_leases >= 0);

-- Client processes that said goodbye (DELETE /api/v1/session): nothing more is leased to them,
-- and housekeeping hands back anything a lease racing the goodbye gave them.
CREATE TABLE ended_sessions (
    client_id  uuid NOT NULL,
    session_id text NOT NULL,
    ended_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, session_id)
);

INSERT INTO schema_migrations (version, name) VALUES (16, '0016_fleet');
