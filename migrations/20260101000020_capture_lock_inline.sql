-- Capture at writer speed, part 2: the capture function takes the read-horizon lock itself,
-- once per transaction, and the change log's statement trigger runs only for writers that have
-- not (a WHEN clause evaluated without calling plpgsql). The body is otherwise 0018's.
DO $migration$
DECLARE
    s   text := (SELECT n.nspname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'observer_change_log'::regclass);
    seq text := pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id');
BEGIN
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_capture() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $body$
DECLARE
    entity     text := TG_ARGV[0];
    id_col     text := TG_ARGV[1];
    tenant_col text := NULLIF(TG_ARGV[2], '');
    old_row    jsonb;
    new_row    jsonb;
    cur_row    jsonb;
    key        text;
    key_error  text;
    change_id  bigint;
    low        bigint;
BEGIN
    -- The read-horizon lock (migration 0017), taken here rather than by the change log's
    -- statement trigger: one plpgsql call per row instead of two.
    IF current_setting('observers.change_log_lock', true) IS DISTINCT FROM 'held' THEN
        low := coalesce(pg_sequence_last_value(%2$L::regclass), 0) & 4294967295;
        PERFORM pg_advisory_xact_lock_shared(
            1329746774,
            (CASE WHEN low >= 2147483648 THEN low - 4294967296 ELSE low END)::int4);
        PERFORM set_config('observers.change_log_lock', 'held', true);
    END IF;

    IF TG_OP = 'INSERT' THEN
        new_row := to_jsonb(NEW);
        cur_row := new_row;
    ELSIF TG_OP = 'UPDATE' THEN
        old_row := to_jsonb(OLD);
        new_row := to_jsonb(NEW);
        cur_row := new_row;
    ELSE
        old_row := to_jsonb(OLD);
        cur_row := old_row;
    END IF;

    key := cur_row ->> id_col;
    IF key IS NULL THEN
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
                'cannot key a %%s: id column %%s is %%s and the table has no primary key',
                lower(TG_OP), quote_ident(id_col),
                CASE WHEN cur_row ? id_col THEN 'null' ELSE 'not in the row (renamed or dropped)' END);
        END IF;
    END IF;

    INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, before, after)
    VALUES (
        entity,
        key,
        lower(TG_OP),
        coalesce(cur_row ->> tenant_col, NULLIF(current_setting('observers.tenant_id', true), '')),
        NULLIF(current_setting('observers.user_id', true), ''),
        old_row,
        new_row
    )
    RETURNING id INTO change_id;

    IF key_error IS NOT NULL THEN
        INSERT INTO %1$I.observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, entity, change_id, key_error);
    END IF;
    RETURN NULL;
END;
$body$
$function$, s, seq);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.observers_capture() FROM PUBLIC', s);
    -- The statement trigger stays for every other writer of the log (Debezium ingest, hand
    -- inserts), but its WHEN clause skips the call once the transaction holds the lock.
    EXECUTE format('DROP TRIGGER IF EXISTS observer_change_log_lock ON %I.observer_change_log', s);
    EXECUTE format(
        'CREATE TRIGGER observer_change_log_lock BEFORE INSERT ON %I.observer_change_log
             FOR EACH STATEMENT
             WHEN (pg_catalog.current_setting(''observers.change_log_lock'', true) IS DISTINCT FROM ''held'')
             EXECUTE FUNCTION %I.observers_change_log_lock()', s, s);
END
$migration$;
