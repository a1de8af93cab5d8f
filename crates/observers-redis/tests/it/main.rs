//! Integration tests: one suite per trait, run against the in-memory store and real Redis.
//!
//! Redis comes from `REDIS_URL` (default `redis://127.0.0.1:6379`). Each test uses its own random
//! key prefix, so tests never collide. Without a reachable Redis the Redis half is skipped with a
//! message, unless `CI` is set, in which case it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod dedup;
mod fallback;
mod support;
