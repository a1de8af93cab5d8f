-- The partition count each consumer's checkpoints were last written with. When `observers run`
-- starts with another `[source] partitions`, the consumer's checkpoints are handed over in one
-- transaction (every new partition starts from the lowest old cursor) before any is read.
CREATE TABLE IF NOT EXISTS observer_partition_layouts (
    consumer   text PRIMARY KEY,
    partitions integer NOT NULL CHECK (partitions >= 1),
    changed_by text,
    changed_at timestamptz NOT NULL DEFAULT now()
);
