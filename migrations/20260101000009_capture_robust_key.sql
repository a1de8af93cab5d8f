-- Capture never makes an application write fail because of its key. The row is keyed by the
-- configured id column; when that column is gone from the row (renamed or dropped since
-- `capture enable`) or null, by the table's primary key, read from the catalog at that moment
-- (so it follows renames); when there is no key at all, the change is still logged with
-- entity_id '' and the problem is recorded in observer_capture_errors, which
-- `observers capture list` counts.

-- Changes the trigger could not key. Append-only (no unique key, no upsert), so recording one
-- never waits on another transaction; rows go when their change-log row is pruned.
CREATE TABLE IF NOT EXISTS observer_capture_errors (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    entity_type  text NOT NULL,
    change_id    bigint,
    error        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS observer_capture_errors_table
    ON observer_capture_errors (table_schema, table_name, id);

-- TG_ARGV = (entity type, id column, tenant column or ''), as before: existing triggers keep
-- working and pick up this body.
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
    key        text;
    key_error  text;
    change_id  bigint;
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

    key := cur_row ->> id_col;
    IF key IS NULL THEN
        -- The slow path, only for rows the configured column cannot key: the primary key as it
        -- is now (one column: its value; several: a JSON array of their values).
        SELECT CASE WHEN count(*) = 1 THEN min(cur_row ->> a.attname)
                    ELSE jsonb_agg(cur_row -> a.attname ORDER BY k.ord)::text END
          INTO key
          FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = TG_RELID AND i.indisprimary;
        IF key IS NULL THEN
            key := '';
            key_error := format(
                'cannot key a %s: id column %s is %s and the table has no primary key',
                lower(TG_OP), quote_ident(id_col),
                CASE WHEN cur_row ? id_col THEN 'null' ELSE 'not in the row (renamed or dropped)' END);
        END IF;
    END IF;

    INSERT INTO observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, before, after, changed)
    VALUES (
        entity,
        key,
        lower(TG_OP),
        coalesce(cur_row ->> tenant_col, NULLIF(current_setting('observers.tenant_id', true), '')),
        NULLIF(current_setting('observers.user_id', true), ''),
        old_row,
        new_row,
        changed
    )
    RETURNING id INTO change_id;

    IF key_error IS NOT NULL THEN
        INSERT INTO observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, entity, change_id, key_error);
    END IF;
    RETURN NULL;
END;
$$;
