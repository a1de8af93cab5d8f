//! High availability for Observers: fenced leases in PostgreSQL (`observer_leases`), the
//! listener state machine, the group coordinator (`observer_listeners`), failover detection,
//! balanced partition assignment, and `HaRuntime`, which runs one listener per held partition
//! with checkpoint saves fenced by the partition lease (docs/ha.md).
#![forbid(unsafe_code)]

pub mod assignment;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod failover;
pub mod lease;
pub mod partition;
pub mod runtime;
pub mod state;
pub mod status;

pub use config::MultiListenerConfig;
pub use coordinator::{InstanceRecord, ListenerHealth, MultiListenerCoordinator};
pub use error::HaError;
pub use failover::{FailoverEvent, FailoverManager};
pub use lease::PostgresLeaseStore;
pub use runtime::{HaRunSummary, HaRuntime};
pub use state::{ListenerState, ListenerStateMachine};
pub use status::GroupStatus;
