-- The types a table's columns bottom out in: each column's type, through a domain, or an array's
-- element type (through a domain too). Shared by `observers_holds_json()` (which capture
-- function a table gets, migration 027) and `capture list`'s report of casts to json, which
-- walked the same chain each on its own.
CREATE OR REPLACE FUNCTION observers_column_types(rel pg_catalog.regclass)
RETURNS SETOF pg_catalog.oid
LANGUAGE sql STABLE AS $$
    SELECT coalesce(eb.oid, b.oid)
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
      JOIN pg_catalog.pg_type b
        ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
      LEFT JOIN pg_catalog.pg_type e ON e.oid = b.typelem AND b.typcategory = 'A'
      LEFT JOIN pg_catalog.pg_type eb
        ON eb.oid = CASE WHEN e.typtype = 'd' THEN e.typbasetype ELSE e.oid END
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$$;

-- A column can hold `json`: its type bottoms out in json, or in a composite type.
CREATE OR REPLACE FUNCTION observers_holds_json(rel pg_catalog.regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
          FROM observers_column_types(rel) c(oid)
          JOIN pg_catalog.pg_type ty ON ty.oid = c.oid
         WHERE ty.oid = 'json'::pg_catalog.regtype OR ty.typtype = 'c')
$$;
