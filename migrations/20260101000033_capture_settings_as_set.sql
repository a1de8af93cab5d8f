-- Capture at writer speed, part 5: the capture functions record the session settings
-- `observers.tenant_id` and `observers.user_id` as they are set, and the reader treats an empty
-- value as none. The functions turned '' (what a setting reads after `RESET`, or when set to
-- nothing) into NULL themselves: two more `current_setting` calls and two comparisons per row,
-- about 19,000 server instructions of a single-row insert (callgrind, docs/benchmarks.md).
-- An empty tenant or user id, from a setting or from the tenant column, means none, here as in
-- every event (docs/postgres.md).
--
-- Only the two expressions change, in `observers_capture()` (migration 026) and
-- `observers_capture_json()` (migration 027); `CREATE OR REPLACE` keeps each function's owner,
-- rights and triggers.
DO $migration$
DECLARE
    was_tenant text := $old$
                 CASE WHEN pg_catalog.current_setting('observers.tenant_id', true)
                               OPERATOR(pg_catalog.<>) ''
                      THEN pg_catalog.current_setting('observers.tenant_id', true) END),
        CASE WHEN pg_catalog.current_setting('observers.user_id', true) OPERATOR(pg_catalog.<>) ''
             THEN pg_catalog.current_setting('observers.user_id', true) END,$old$;
    now_tenant text := $new$
                 pg_catalog.current_setting('observers.tenant_id', true)),
        pg_catalog.current_setting('observers.user_id', true),$new$;
    f          text;
    def        text;
BEGIN
    FOREACH f IN ARRAY ARRAY['observers_capture()', 'observers_capture_json()'] LOOP
        def := pg_catalog.pg_get_functiondef(f::pg_catalog.regprocedure);
        IF pg_catalog.strpos(def, was_tenant) = 0 THEN
            RAISE EXCEPTION 'function % is not the one migration 026/027 installed; '
                            'observers migrate cannot update it', f;
        END IF;
        EXECUTE pg_catalog.replace(def, was_tenant, now_tenant);
    END LOOP;
END
$migration$;
