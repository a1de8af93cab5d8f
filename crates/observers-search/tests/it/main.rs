//! Integration tests of observers-search: the backend suite (memory and PostgreSQL, fresh
//! database per test through `#[sqlx::test]`), the indexer, the HTTP router and the
//! Elasticsearch backend against recorded REST fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod es;
mod http;
mod indexer;
mod suite;
mod support;
