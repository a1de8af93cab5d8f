//! Redis-backed dedup store, cache backend and health probe. Filled by the observers-redis issue (#4); nothing here yet.
