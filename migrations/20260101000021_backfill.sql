-- `observers capture backfill`: the progress of each backfill, so an interrupted one resumes.
--
-- One row per captured table and filter (`--where`, '' for none). Each batch inserts its rows
-- into the change log (kind `read`) and moves `last_key` in the same transaction, so a batch is
-- either logged and counted or neither: a rerun continues after `last_key` with no duplicate
-- and no gap. `key_columns` is the primary key the batches page through; `last_key` holds its
-- values (a JSON array) for the last row emitted.
CREATE TABLE IF NOT EXISTS observer_backfills (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    filter       text NOT NULL DEFAULT '',
    entity_type  text NOT NULL,
    key_columns  text[] NOT NULL,
    last_key     jsonb,
    rows_emitted bigint NOT NULL DEFAULT 0,
    batches      bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    UNIQUE (table_schema, table_name, filter)
);
