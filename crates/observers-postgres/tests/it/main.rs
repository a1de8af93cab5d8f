//! Integration tests of observers-postgres against a real PostgreSQL (`DATABASE_URL`); each
//! test gets a fresh database with the migrations applied (`#[sqlx::test]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backfill;
mod capture;
mod changelog;
mod checkpoint;
mod dedup;
mod dlq;
mod ordering;
mod source;
mod wal;
mod wal_direct;
