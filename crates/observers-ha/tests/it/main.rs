//! Integration tests of observers-ha against a real PostgreSQL (`DATABASE_URL`); each test gets
//! a fresh database with the migrations applied (`#[sqlx::test]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod coordinator;
mod lease;
mod partition;
