//! Observers core: domain types, configuration, the condition language, the matcher, the
//! executor, actions, retry and circuit breaking, every storage trait and an in-memory
//! implementation of each. This crate does no database or Redis IO of its own.
#![forbid(unsafe_code)]

pub mod actions;
pub mod breaker;
pub mod clock;
pub mod condition;
pub mod config;
pub mod debezium;
pub mod error;
pub mod event;
pub mod executor;
pub mod listener;
pub mod matcher;
pub mod numbers;
pub mod redact;
pub mod retry;
pub mod schedule;
pub mod stores;
pub mod telemetry;
pub mod template;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod text;

pub use error::{ObserverError, Result};
pub use event::{Cursor, EntityEvent, EventKind, FieldChange};
pub use executor::{ExecutionSummary, ObserverExecutor, ObserverSet};
