//! How core reports what it does. Only observers-metrics knows Prometheus; core emits these
//! small events through the `Telemetry` trait and stays free of any metrics library.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Circuit-breaker states, as reported in telemetry and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The outcome of one action for one event, after retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    Success,
    /// Failed after its retries (or permanently) and went to the dead-letter queue.
    DeadLettered,
    /// Rejected by an open circuit breaker and dead-lettered without a network call.
    ShortCircuited,
    /// Handed to the job queue (mode = "queued").
    Queued,
    /// Skipped: the action is disabled (e.g. after 410 Gone).
    Skipped,
}

impl ActionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Success => "success",
            ActionOutcome::DeadLettered => "dead_lettered",
            ActionOutcome::ShortCircuited => "short_circuited",
            ActionOutcome::Queued => "queued",
            ActionOutcome::Skipped => "skipped",
        }
    }
}

/// A notable thing that happened. Labels are bounded: observer names and action types come from
/// config, endpoints are hosts.
#[derive(Debug, Clone)]
pub enum TelemetryEvent<'a> {
    EventProcessed {
        entity_type: &'a str,
        matched: usize,
        /// Actions that failed for good (dead-lettered or short-circuited).
        failed: usize,
        duration: Duration,
    },
    EventDeduplicated {
        entity_type: &'a str,
    },
    ConditionFailed {
        observer: &'a str,
        error: &'a str,
    },
    ActionFinished {
        observer: &'a str,
        action_type: &'a str,
        outcome: ActionOutcome,
        attempts: u32,
        duration: Duration,
    },
    ActionRetried {
        observer: &'a str,
        action_type: &'a str,
        attempt: u32,
        delay: Duration,
    },
    DeadLettered {
        observer: &'a str,
        action_type: &'a str,
    },
    BreakerTransition {
        endpoint: &'a str,
        from: BreakerState,
        to: BreakerState,
    },
    BreakerRejected {
        endpoint: &'a str,
    },
    BatchProcessed {
        listener: &'a str,
        size: usize,
        duration: Duration,
    },
    CheckpointSaved {
        listener: &'a str,
        duration: Duration,
    },
    /// Saving the checkpoint failed; the position is kept in memory and the next batch's save
    /// retries it.
    CheckpointSaveFailed {
        listener: &'a str,
        error: &'a str,
    },
    /// A checkpoint write was refused by fencing: this instance no longer holds the lease.
    CheckpointFenced {
        listener: &'a str,
    },
    /// A listener stopped with an error (not a shutdown, not a lost lease).
    ListenerFailed {
        listener: &'a str,
        error: &'a str,
    },
    /// Reading the source failed; the listener waits `backoff` before the next attempt.
    ListenerError {
        listener: &'a str,
        error: &'a str,
        backoff: Duration,
    },
    /// Reading the source works again after failures; `backoff` was the last wait.
    ListenerReconnected {
        listener: &'a str,
        backoff: Duration,
    },
    PoisonEvent {
        listener: &'a str,
        id: i64,
    },
    /// Age of the oldest open write transaction holding the cursor back.
    CutoffLag {
        listener: &'a str,
        lag: Duration,
    },
    CommitToDispatch {
        entity_type: &'a str,
        latency: Duration,
    },
    SourceBacklog {
        listener: &'a str,
        rows: u64,
    },
    /// A store started serving from its fallback (e.g. Redis down, in-memory store in use).
    FallbackActivated {
        backend: &'a str,
        reason: &'a str,
    },
    /// One operation served by the fallback instead of the primary.
    FallbackServed {
        backend: &'a str,
    },
    /// One operation failed on the primary (error or timeout).
    PrimaryFailed {
        backend: &'a str,
    },
    /// Writes made on the fallback that wait to be replayed to the primary (sampled at every
    /// health check).
    ReplayBacklog {
        backend: &'a str,
        pending: usize,
    },
    /// The primary store serves again; `outage` is how long the fallback was in use.
    FallbackRecovered {
        backend: &'a str,
        outage: Duration,
    },
    /// One health probe of a store's primary backend.
    HealthCheck {
        backend: &'a str,
        healthy: bool,
        latency: Duration,
    },
    /// The health monitor's verdict changed (after the configured consecutive probes).
    HealthStateChanged {
        backend: &'a str,
        healthy: bool,
    },
    /// Writes made on the fallback, replayed to the primary after it recovered.
    FallbackReplayed {
        backend: &'a str,
        items: usize,
    },
    /// An action result served from the cache (the action did not run).
    CacheHit {
        action_type: &'a str,
    },
    CacheMiss {
        action_type: &'a str,
    },
    /// Cached action results invalidated (by the `cache` action or an operator).
    CacheEviction {
        action_type: &'a str,
        entries: u64,
    },
    /// HA: live instances of the group, as this instance sees them.
    HaListenersActive {
        group: &'a str,
        count: usize,
    },
    /// HA: the leader recorded that `failed_instance` stopped heartbeating.
    HaFailover {
        group: &'a str,
        failed_instance: &'a str,
        partitions: usize,
    },
    /// HA: partition leases this instance holds.
    HaLeasesHeld {
        group: &'a str,
        instance: &'a str,
        count: usize,
    },
    /// HA: this instance became the group leader under `epoch`.
    HaLeaderElected {
        group: &'a str,
        leader: &'a str,
        epoch: i64,
    },
    /// HA: this instance no longer leads the group (its leader lease went to another or lapsed).
    HaLeadershipLost {
        group: &'a str,
        instance: &'a str,
    },
    /// HA: rows of a partition after its cursor, and the age of the oldest of them.
    HaCheckpointLag {
        listener: &'a str,
        rows: u64,
        lag: Duration,
    },
    /// HA: one renewal of a partition lease: `ok`, `lost` (refused: expired or taken over) or
    /// `error` (the store did not answer).
    HaLeaseRenewed {
        group: &'a str,
        partition: u32,
        outcome: &'static str,
    },
    /// HA: a partition lease this instance held ended (released, lost or fenced) after `held`.
    HaLeaseEnded {
        group: &'a str,
        partition: u32,
        held: Duration,
    },
    /// HA: this instance lost a partition lease (or a save was fenced) and stopped its listener.
    HaSteppedDown {
        group: &'a str,
        partition: u32,
    },
    /// A job was enqueued (not a duplicate of an existing one).
    JobEnqueued {
        queue: &'a str,
    },
    /// One indexing request to a search backend: `events` events, written or not (`ok`).
    SearchIndexed {
        backend: &'a str,
        ok: bool,
        events: usize,
        duration: Duration,
    },
    /// One search query answered (or failed) by a search backend.
    SearchQueried {
        backend: &'a str,
        duration: Duration,
    },
    /// A queued job's run ended: `completed`, `retried` (it runs again later) or `failed` (for
    /// good; a DLQ item was written).
    JobFinished {
        queue: &'a str,
        outcome: &'static str,
        duration: Duration,
    },
}

impl TelemetryEvent<'_> {
    /// A short stable name for the event kind, used by aggregating sinks.
    pub fn name(&self) -> &'static str {
        match self {
            TelemetryEvent::EventProcessed { .. } => "event_processed",
            TelemetryEvent::EventDeduplicated { .. } => "event_deduplicated",
            TelemetryEvent::ConditionFailed { .. } => "condition_failed",
            TelemetryEvent::ActionFinished { .. } => "action_finished",
            TelemetryEvent::ActionRetried { .. } => "action_retried",
            TelemetryEvent::DeadLettered { .. } => "dead_lettered",
            TelemetryEvent::BreakerTransition { .. } => "breaker_transition",
            TelemetryEvent::BreakerRejected { .. } => "breaker_rejected",
            TelemetryEvent::BatchProcessed { .. } => "batch_processed",
            TelemetryEvent::CheckpointSaved { .. } => "checkpoint_saved",
            TelemetryEvent::CheckpointSaveFailed { .. } => "checkpoint_save_failed",
            TelemetryEvent::CheckpointFenced { .. } => "checkpoint_fenced",
            TelemetryEvent::ListenerFailed { .. } => "listener_failed",
            TelemetryEvent::ListenerError { .. } => "listener_error",
            TelemetryEvent::ListenerReconnected { .. } => "listener_reconnected",
            TelemetryEvent::PoisonEvent { .. } => "poison_event",
            TelemetryEvent::CutoffLag { .. } => "cutoff_lag",
            TelemetryEvent::CommitToDispatch { .. } => "commit_to_dispatch",
            TelemetryEvent::SourceBacklog { .. } => "source_backlog",
            TelemetryEvent::FallbackActivated { .. } => "fallback_activated",
            TelemetryEvent::FallbackServed { .. } => "fallback_served",
            TelemetryEvent::PrimaryFailed { .. } => "primary_failed",
            TelemetryEvent::ReplayBacklog { .. } => "replay_backlog",
            TelemetryEvent::FallbackRecovered { .. } => "fallback_recovered",
            TelemetryEvent::HealthCheck { .. } => "health_check",
            TelemetryEvent::HealthStateChanged { .. } => "health_state_changed",
            TelemetryEvent::FallbackReplayed { .. } => "fallback_replayed",
            TelemetryEvent::CacheHit { .. } => "cache_hit",
            TelemetryEvent::CacheMiss { .. } => "cache_miss",
            TelemetryEvent::CacheEviction { .. } => "cache_eviction",
            TelemetryEvent::HaListenersActive { .. } => "ha_listeners_active",
            TelemetryEvent::HaFailover { .. } => "ha_failover",
            TelemetryEvent::HaLeasesHeld { .. } => "ha_leases_held",
            TelemetryEvent::HaLeaderElected { .. } => "ha_leader_elected",
            TelemetryEvent::HaLeadershipLost { .. } => "ha_leadership_lost",
            TelemetryEvent::HaCheckpointLag { .. } => "ha_checkpoint_lag",
            TelemetryEvent::HaLeaseRenewed { .. } => "ha_lease_renewed",
            TelemetryEvent::HaLeaseEnded { .. } => "ha_lease_ended",
            TelemetryEvent::HaSteppedDown { .. } => "ha_stepped_down",
            TelemetryEvent::JobEnqueued { .. } => "job_enqueued",
            TelemetryEvent::SearchIndexed { .. } => "search_indexed",
            TelemetryEvent::SearchQueried { .. } => "search_queried",
            TelemetryEvent::JobFinished { .. } => "job_finished",
        }
    }
}

/// Receives telemetry. Implementations must be cheap and must not block: they run on the hot path.
pub trait Telemetry: Send + Sync {
    fn emit(&self, event: &TelemetryEvent<'_>);
}

/// Discards everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTelemetry;

impl Telemetry for NoopTelemetry {
    fn emit(&self, _event: &TelemetryEvent<'_>) {}
}

/// Counts events by name (and action outcomes by `observer/action_type/outcome`); the embedded
/// telemetry for library users and the source of the summary `observers demo` prints.
#[derive(Debug, Default)]
pub struct CountingTelemetry {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl CountingTelemetry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn count(&self, key: &str) -> u64 {
        self.counts
            .lock()
            .map_or(0, |c| c.get(key).copied().unwrap_or(0))
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Telemetry for CountingTelemetry {
    fn emit(&self, event: &TelemetryEvent<'_>) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        *counts.entry(event.name().to_owned()).or_default() += 1;
        match event {
            TelemetryEvent::ActionFinished {
                observer,
                action_type,
                outcome,
                ..
            } => {
                *counts
                    .entry(format!(
                        "action/{observer}/{action_type}/{}",
                        outcome.as_str()
                    ))
                    .or_default() += 1;
            }
            TelemetryEvent::BreakerTransition { endpoint, to, .. } => {
                *counts
                    .entry(format!("breaker/{endpoint}/{}", to.as_str()))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
}

/// Fans one event out to several sinks.
#[derive(Default)]
pub struct FanoutTelemetry {
    sinks: Vec<Arc<dyn Telemetry>>,
}

impl FanoutTelemetry {
    pub fn new(sinks: Vec<Arc<dyn Telemetry>>) -> Self {
        Self { sinks }
    }
}

impl Telemetry for FanoutTelemetry {
    fn emit(&self, event: &TelemetryEvent<'_>) {
        for sink in &self.sinks {
            sink.emit(event);
        }
    }
}

pub type SharedTelemetry = Arc<dyn Telemetry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_telemetry_counts_by_name_and_outcome() {
        let t = CountingTelemetry::new();
        let ev = TelemetryEvent::ActionFinished {
            observer: "o",
            action_type: "webhook",
            outcome: ActionOutcome::Success,
            attempts: 1,
            duration: Duration::ZERO,
        };
        t.emit(&ev);
        t.emit(&ev);
        assert_eq!(t.count("action_finished"), 2);
        assert_eq!(t.count("action/o/webhook/success"), 2);
        assert_eq!(t.count("dead_lettered"), 0);
    }
}
