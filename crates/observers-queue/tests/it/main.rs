//! Integration tests of observers-queue: the `JobQueue` suite shared by the in-memory and the
//! PostgreSQL queue, and the worker pool against a real PostgreSQL (`DATABASE_URL`; each test
//! gets a fresh database with the migrations applied, through `#[sqlx::test]`), and the upgrade
//! of a database with jobs in the layout before migration 007.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod depth;
mod limits;
mod ordering;
mod suite;
mod support;
mod upgrade;
mod workers;
