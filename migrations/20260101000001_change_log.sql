-- The change log: one row per captured row change, read by (txid, id) below the snapshot xmin.
CREATE TABLE IF NOT EXISTS observer_change_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    -- Deliberately unconstrained: a row the listener cannot decode is dead-lettered, not lost.
    operation   text NOT NULL,
    tenant_id   text,
    user_id     text,
    before      jsonb,
    after       jsonb,
    changed     text[],
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS observer_change_log_txid_id ON observer_change_log (txid, id);

-- Wake listeners once per writing statement.
CREATE OR REPLACE FUNCTION observers_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('observer_change_log', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS observer_change_log_notify ON observer_change_log;
CREATE TRIGGER observer_change_log_notify
    AFTER INSERT ON observer_change_log
    FOR EACH STATEMENT EXECUTE FUNCTION observers_notify();

-- Generic capture trigger: TG_ARGV = (entity type, id column, tenant column or '').
-- The user id comes from the session setting observers.user_id, the tenant from the tenant
-- column or, failing that, observers.tenant_id.
CREATE OR REPLACE FUNCTION observers_capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    entity     text := TG_ARGV[0];
    id_col     text := TG_ARGV[1];
    tenant_col text := NULLIF(TG_ARGV[2], '');
    old_row    jsonb;
    new_row    jsonb;
    cur_row    jsonb;
    changed    text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_row := to_jsonb(NEW);
        cur_row := new_row;
    ELSIF TG_OP = 'UPDATE' THEN
        old_row := to_jsonb(OLD);
        new_row := to_jsonb(NEW);
        cur_row := new_row;
        SELECT coalesce(array_agg(n.key ORDER BY n.key), '{}')
          INTO changed
          FROM jsonb_each(new_row) AS n
         WHERE n.value IS DISTINCT FROM old_row -> n.key;
    ELSE
        old_row := to_jsonb(OLD);
        cur_row := old_row;
    END IF;

    INSERT INTO observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, before, after, changed)
    VALUES (
        entity,
        cur_row ->> id_col,
        lower(TG_OP),
        coalesce(cur_row ->> tenant_col, NULLIF(current_setting('observers.tenant_id', true), '')),
        NULLIF(current_setting('observers.user_id', true), ''),
        old_row,
        new_row,
        changed
    );
    RETURN NULL;
END;
$$;

-- Which tables are captured, for `observers capture list`.
CREATE TABLE IF NOT EXISTS observer_captures (
    table_schema  text NOT NULL,
    table_name    text NOT NULL,
    entity_type   text NOT NULL,
    id_column     text NOT NULL,
    tenant_column text,
    enabled_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_schema, table_name)
);
