-- High availability (observers-ha): fenced leases and the instance registry.

-- Named leases with fencing epochs. The epoch grows on every acquisition (a new holder, or the
-- same holder after the lease lapsed or was released); `PostgresCheckpointStore::save_fenced`
-- writes only while (name, holder, epoch) matches and expires_at > now() (database clock).
CREATE TABLE IF NOT EXISTS observer_leases (
    name        text PRIMARY KEY,
    holder      text,
    epoch       bigint NOT NULL DEFAULT 0,
    acquired_at timestamptz,
    renewed_at  timestamptz,
    expires_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per `observers run` instance of an HA group, refreshed every renew interval.
CREATE TABLE IF NOT EXISTS observer_listeners (
    group_name       text NOT NULL,
    instance_id      text NOT NULL,
    listener_id      text NOT NULL,
    state            text NOT NULL DEFAULT 'initializing'
        CHECK (state IN ('initializing', 'connecting', 'running', 'recovering', 'stopped', 'failed')),
    partitions       integer[] NOT NULL DEFAULT '{}',
    is_leader        boolean NOT NULL DEFAULT false,
    started_at       timestamptz NOT NULL DEFAULT now(),
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    last_heartbeat   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, instance_id)
);

CREATE INDEX IF NOT EXISTS observer_listeners_heartbeat ON observer_listeners (group_name, last_heartbeat DESC);

-- Failovers detected by the group leader: an instance stopped heartbeating while holding work.
CREATE TABLE IF NOT EXISTS observer_failovers (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name      text NOT NULL,
    failed_instance text NOT NULL,
    partitions      integer[] NOT NULL DEFAULT '{}',
    detected_by     text NOT NULL,
    detected_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS observer_failovers_group ON observer_failovers (group_name, detected_at DESC);
