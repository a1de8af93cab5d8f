-- Cheaper search indexing (observers-search): one index fewer per write.
-- observer_events_entity (entity_type, entity_id, timestamp DESC), from migration 2, is covered
-- by observer_events_entity_id (entity_id, timestamp DESC) for an entity's history (an entity id
-- is shared by few entity types) and by observer_events_entity_time for an entity type.
DROP INDEX IF EXISTS observer_events_entity;
-- Rows written from now on carry their words as lexemes without positions (the indexer builds
-- the tsvector from the words it cut; see crates/observers-search/src/postgres/write.rs).
-- Existing rows keep theirs: queries match both the same way.
