-- Full-text search over the audit log of processed events (observers-search).
-- `search` holds the words of the event (see observers_core::stores::search::search_tokens),
-- written by the indexer with to_tsvector('simple', ...); queries match each word as a prefix.
ALTER TABLE observer_events ADD COLUMN IF NOT EXISTS search tsvector NOT NULL DEFAULT ''::tsvector;

CREATE INDEX IF NOT EXISTS observer_events_search ON observer_events USING gin (search);
CREATE INDEX IF NOT EXISTS observer_events_type ON observer_events (event_type, timestamp DESC);
CREATE INDEX IF NOT EXISTS observer_events_facets ON observer_events (entity_type, event_type);
CREATE INDEX IF NOT EXISTS observer_events_tenant ON observer_events (tenant_id, timestamp DESC) WHERE tenant_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS observer_events_entity_id ON observer_events (entity_id, timestamp DESC);
