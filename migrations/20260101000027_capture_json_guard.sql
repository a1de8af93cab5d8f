-- A json column can hold values jsonb cannot: the escape \u0000 (jsonb's strings are text, which
-- has no NUL) and numbers beyond numeric's range. For such a value `to_jsonb(NEW)` fails, and with
-- it the application's own write. Tables with a column that can hold json (json, arrays and
-- domains of it, composite types) get `observers_capture_json()`, chosen by `capture enable`: it
-- computes the row images in a block that catches those two errors (a subtransaction, paid only
-- by such tables), and then writes each value that does not fit as a JSON string of its text,
-- with a row in observer_capture_errors naming the change and the columns. Other tables keep the
-- lean `observers_capture()` unchanged; this migration moves the capture triggers of existing
-- tables with such columns to the guarded function (their arguments and state kept).
--
-- The keying and insert part of `observers_capture_json()` repeats `observers_capture()` of
-- migration 026 on purpose: a shared helper would add a function call to the lean function,
-- whose cost per row is counted instruction by instruction (docs/benchmarks.md).

-- Whether a table has a column that can hold `json`: of type json, a domain over it, an array of
-- either, or of a composite type (which may hold any of these).
CREATE OR REPLACE FUNCTION observers_holds_json(rel pg_catalog.regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
          JOIN pg_catalog.pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
          LEFT JOIN pg_catalog.pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
          LEFT JOIN pg_catalog.pg_type eb ON eb.oid = CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
           AND ('json'::pg_catalog.regtype IN (b.oid, eb.oid) OR 'c' IN (b.typtype, eb.typtype)))
$$;

DO $migration$
DECLARE
    s   text := (SELECT n.nspname
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.oid = 'observer_change_log'::regclass);
    seq text := pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id');
BEGIN
    -- A row of table `rel` as jsonb, column by column with `to_jsonb`, each value that jsonb
    -- cannot hold written as a string of its text instead; and the names of those columns.
    -- (Not through the row's json: PostgreSQL's json functions refuse an escaped NUL too.)
    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_jsonb_fitting(r anyelement, rel pg_catalog.regclass,
                                                       OUT fitted pg_catalog.jsonb,
                                                       OUT unfit pg_catalog.text[])
LANGUAGE plpgsql AS $body$
DECLARE
    col pg_catalog.name;
    v   pg_catalog.jsonb;
BEGIN
    fitted := '{}';
    unfit := '{}';
    FOR col IN SELECT a.attname FROM pg_catalog.pg_attribute a
                WHERE a.attrelid OPERATOR(pg_catalog.=) rel AND a.attnum OPERATOR(pg_catalog.>) 0
                  AND NOT a.attisdropped
                ORDER BY a.attnum LOOP
        BEGIN
            EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(($1).%%I)', col) INTO v USING r;
        EXCEPTION WHEN untranslatable_character OR numeric_value_out_of_range THEN
            EXECUTE pg_catalog.format('SELECT pg_catalog.to_jsonb(($1).%%I::pg_catalog.text)', col)
               INTO v USING r;
            unfit := unfit OPERATOR(pg_catalog.||) col::pg_catalog.text;
        END;
        fitted := fitted OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(col, v);
    END LOOP;
END;
$body$
$function$, s);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.observers_jsonb_fitting(anyelement, pg_catalog.regclass) FROM PUBLIC', s);

    EXECUTE format($function$
CREATE OR REPLACE FUNCTION %1$I.observers_capture_json() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
AS $body$
DECLARE
    old_row   pg_catalog.jsonb;
    new_row   pg_catalog.jsonb;
    key       pg_catalog.text;
    key_error pg_catalog.text;
    old_unfit pg_catalog.text[];
    new_unfit pg_catalog.text[];
BEGIN
    BEGIN
        old_row := pg_catalog.to_jsonb(OLD);
        new_row := pg_catalog.to_jsonb(NEW);
    EXCEPTION WHEN untranslatable_character OR numeric_value_out_of_range THEN
        IF TG_OP OPERATOR(pg_catalog.<>) 'INSERT' THEN
            SELECT f.fitted, f.unfit INTO old_row, old_unfit
              FROM %1$I.observers_jsonb_fitting(OLD, TG_RELID) f;
        END IF;
        IF TG_OP OPERATOR(pg_catalog.<>) 'DELETE' THEN
            SELECT f.fitted, f.unfit INTO new_row, new_unfit
              FROM %1$I.observers_jsonb_fitting(NEW, TG_RELID) f;
        END IF;
    END;
    key := coalesce(new_row, old_row) OPERATOR(pg_catalog.->>) TG_ARGV[1];

    IF key IS NULL THEN
        -- The id column is NULL or missing: key by the primary key, or record why not.
        SELECT CASE WHEN pg_catalog.count(*) OPERATOR(pg_catalog.=) 1
                    THEN pg_catalog.min(coalesce(new_row, old_row)
                                            OPERATOR(pg_catalog.->>) a.attname::pg_catalog.text)
                    ELSE pg_catalog.jsonb_agg(coalesce(new_row, old_row)
                                                  OPERATOR(pg_catalog.->) a.attname::pg_catalog.text
                                              ORDER BY k.ord)::pg_catalog.text END
          INTO key
          FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a
            ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
         WHERE i.indrelid OPERATOR(pg_catalog.=) TG_RELID AND i.indisprimary;
        IF key IS NULL THEN
            key := '';
            key_error := pg_catalog.format(
                'cannot key a %%s: id column %%s is %%s and the table has no primary key',
                pg_catalog.lower(TG_OP), pg_catalog.quote_ident(TG_ARGV[1]),
                CASE WHEN coalesce(new_row, old_row) OPERATOR(pg_catalog.?) TG_ARGV[1] THEN 'null'
                     ELSE 'not in the row (renamed or dropped)' END);
        END IF;
    END IF;

    INSERT INTO %1$I.observer_change_log (entity_type, entity_id, operation, tenant_id, user_id, before, after)
    VALUES (
        TG_ARGV[0],
        key,
        pg_catalog.lower(TG_OP),
        coalesce(coalesce(new_row, old_row) OPERATOR(pg_catalog.->>) TG_ARGV[2],
                 CASE WHEN pg_catalog.current_setting('observers.tenant_id', true)
                               OPERATOR(pg_catalog.<>) ''
                      THEN pg_catalog.current_setting('observers.tenant_id', true) END),
        CASE WHEN pg_catalog.current_setting('observers.user_id', true) OPERATOR(pg_catalog.<>) ''
             THEN pg_catalog.current_setting('observers.user_id', true) END,
        old_row,
        new_row
    );

    IF key_error IS NOT NULL THEN
        -- currval: the id this session just drew for the row above.
        INSERT INTO %1$I.observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0],
                pg_catalog.currval(%2$L::pg_catalog.regclass), key_error);
    END IF;
    IF old_unfit IS NOT NULL OR new_unfit IS NOT NULL THEN
        INSERT INTO %1$I.observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0],
                pg_catalog.currval(%2$L::pg_catalog.regclass),
                pg_catalog.format(
                    'kept json column(s) %%s of this %%s as JSON strings of their text: jsonb cannot '
                    'hold their values (an escaped NUL, or a number beyond numeric''s range)',
                    (SELECT pg_catalog.string_agg(pg_catalog.format('"%%s"', c), ', ' ORDER BY c)
                       FROM (SELECT DISTINCT c
                               FROM pg_catalog.unnest(coalesce(old_unfit, '{}')
                                          OPERATOR(pg_catalog.||) coalesce(new_unfit, '{}')) c) u),
                    pg_catalog.lower(TG_OP)));
    END IF;
    RETURN NULL;
END;
$body$
$function$, s, seq);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.observers_capture_json() FROM PUBLIC', s);
END
$migration$;

-- Existing capture triggers of tables that can hold json move to the guarded function.
DO $migration$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT t.tgrelid::pg_catalog.regclass AS rel, t.tgenabled,
                    pg_catalog.pg_get_triggerdef(t.oid) AS def
               FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
              WHERE t.tgname = 'observers_capture' AND p.proname = 'observers_capture'
                AND NOT t.tgisinternal AND observers_holds_json(t.tgrelid)
    LOOP
        EXECUTE format('DROP TRIGGER observers_capture ON %s', r.rel);
        EXECUTE regexp_replace(r.def, 'EXECUTE FUNCTION (\S*)observers_capture\(',
                               'EXECUTE FUNCTION \1observers_capture_json(');
        -- Its state as it was: disabled, or firing always or on replicas only.
        IF r.tgenabled <> 'O' THEN
            EXECUTE format('ALTER TABLE %s %s TRIGGER observers_capture', r.rel,
                           CASE r.tgenabled WHEN 'D' THEN 'DISABLE' WHEN 'A' THEN 'ENABLE ALWAYS'
                                            ELSE 'ENABLE REPLICA' END);
        END IF;
    END LOOP;
END
$migration$;
