-- Full-text search over the audit log of processed events (observers-search).
-- `search` holds the words of the event (see observers_core::stores::search::search_tokens),
-- written by the indexer with to_tsvector('simple', ...); queries match each word as a prefix.
ALTER TABLE observer_events ADD COLUMN IF NOT EXISTS search tsvector NOT NULL DEFAULT ''::tsvector;

-- fastupdate (the default, stated here on purpose): new entries go to a pending list merged in
-- bulk, which keeps the GIN index cheap for the indexer's batch writes.
CREATE INDEX IF NOT EXISTS observer_events_search ON observer_events USING gin (search) WITH (fastupdate = on);
-- Indexes in timestamp order for the filters a query starts from, so that a page and the
-- bounded counts (newest matches first) read only the rows they return. Event type alone is
-- served by observer_events_timestamp (one event in three matches); entity type + entity id by
-- observer_events_entity (migration 2).
-- The entity-type index carries what the bounded facet count reads (index-only scan).
CREATE INDEX IF NOT EXISTS observer_events_entity_time ON observer_events (entity_type, timestamp DESC, event_id DESC) INCLUDE (event_type);
CREATE INDEX IF NOT EXISTS observer_events_tenant ON observer_events (tenant_id, entity_type, timestamp DESC) WHERE tenant_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS observer_events_entity_id ON observer_events (entity_id, timestamp DESC);
