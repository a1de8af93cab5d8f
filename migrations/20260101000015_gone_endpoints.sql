-- Targets (webhook URLs without user info or query) that answered 410 Gone: delivery to them is
-- disabled, their events are dead-lettered, until `observers actions enable --url` removes the row.
CREATE TABLE IF NOT EXISTS observer_gone_endpoints (
    target       text PRIMARY KEY,
    observer     text NOT NULL,
    action_index integer NOT NULL,
    reason       text NOT NULL,
    disabled_at  timestamptz NOT NULL DEFAULT now()
);
