//! `ObserverMetrics`: every metric family Observers exports, registered once in one
//! prometheus-client registry. Names start with `observer_`; durations are histograms in
//! seconds; labels are bounded (entity type, observer, action type, outcome, endpoint host,
//! listener, queue, backend, store). docs/monitoring.md lists each family.
//!
//! Core's telemetry reaches these through `impl Telemetry for ObserverMetrics` (telemetry.rs),
//! which calls one plain method per fact below; the gauges read from the database are set by
//! the CLI's poller through the same methods.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::handles::{Arena, Handles};
use crate::sharded::{self, Shard, ShardedCounter, ShardedHistogram as Histogram};

pub(crate) type L1 = [(&'static str, String); 1];
pub(crate) type L2 = [(&'static str, String); 2];
pub(crate) type L3 = [(&'static str, String); 3];
pub(crate) type FGauge = Gauge<f64, AtomicU64>;
pub(crate) type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Most distinct values one label may take in a family before new ones fold into `"other"`.
pub const MAX_LABEL_VALUES: usize = 1000;

/// Buckets of every latency histogram, in seconds (0.5 ms .. 60 s).
pub static LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of lease hold times, in seconds (1 s .. 1 day).
pub static LEASE_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
];

pub(crate) fn latency() -> Histogram {
    Histogram::new(&LATENCY_BUCKETS)
}

pub(crate) fn l1(k: &'static str, v: &str) -> L1 {
    [(k, v.to_owned())]
}

pub(crate) fn l2(k1: &'static str, v1: &str, k2: &'static str, v2: &str) -> L2 {
    [(k1, v1.to_owned()), (k2, v2.to_owned())]
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Completed,
    /// Failed this attempt; it will run again later.
    Retried,
    /// Failed for good; a DLQ item was written.
    Failed,
}

/// Handles of one (observer, action type) pair, resolved once.
pub(crate) struct ActionHandles {
    pub observer: Box<str>,
    pub action_type: Box<str>,
    /// By `ActionOutcome` in declaration order (see `outcome_index`).
    pub outcomes: [ShardedCounter; 5],
    pub failed: ShardedCounter,
    pub retries: Counter,
    pub retries_successful: Counter,
    pub retries_exhausted: Counter,
    pub dead_lettered: Counter,
    pub duration: Histogram,
}

/// Handles of one entity type.
pub(crate) struct EntityHandles {
    pub key: Box<str>,
    pub processed: ShardedCounter,
    pub failed: ShardedCounter,
    pub deduplicated: Counter,
}

/// The action handles of one observer (its effective label value, after the cap).
pub(crate) struct ObserverActions {
    pub observer: Box<str>,
    /// Index in `ObserverMetrics::action_arena`, by action type.
    pub per_type: Handles<u32>,
}

/// Entries of the per-thread cache of action handles.
const ACTION_SLOTS: usize = 4;

/// (instance id, arena index) pairs; id 0 is no instance (ids start at 1).
type ActionSlots = [(u64, u32); ACTION_SLOTS];

thread_local! {
    // Per-thread caches in front of the shared maps: the last entity type and the last few
    // (observer, action type) pairs, as arena indexes keyed by the `ObserverMetrics` instance
    // id. Plain `Copy` cells without destructors: reading one is a load that cannot fail. A hit
    // costs a string comparison; a miss falls back to the lock-free maps.
    static LAST_ENTITY: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
    static LAST_ACTIONS: Cell<ActionSlots> = const { Cell::new([(0, 0); ACTION_SLOTS]) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// String equality for the per-thread caches' keys (entity types, observer names, action
/// types: mostly under 16 bytes). Up to 16 bytes it compares in registers, two overlapping
/// words, instead of calling `memcmp`, which was a quarter of the hot path's instructions.
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_ne_bytes)
    };
    let half = |s: &[u8], at: usize| {
        s.get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map(u32::from_ne_bytes)
    };
    match n {
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        // Under 4 bytes or over 16.
        _ => a == b,
    }
}

/// Handles of one listener.
pub(crate) struct ListenerHandles {
    pub batches: Counter,
    pub events: Counter,
    pub batch_duration: Histogram,
    pub errors: Counter,
    pub consecutive_errors: Gauge,
    pub backoff: FGauge,
    pub reconnects: Counter,
    pub poison: Counter,
    pub checkpoint_saves: Counter,
    pub checkpoint_duration: Histogram,
    pub cutoff_lag: FGauge,
    pub backlog: Gauge,
}

/// Every metric family, and the caches of pre-resolved handles of the hot path.
pub struct ObserverMetrics {
    /// Unique per instance, so per-thread caches never serve another instance's handles.
    pub(crate) id: u64,
    pub(crate) registry: Registry,

    // Events and matching.
    pub(crate) events_processed: Family<L1, ShardedCounter>,
    pub(crate) events_failed: Family<L1, ShardedCounter>,
    pub(crate) events_deduplicated: Family<L1, Counter>,
    pub(crate) event_duration: Histogram,
    pub(crate) observers_matched: ShardedCounter,
    pub(crate) observers_matched_zero: ShardedCounter,
    pub(crate) condition_errors: Family<L1, Counter>,
    pub(crate) observers_registered: Gauge,

    // Actions, retries, DLQ.
    pub(crate) actions_executed: Family<L3, ShardedCounter>,
    pub(crate) actions_failed: Family<L2, ShardedCounter>,
    pub(crate) action_duration: HistFamily<L1>,
    pub(crate) retries: Family<L2, Counter>,
    pub(crate) retries_successful: Family<L2, Counter>,
    pub(crate) retries_exhausted: Family<L2, Counter>,
    pub(crate) retry_delay: Histogram,
    pub(crate) dlq_items_total: Family<L2, Counter>,
    pub(crate) dlq_items: Gauge,

    // Circuit breakers.
    pub(crate) breaker_state: Family<L1, Gauge>,
    pub(crate) breaker_transitions: Family<L2, Counter>,
    pub(crate) breaker_rejections: Family<L1, Counter>,

    // Listener, checkpoints, source.
    pub(crate) batches: Family<L1, Counter>,
    pub(crate) listener_events: Family<L1, Counter>,
    pub(crate) batch_duration: HistFamily<L1>,
    pub(crate) listener_errors: Family<L1, Counter>,
    pub(crate) listener_consecutive_errors: Family<L1, Gauge>,
    pub(crate) listener_backoff: Family<L1, FGauge>,
    pub(crate) listener_reconnects: Family<L1, Counter>,
    pub(crate) poison_events: Family<L1, Counter>,
    pub(crate) checkpoint_saves: Family<L1, Counter>,
    pub(crate) checkpoint_save_duration: HistFamily<L1>,
    pub(crate) checkpoint_save_errors: Family<L1, Counter>,
    pub(crate) checkpoint_lag: Family<L1, FGauge>,
    pub(crate) cutoff_lag: Family<L1, FGauge>,
    pub(crate) source_backlog: Family<L1, Gauge>,
    pub(crate) commit_to_dispatch: Histogram,

    // Cache (observers-redis and the in-memory cache).
    pub(crate) cache_hits: Family<L1, Counter>,
    pub(crate) cache_misses: Family<L1, Counter>,
    pub(crate) cache_evictions: Family<L1, Counter>,

    // Redis fallback and health (seed 004).
    pub(crate) fallback_invocations: Family<L1, Counter>,
    pub(crate) fallback_active: Family<L1, Gauge>,
    pub(crate) primary_failures: Family<L1, Counter>,
    pub(crate) health_check_duration: HistFamily<L1>,
    pub(crate) health_check_consecutive_failures: Family<L1, Gauge>,
    pub(crate) sync_operations: Family<L2, Counter>,
    pub(crate) sync_queue: Family<L1, Gauge>,

    // Job queue.
    pub(crate) jobs_enqueued: Family<L1, Counter>,
    pub(crate) jobs_pending: Family<L1, Gauge>,
    pub(crate) jobs_processing: Family<L1, Gauge>,
    pub(crate) jobs_completed: Family<L1, Counter>,
    pub(crate) jobs_retried: Family<L1, Counter>,
    pub(crate) jobs_failed: Family<L1, Counter>,
    pub(crate) job_duration: HistFamily<L1>,

    // HA: listeners, leases, elections, failover, partitions.
    pub(crate) ha_enabled: Gauge,
    pub(crate) listeners_active: Gauge,
    pub(crate) listeners_failed: Counter,
    pub(crate) failovers: Counter,
    pub(crate) leader_elections: Counter,
    pub(crate) leader: Gauge,
    pub(crate) checkpoint_leases_held: Gauge,
    pub(crate) lease_duration: Histogram,
    pub(crate) lease_renewals: Family<L1, Counter>,
    pub(crate) fenced_writes: Family<L1, Counter>,
    pub(crate) partitions_owned: Gauge,

    // Search indexing.
    pub(crate) search_indexed: Family<L2, Counter>,
    pub(crate) search_index_duration: HistFamily<L1>,
    pub(crate) search_queries: Family<L1, Counter>,
    pub(crate) search_query_duration: HistFamily<L1>,

    // Retention (`[retention]`, applied by `observers run`).
    pub(crate) retention_deleted: Family<L1, Counter>,
    pub(crate) retention_oldest_age: Family<L1, FGauge>,

    // The WAL source (`[source] kind = "wal"`).
    pub(crate) wal_relayed: Family<L1, Counter>,
    pub(crate) wal_slot_lag: Family<L1, Gauge>,
    pub(crate) wal_slot_retained: Family<L1, Gauge>,

    // Hot-path handle caches.
    /// Arena index of each entity type's handles.
    pub(crate) entity_handles: Handles<u32>,
    pub(crate) entity_arena: Arena<EntityHandles>,
    pub(crate) action_handles: Handles<ObserverActions>,
    pub(crate) action_arena: Arena<ActionHandles>,
    pub(crate) listener_handles: Handles<ListenerHandles>,
    pub(crate) rejection_handles: Handles<Counter>,
}

impl std::fmt::Debug for ObserverMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserverMetrics").finish_non_exhaustive()
    }
}

impl Default for ObserverMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn hist_family<L: Clone + std::hash::Hash + Eq>() -> HistFamily<L> {
    Family::new_with_constructor(latency as fn() -> Histogram)
}

impl ObserverMetrics {
    /// Every family registered, empty.
    #[allow(clippy::too_many_lines)] // one registration per family, in one readable list
    pub fn new() -> Self {
        let mut r = Registry::default();
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                r.register($name, $help, m.clone());
                m
            }};
            ($name:literal, $help:literal, seconds, $metric:expr) => {{
                let m = $metric;
                r.register_with_unit($name, $help, Unit::Seconds, m.clone());
                m
            }};
            ($name:literal, $help:literal, bytes, $metric:expr) => {{
                let m = $metric;
                r.register_with_unit($name, $help, Unit::Bytes, m.clone());
                m
            }};
        }
        let info: Family<L1, Gauge> = Family::default();
        info.get_or_create(&l1("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        r.register(
            "observer_build_info",
            "Build of this instance (value is always 1)",
            info,
        );
        // Written on every event together: one block of cells.
        let (event_duration, [matched, matched_zero]) = Histogram::with_counters(&LATENCY_BUCKETS);
        Self {
            events_processed: reg!(
                "observer_events_processed",
                "Events run through the executor, by entity type",
                Family::default()
            ),
            events_failed: reg!(
                "observer_events_failed",
                "Events with at least one action that failed for good (dead-lettered or short-circuited), by entity type",
                Family::default()
            ),
            events_deduplicated: reg!(
                "observer_events_deduplicated",
                "Events skipped because they were already processed within the dedup window",
                Family::default()
            ),
            event_duration: reg!(
                "observer_event_processing_duration",
                "Time to process one event: match, conditions and all its actions",
                seconds,
                event_duration
            ),
            observers_matched: reg!(
                "observer_observers_matched",
                "Observers matched (entity, kind, tenant and condition), summed over events",
                matched
            ),
            observers_matched_zero: reg!(
                "observer_observers_matched_zero",
                "Events that matched no observer",
                matched_zero
            ),
            condition_errors: reg!(
                "observer_condition_errors",
                "Conditions that failed to evaluate (the observer was skipped), by observer",
                Family::default()
            ),
            observers_registered: reg!(
                "observer_observers_registered",
                "Observers in the running config",
                Gauge::default()
            ),
            actions_executed: reg!(
                "observer_actions_executed",
                "Actions finished, after retries, by observer, action type and outcome",
                Family::default()
            ),
            actions_failed: reg!(
                "observer_actions_failed",
                "Actions that failed after retries (dead-lettered or short-circuited)",
                Family::default()
            ),
            action_duration: reg!(
                "observer_action_duration",
                "Time of one action including its retries, by action type",
                seconds,
                hist_family()
            ),
            retries: reg!(
                "observer_retries",
                "Action attempts retried",
                Family::default()
            ),
            retries_successful: reg!(
                "observer_retries_successful",
                "Actions that succeeded after at least one retry",
                Family::default()
            ),
            retries_exhausted: reg!(
                "observer_retries_exhausted",
                "Actions dead-lettered after at least one retry",
                Family::default()
            ),
            retry_delay: reg!(
                "observer_retry_delay",
                "Backoff slept before a retry",
                seconds,
                latency()
            ),
            dlq_items_total: reg!(
                "observer_dlq_items",
                "Items written to the dead-letter queue, by observer and action type (source: undecodable rows)",
                Family::default()
            ),
            dlq_items: reg!(
                "observer_dlq_pending_items",
                "Pending items in the dead-letter queue (polled from the store)",
                Gauge::default()
            ),
            breaker_state: reg!(
                "observer_circuit_breaker_state",
                "Circuit breaker state per endpoint: 0 closed, 1 open, 2 half-open",
                Family::default()
            ),
            breaker_transitions: reg!(
                "observer_circuit_breaker_transitions",
                "Circuit breaker state changes, by endpoint and new state",
                Family::default()
            ),
            breaker_rejections: reg!(
                "observer_circuit_breaker_rejections",
                "Calls rejected by an open (or saturated half-open) breaker",
                Family::default()
            ),
            batches: reg!(
                "observer_listener_batches",
                "Batches read and processed, by listener",
                Family::default()
            ),
            listener_events: reg!(
                "observer_listener_events",
                "Events completed by the listener (checkpointable), by listener",
                Family::default()
            ),
            batch_duration: reg!(
                "observer_listener_batch_duration",
                "Time to process one batch",
                seconds,
                hist_family()
            ),
            listener_errors: reg!(
                "observer_listener_errors",
                "Failed reads of the source",
                Family::default()
            ),
            listener_consecutive_errors: reg!(
                "observer_listener_consecutive_errors",
                "Failed reads since the last processed batch",
                Family::default()
            ),
            listener_backoff: reg!(
                "observer_listener_backoff",
                "Current wait between reconnect attempts (0 when healthy)",
                seconds,
                Family::default()
            ),
            listener_reconnects: reg!(
                "observer_listener_reconnects",
                "Reconnect attempts after a failed read",
                Family::default()
            ),
            poison_events: reg!(
                "observer_poison_events",
                "Change-log rows that could not be decoded (dead-lettered)",
                Family::default()
            ),
            checkpoint_saves: reg!(
                "observer_checkpoint_saves",
                "Checkpoints saved",
                Family::default()
            ),
            checkpoint_save_duration: reg!(
                "observer_checkpoint_save_duration",
                "Time to save one checkpoint",
                seconds,
                hist_family()
            ),
            checkpoint_save_errors: reg!(
                "observer_checkpoint_save_errors",
                "Checkpoint saves that failed (retried on the next batch)",
                Family::default()
            ),
            checkpoint_lag: reg!(
                "observer_checkpoint_lag",
                "Age of the oldest change after the listener's checkpoint (0 when caught up)",
                seconds,
                Family::default()
            ),
            cutoff_lag: reg!(
                "observer_cutoff_lag",
                "Age of the oldest open transaction that wrote a captured row, which holds the read horizon back",
                seconds,
                Family::default()
            ),
            source_backlog: reg!(
                "observer_source_backlog",
                "Change-log rows after the listener's cursor",
                Family::default()
            ),
            commit_to_dispatch: reg!(
                "observer_commit_to_dispatch",
                "From the change being written to its dispatch to the executor",
                seconds,
                latency()
            ),
            cache_hits: reg!(
                "observer_cache_hits",
                "Cache hits, by backend",
                Family::default()
            ),
            cache_misses: reg!(
                "observer_cache_misses",
                "Cache misses, by backend",
                Family::default()
            ),
            cache_evictions: reg!(
                "observer_cache_evictions",
                "Cache entries evicted or invalidated, by backend",
                Family::default()
            ),
            fallback_invocations: reg!(
                "observer_fallback_invocations",
                "Operations served by the in-memory fallback because the primary store failed, by store",
                Family::default()
            ),
            fallback_active: reg!(
                "observer_fallback_active",
                "1 while a store runs on its in-memory fallback",
                Family::default()
            ),
            primary_failures: reg!(
                "observer_primary_failures",
                "Failed operations on a primary store (Redis), by store",
                Family::default()
            ),
            health_check_duration: reg!(
                "observer_health_check_duration",
                "Time of one health check, by target",
                seconds,
                hist_family()
            ),
            health_check_consecutive_failures: reg!(
                "observer_health_check_consecutive_failures",
                "Health checks failed in a row, by target",
                Family::default()
            ),
            sync_operations: reg!(
                "observer_sync_operations",
                "Entries replayed from a fallback to its primary after recovery, by store and outcome",
                Family::default()
            ),
            sync_queue: reg!(
                "observer_sync_queue_size",
                "Writes made on the fallback waiting to be replayed to the primary store (sampled at every health check)",
                Family::default()
            ),
            jobs_enqueued: reg!(
                "observer_jobs_enqueued",
                "Jobs enqueued by queued actions, by queue",
                Family::default()
            ),
            jobs_pending: reg!(
                "observer_jobs_pending",
                "Jobs waiting to run, by queue",
                Family::default()
            ),
            jobs_processing: reg!(
                "observer_jobs_processing",
                "Jobs running, by queue",
                Family::default()
            ),
            jobs_completed: reg!(
                "observer_jobs_completed",
                "Jobs completed, by queue",
                Family::default()
            ),
            jobs_retried: reg!(
                "observer_jobs_retried",
                "Job attempts that failed and were rescheduled, by queue",
                Family::default()
            ),
            jobs_failed: reg!(
                "observer_jobs_failed",
                "Jobs failed for good (dead-lettered), by queue",
                Family::default()
            ),
            job_duration: reg!(
                "observer_job_duration",
                "Time of one job attempt, by queue",
                seconds,
                hist_family()
            ),
            ha_enabled: reg!(
                "observer_ha_enabled",
                "1 when this instance runs with [ha] enabled (alerts on leadership only apply then)",
                Gauge::default()
            ),
            listeners_active: reg!(
                "observer_listeners_active",
                "Listeners of the group currently running (holding a lease)",
                Gauge::default()
            ),
            listeners_failed: reg!(
                "observer_listeners_failed",
                "Listeners declared failed: an instance the HA leader found silent, or a partition listener that stopped with an error",
                Counter::default()
            ),
            failovers: reg!(
                "observer_failovers",
                "Failovers the HA leader recorded: a silent instance's partitions left to the survivors",
                Counter::default()
            ),
            leader_elections: reg!(
                "observer_leader_elections",
                "Leader elections won by this instance",
                Counter::default()
            ),
            leader: reg!(
                "observer_leader",
                "1 while this instance is the group's leader",
                Gauge::default()
            ),
            checkpoint_leases_held: reg!(
                "observer_checkpoint_leases_held",
                "Checkpoint (partition) leases held by this instance",
                Gauge::default()
            ),
            lease_duration: reg!(
                "observer_lease_hold_duration",
                "How long a partition lease was held, observed when it ends (handed back, lost or fenced)",
                seconds,
                Histogram::new(&LEASE_BUCKETS)
            ),
            lease_renewals: reg!(
                "observer_lease_renewals",
                "Partition lease renewals, by outcome (ok, lost, error)",
                Family::default()
            ),
            fenced_writes: reg!(
                "observer_fenced_writes",
                "Checkpoint writes refused because the lease epoch moved on",
                Family::default()
            ),
            partitions_owned: reg!(
                "observer_partitions_owned",
                "Change-log partitions this instance processes",
                Gauge::default()
            ),
            search_indexed: reg!(
                "observer_search_indexed",
                "Events in search indexing requests, by backend and outcome (ok, error)",
                Family::default()
            ),
            search_index_duration: reg!(
                "observer_search_index_duration",
                "Time of one indexing request, by backend",
                seconds,
                hist_family()
            ),
            search_queries: reg!(
                "observer_search_queries",
                "Search queries served, by backend",
                Family::default()
            ),
            search_query_duration: reg!(
                "observer_search_query_duration",
                "Time of one search query, by backend",
                seconds,
                hist_family()
            ),
            retention_deleted: reg!(
                "observer_retention_deleted",
                "Rows deleted by retention, by table (change_log, events, jobs_completed, dlq_resolved)",
                Family::default()
            ),
            retention_oldest_age: reg!(
                "observer_retention_oldest_row_age",
                "Age of the oldest row kept, by table, read after each retention pass (0 when empty)",
                seconds,
                Family::default()
            ),
            wal_relayed: reg!(
                "observer_wal_relayed_changes",
                "Changes taken from the replication slot (copied into the change log, or with wal_delivery = \"direct\" handed to the executor), by slot",
                Family::default()
            ),
            wal_slot_lag: reg!(
                "observer_wal_slot_lag",
                "WAL written since the slot's confirmed position, by slot: how far the relay is behind",
                bytes,
                Family::default()
            ),
            wal_slot_retained: reg!(
                "observer_wal_slot_retained",
                "WAL the replication slot keeps on disk (from its restart point), by slot",
                bytes,
                Family::default()
            ),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            entity_handles: Handles::new(MAX_LABEL_VALUES),
            entity_arena: Arena::default(),
            action_handles: Handles::new(MAX_LABEL_VALUES),
            action_arena: Arena::default(),
            listener_handles: Handles::new(MAX_LABEL_VALUES),
            rejection_handles: Handles::new(MAX_LABEL_VALUES),
            registry: r,
        }
    }

    /// The OpenMetrics text exposition of every family (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if encode(&mut out, &self.registry).is_err() {
            // Writing into a String cannot fail; keep the output well-formed regardless.
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }

    /// Runs `f` on the handles of `entity_type`, with this thread's shard.
    #[inline]
    pub(crate) fn entity(&self, entity_type: &str, f: impl FnOnce(&EntityHandles, Shard)) {
        let shard = sharded::shard();
        let (id, i) = LAST_ENTITY.with(Cell::get);
        let cached = self
            .entity_arena
            .get(i)
            .filter(|h| id == self.id && same(&h.key, entity_type));
        if let Some(h) = cached.or_else(|| self.entity_slow(entity_type)) {
            f(h, shard);
        }
    }

    #[cold]
    #[inline(never)]
    fn entity_slow(&self, entity_type: &str) -> Option<&EntityHandles> {
        let make = |k: &str| {
            let h = EntityHandles {
                key: k.into(),
                processed: self
                    .events_processed
                    .get_or_create_owned(&l1("entity_type", k)),
                failed: self
                    .events_failed
                    .get_or_create_owned(&l1("entity_type", k)),
                deduplicated: self
                    .events_deduplicated
                    .get_or_create_owned(&l1("entity_type", k)),
            };
            // The cap (`MAX_LABEL_VALUES` + "other") is far below the arena's size.
            self.entity_arena.push(h).unwrap_or(u32::MAX)
        };
        let i = self.entity_handles.with(entity_type, make, |i| *i);
        LAST_ENTITY.with(|c| c.set((self.id, i)));
        self.entity_arena.get(i)
    }

    /// Runs `f` on the handles of (`observer`, `action_type`), with this thread's shard. The
    /// inline path checks only the most recent pair (kept first); the other cached pairs and
    /// the maps are looked at out of line, so the hot code stays small.
    #[inline]
    pub(crate) fn action(
        &self,
        observer: &str,
        action_type: &str,
        f: impl FnOnce(&ActionHandles, Shard),
    ) {
        let shard = sharded::shard();
        let [(id, i), ..] = LAST_ACTIONS.with(Cell::get);
        let cached = self.action_arena.get(i).filter(|h| {
            id == self.id && same(&h.observer, observer) && same(&h.action_type, action_type)
        });
        if let Some(h) = cached.or_else(|| self.action_slow(observer, action_type)) {
            f(h, shard);
        }
    }

    /// The pair from the rest of the per-thread cache, else from the maps; either way it moves
    /// to the front of the cache.
    #[cold]
    #[inline(never)]
    fn action_slow(&self, observer: &str, action_type: &str) -> Option<&ActionHandles> {
        let mut slots = LAST_ACTIONS.with(Cell::get);
        let found = slots.iter().position(|&(id, i)| {
            id == self.id
                && self.action_arena.get(i).is_some_and(|h| {
                    same(&h.observer, observer) && same(&h.action_type, action_type)
                })
        });
        let i = match found {
            Some(at) => slots[at].1,
            None => self.action_index(observer, action_type),
        };
        // Move to front: shift the others down over the found slot (or the oldest).
        let at = found.unwrap_or(ACTION_SLOTS - 1);
        slots.copy_within(0..at, 1);
        slots[0] = (self.id, i);
        LAST_ACTIONS.with(|c| c.set(slots));
        self.action_arena.get(i)
    }

    fn action_index(&self, observer: &str, action_type: &str) -> u32 {
        self.action_handles.with(
            observer,
            |k| ObserverActions {
                observer: k.into(),
                per_type: Handles::new(MAX_LABEL_VALUES),
            },
            |o| {
                // Room for about 2 million (observer, action type) pairs; past that (only with
                // both labels near their caps) the pair is not metered.
                let make = |t: &str| {
                    self.action_arena
                        .push(self.make_action_handles(&o.observer, t))
                        .unwrap_or(u32::MAX)
                };
                o.per_type.with(action_type, make, |i| *i)
            },
        )
    }

    fn make_action_handles(&self, observer: &str, action_type: &str) -> ActionHandles {
        use observers_core::telemetry::ActionOutcome as O;
        let pair = l2("observer", observer, "action_type", action_type);
        let outcome = |o: observers_core::telemetry::ActionOutcome| {
            self.actions_executed.get_or_create_owned(&[
                ("observer", observer.to_owned()),
                ("action_type", action_type.to_owned()),
                ("outcome", o.as_str().to_owned()),
            ])
        };
        ActionHandles {
            observer: observer.into(),
            action_type: action_type.into(),
            outcomes: [
                outcome(O::Success),
                outcome(O::DeadLettered),
                outcome(O::ShortCircuited),
                outcome(O::Queued),
                outcome(O::Skipped),
            ],
            failed: self.actions_failed.get_or_create_owned(&pair),
            retries: self.retries.get_or_create_owned(&pair),
            retries_successful: self.retries_successful.get_or_create_owned(&pair),
            retries_exhausted: self.retries_exhausted.get_or_create_owned(&pair),
            dead_lettered: self.dlq_items_total.get_or_create_owned(&pair),
            duration: self
                .action_duration
                .get_or_create_owned(&l1("action_type", action_type)),
        }
    }

    pub(crate) fn listener<R>(&self, listener: &str, f: impl FnOnce(&ListenerHandles) -> R) {
        self.listener_handles.with(
            listener,
            |k| {
                let l = l1("listener", k);
                ListenerHandles {
                    batches: self.batches.get_or_create_owned(&l),
                    events: self.listener_events.get_or_create_owned(&l),
                    batch_duration: self.batch_duration.get_or_create_owned(&l),
                    errors: self.listener_errors.get_or_create_owned(&l),
                    consecutive_errors: self.listener_consecutive_errors.get_or_create_owned(&l),
                    backoff: self.listener_backoff.get_or_create_owned(&l),
                    reconnects: self.listener_reconnects.get_or_create_owned(&l),
                    poison: self.poison_events.get_or_create_owned(&l),
                    checkpoint_saves: self.checkpoint_saves.get_or_create_owned(&l),
                    checkpoint_duration: self.checkpoint_save_duration.get_or_create_owned(&l),
                    cutoff_lag: self.cutoff_lag.get_or_create_owned(&l),
                    backlog: self.source_backlog.get_or_create_owned(&l),
                }
            },
            f,
        );
    }

    // ----- Facts without a core telemetry variant (yet): one method each. -----

    /// Pending DLQ items, as counted in the store (the CLI polls it).
    pub fn set_dlq_pending(&self, n: u64) {
        self.dlq_items.set(saturating_i64(n));
    }

    /// Rows retention deleted from `table`.
    pub fn retention_deleted(&self, table: &str, rows: u64) {
        self.retention_deleted
            .get_or_create(&l1("table", table))
            .inc_by(rows);
    }

    /// The age of the oldest row retention kept in `table`.
    pub fn set_retention_oldest_age(&self, table: &str, age: Duration) {
        self.retention_oldest_age
            .get_or_create(&l1("table", table))
            .set(age.as_secs_f64());
    }

    /// Changes the WAL relay of `slot` copied into the change log.
    pub fn wal_relayed(&self, slot: &str, changes: u64) {
        self.wal_relayed
            .get_or_create(&l1("slot", slot))
            .inc_by(changes);
    }

    /// The replication slot's lag and retained WAL, in bytes.
    pub fn set_wal_slot(&self, slot: &str, lag_bytes: i64, retained_bytes: i64) {
        self.wal_slot_lag
            .get_or_create(&l1("slot", slot))
            .set(lag_bytes);
        self.wal_slot_retained
            .get_or_create(&l1("slot", slot))
            .set(retained_bytes);
    }

    /// Observers in the running config (set at start and on reload).
    pub fn set_observers_registered(&self, n: usize) {
        self.observers_registered.set(saturating_i64(n as u64));
    }

    /// Age of the oldest change after `listener`'s checkpoint.
    pub fn set_checkpoint_lag(&self, listener: &str, lag: Duration) {
        self.checkpoint_lag
            .get_or_create(&l1("listener", listener))
            .set(lag.as_secs_f64());
    }

    /// A checkpoint save failed (it is retried with the next batch).
    pub fn checkpoint_save_failed(&self, listener: &str) {
        self.checkpoint_save_errors
            .get_or_create(&l1("listener", listener))
            .inc();
    }

    /// An action result served from the action cache (the action did not run).
    pub fn cache_hit(&self, action_type: &str) {
        self.cache_hits
            .get_or_create(&l1("action_type", action_type))
            .inc();
    }

    pub fn cache_miss(&self, action_type: &str) {
        self.cache_misses
            .get_or_create(&l1("action_type", action_type))
            .inc();
    }

    /// `n` cached action results evicted or invalidated.
    pub fn cache_evicted(&self, action_type: &str, n: u64) {
        self.cache_evictions
            .get_or_create(&l1("action_type", action_type))
            .inc_by(n);
    }

    /// An operation on `store` (`dedup`, `cache`) was served by the in-memory fallback.
    pub fn fallback_invoked(&self, store: &str) {
        self.fallback_invocations
            .get_or_create(&l1("store", store))
            .inc();
    }

    /// `store` switched to (`true`) or back from (`false`) its fallback.
    pub fn set_fallback_active(&self, store: &str, active: bool) {
        self.fallback_active
            .get_or_create(&l1("store", store))
            .set(i64::from(active));
    }

    pub fn primary_failed(&self, store: &str) {
        self.primary_failures
            .get_or_create(&l1("store", store))
            .inc();
    }

    /// One health check of `target` (`redis`, `postgres`, ...) took `duration`.
    pub fn health_checked(&self, target: &str, duration: Duration, healthy: bool) {
        let l = l1("target", target);
        self.health_check_duration
            .get_or_create(&l)
            .observe(duration.as_secs_f64());
        let failures = self.health_check_consecutive_failures.get_or_create(&l);
        if healthy {
            failures.set(0);
        } else {
            failures.inc();
        }
    }

    /// Entries replayed to the primary after recovery (`outcome`: `ok`, `error`).
    pub fn sync_operations(&self, store: &str, outcome: &str, n: u64) {
        self.sync_operations
            .get_or_create(&l2("store", store, "outcome", outcome))
            .inc_by(n);
    }

    pub fn set_sync_queue(&self, store: &str, n: u64) {
        self.sync_queue
            .get_or_create(&l1("store", store))
            .set(saturating_i64(n));
    }

    pub fn job_enqueued(&self, queue: &str) {
        self.jobs_enqueued.get_or_create(&l1("queue", queue)).inc();
    }

    /// Queue depth as last counted.
    pub fn set_job_depth(&self, queue: &str, pending: u64, processing: u64) {
        let l = l1("queue", queue);
        self.jobs_pending
            .get_or_create(&l)
            .set(saturating_i64(pending));
        self.jobs_processing
            .get_or_create(&l)
            .set(saturating_i64(processing));
    }

    pub fn job_finished(&self, queue: &str, outcome: JobOutcome, duration: Duration) {
        let l = l1("queue", queue);
        self.job_duration
            .get_or_create(&l)
            .observe(duration.as_secs_f64());
        match outcome {
            JobOutcome::Completed => self.jobs_completed.get_or_create(&l).inc(),
            JobOutcome::Retried => self.jobs_retried.get_or_create(&l).inc(),
            JobOutcome::Failed => self.jobs_failed.get_or_create(&l).inc(),
        };
    }

    pub fn set_ha_enabled(&self, enabled: bool) {
        self.ha_enabled.set(i64::from(enabled));
    }

    /// Listeners running in this instance (without HA, `observers run` sets 1 while running).
    pub fn set_listeners_active(&self, n: u64) {
        self.listeners_active.set(saturating_i64(n));
    }

    pub fn listener_failed(&self) {
        self.listeners_failed.inc();
    }

    pub fn failover(&self) {
        self.failovers.inc();
    }

    /// This instance won an election (and now leads) or stepped down.
    pub fn set_leader(&self, leading: bool) {
        if leading && self.leader.get() == 0 {
            self.leader_elections.inc();
        }
        self.leader.set(i64::from(leading));
    }

    pub fn set_leases_held(&self, n: u64) {
        self.checkpoint_leases_held.set(saturating_i64(n));
    }

    /// A lease was released or lost after being held for `held`.
    pub fn lease_released(&self, held: Duration) {
        self.lease_duration.observe(held.as_secs_f64());
    }

    /// `outcome`: `ok`, `lost`, `error`.
    pub fn lease_renewal(&self, outcome: &str) {
        self.lease_renewals
            .get_or_create(&l1("outcome", outcome))
            .inc();
    }

    pub fn fenced_write(&self, listener: &str) {
        self.fenced_writes
            .get_or_create(&l1("listener", listener))
            .inc();
    }

    pub fn set_partitions_owned(&self, n: u64) {
        self.partitions_owned.set(saturating_i64(n));
    }

    /// `n` events indexed by `backend` (`postgres`, `elasticsearch`) in one request.
    pub fn search_indexed(&self, backend: &str, ok: bool, n: u64, duration: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.search_indexed
            .get_or_create(&l2("backend", backend, "outcome", outcome))
            .inc_by(n);
        self.search_index_duration
            .get_or_create(&l1("backend", backend))
            .observe(duration.as_secs_f64());
    }

    pub fn search_query(&self, backend: &str, duration: Duration) {
        let l = l1("backend", backend);
        self.search_queries.get_or_create(&l).inc();
        self.search_query_duration
            .get_or_create(&l)
            .observe(duration.as_secs_f64());
    }
}

pub(crate) fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod same_tests {
    use super::same;

    #[test]
    fn same_agrees_with_string_equality_at_every_length() {
        let base = "abcdefghijklmnopqrstuvwxyz";
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(same(a, a), "{a}");
            assert!(!same(a, &base[..n.saturating_sub(1)]) || n == 0);
            // One byte different, at every position.
            for i in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[i] = b'#';
                let b = String::from_utf8(b).unwrap();
                assert!(!same(a, &b), "{a} vs {b}");
            }
        }
    }
}
