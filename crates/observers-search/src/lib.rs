//! Search backends (PostgreSQL full-text, Elasticsearch) and the event search indexer. Filled by the observers-search issue (#6); nothing here yet.
