-- The capture functions run with their owner's rights (SECURITY DEFINER), and inside them
-- `to_jsonb` calls any cast to json defined for a column's type, which the type's owner may
-- create. So the functions get an owner of their own, the NOLOGIN role `observers_capture_owner`,
-- with INSERT on the change log and the capture errors (and the sequences those need) and
-- nothing else: a cast's function can then do no more than a capture could.
--
-- Creating the role needs CREATEROLE (or a superuser). Without it, and without the role made
-- beforehand (CREATE ROLE observers_capture_owner NOLOGIN; GRANT observers_capture_owner TO
-- observers; GRANT CREATE ON SCHEMA public TO observers_capture_owner;), the functions keep
-- their owner and a NOTICE says so; once the role exists, SELECT observers_capture_reown().
CREATE OR REPLACE FUNCTION observers_capture_reown() RETURNS boolean
LANGUAGE plpgsql AS $reown$
DECLARE
    s     text := (SELECT n.nspname
                     FROM pg_catalog.pg_class c
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.oid = 'observer_change_log'::regclass);
    owner text := 'observers_capture_owner';
    f     text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = owner) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', owner);
        EXCEPTION
            -- Another database's migration made it meanwhile.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'the capture functions keep their owner: role % does not exist and % may not create it (see docs/postgres.md, "Casts to json")', owner, current_user;
                RETURN false;
        END;
    END IF;
    IF NOT pg_catalog.pg_has_role(owner, 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT %I TO %I', owner, current_user);
        EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
            RAISE NOTICE 'the capture functions keep their owner: % is not a member of % (GRANT % TO %)', current_user, owner, owner, current_user;
            RETURN false;
        END;
    END IF;
    BEGIN
        EXECUTE format('GRANT INSERT ON %I.observer_change_log, %I.observer_capture_errors TO %I',
                       s, s, owner);
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s, %s TO %I',
                       pg_catalog.pg_get_serial_sequence(format('%I.observer_change_log', s), 'id'),
                       pg_catalog.pg_get_serial_sequence(format('%I.observer_capture_errors', s), 'id'),
                       owner);
        -- ALTER ... OWNER needs the new owner to have CREATE on the schema: granted for the
        -- moment (a role without the grant option on it gets a warning and grants nothing;
        -- then the ALTER fails below, and everything in this block is undone).
        EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', s, owner);
        FOREACH f IN ARRAY ARRAY['observers_capture()', 'observers_capture_json()',
                                 'observers_capture_truncate()',
                                 'observers_jsonb_fitting(anyelement, pg_catalog.regclass)'] LOOP
            EXECUTE format('ALTER FUNCTION %I.%s OWNER TO %I', s, f, owner);
        END LOOP;
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM %I', s, owner);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'the capture functions keep their owner: % cannot hand them to % (%; see docs/postgres.md, "Casts to json")', current_user, owner, SQLERRM;
        RETURN false;
    END;
    RETURN true;
END;
$reown$;

REVOKE ALL ON FUNCTION observers_capture_reown() FROM PUBLIC;

SELECT observers_capture_reown();
