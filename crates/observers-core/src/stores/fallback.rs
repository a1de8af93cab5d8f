//! Staying up when a remote store fails (seed 004), generic over the store traits.
//!
//! A [`Resilience`] guards one primary backend (say Redis) shared by several stores. Every
//! operation asks it for a route: the primary (under a timeout) or the fallback (an in-memory
//! store). The choice depends on the [`FallbackMode`]:
//!
//! - `Immediate`: the first failure switches to the fallback until the health monitor sees the
//!   primary healthy again.
//! - `AfterRetries(n)`: like `Immediate`, after `n` more attempts of the failing operation.
//! - `CircuitBreaker`: core's [`CircuitBreaker`] decides (failure rate over a window, open period,
//!   half-open probes); while it is open operations go straight to the fallback.
//! - `HealthBased`: the health monitor's verdict decides; an operation that fails on the primary
//!   still falls back, one at a time.
//!
//! In every mode an operation that fails on the primary is served by the fallback, so a primary
//! outage never fails or stalls a caller for longer than `op_timeout`. Writes served by the
//! fallback are journalled (bounded) and replayed to the primary, oldest first, before the
//! primary serves again and whenever the health monitor finds it healthy. Switching to and from
//! the fallback is logged (warn / info) and emitted as telemetry, as are health probes and
//! replays.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use super::cache::{CacheBackend, CacheStats};
use super::dedup::{ClaimOutcome, DedupStore};
use super::lock;
use crate::breaker::{BreakerConfig, BreakerSnapshot, BreakerState, CallOutcome, CircuitBreaker};
use crate::clock::system_clock;
use crate::error::{ObserverError, Result};
use crate::telemetry::{SharedTelemetry, TelemetryEvent};

/// When operations leave the primary for the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackMode {
    Immediate,
    AfterRetries(u32),
    CircuitBreaker,
    HealthBased,
}

impl fmt::Display for FallbackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackMode::Immediate => f.write_str("immediate"),
            FallbackMode::AfterRetries(n) => write!(f, "after_retries({n})"),
            FallbackMode::CircuitBreaker => f.write_str("circuit_breaker"),
            FallbackMode::HealthBased => f.write_str("health_based"),
        }
    }
}

/// Fallback writes one operation replays before its own call (the health monitor replays all).
const OP_REPLAY_BATCH: usize = 256;

/// Why an attempt on the primary did not answer.
enum Attempt {
    /// Fallback writes are still being replayed: serve from the fallback, keep the order.
    Busy,
    Failed(ObserverError),
}

/// A cheap liveness check of the primary (Redis: `PING`).
#[async_trait]
pub trait HealthProbe: Send + Sync {
    async fn ping(&self) -> Result<()>;
}

/// The health monitor's tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
    /// A probe slower than this fails.
    pub timeout: Duration,
    /// Consecutive successful probes that make an unhealthy primary healthy.
    pub healthy_threshold: u32,
    /// Consecutive failed probes that make a healthy primary unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(250),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Everything a [`Resilience`] needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ResilienceConfig {
    pub mode: FallbackMode,
    /// Longest a primary operation may take before it counts as failed and the fallback serves.
    pub op_timeout: Duration,
    /// Whether the wrapper puts `op_timeout` on each call itself. Turn off only when the primary
    /// already bounds every call (e.g. a Redis client with connection and response timeouts):
    /// it saves a timer per call.
    pub enforce_timeout: bool,
    pub health: HealthConfig,
    /// The breaker of `FallbackMode::CircuitBreaker`.
    pub breaker: BreakerConfig,
    /// Most fallback writes kept for replay per store; beyond it the oldest are dropped (and
    /// counted, and logged).
    pub max_replay: usize,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            mode: FallbackMode::CircuitBreaker,
            op_timeout: Duration::from_millis(500),
            enforce_timeout: true,
            health: HealthConfig::default(),
            breaker: BreakerConfig {
                window_size: 10,
                minimum_calls: 5,
                slow_call_threshold: None,
                open_duration: Duration::from_secs(1),
                max_open_duration: Duration::from_secs(30),
                half_open_max_calls: 1,
                success_threshold: 2,
                max_half_open_duration: Duration::from_secs(5),
                probe_timeout: Duration::from_millis(500),
                ..BreakerConfig::default()
            },
            max_replay: 100_000,
        }
    }
}

/// Something holding fallback writes to replay.
#[async_trait]
pub trait Replay: Send + Sync {
    fn pending(&self) -> usize;
    /// Replays up to `max` pending writes, oldest first; stops at the first primary failure
    /// (the entry stays for next time). Returns how many were replayed.
    async fn replay(&self, max: usize) -> Result<usize>;
}

/// What a [`Resilience`] reports about itself (for `status` and tests).
#[derive(Debug, Clone, Serialize)]
pub struct ResilienceStatus {
    pub backend: String,
    pub mode: FallbackMode,
    /// The health monitor's verdict.
    pub healthy: bool,
    /// Whether operations are currently served by the fallback.
    pub on_fallback: bool,
    pub pending_replay: usize,
    pub replayed_total: u64,
    pub fallback_ops_total: u64,
    pub last_probe_latency: Option<Duration>,
    pub breaker: BreakerSnapshot,
}

#[derive(Default)]
struct Health {
    consecutive_ok: u32,
    consecutive_failed: u32,
    last_latency: Option<Duration>,
}

/// The switch between a primary backend and its fallbacks, shared by every store on that
/// primary. Create with [`Resilience::new`], wrap stores with [`FallbackDedupStore`] /
/// [`FallbackCache`], and start [`Resilience::spawn_health_monitor`].
pub struct Resilience {
    backend: String,
    config: ResilienceConfig,
    breaker: CircuitBreaker,
    telemetry: SharedTelemetry,
    healthy: AtomicBool,
    /// Immediate / AfterRetries: the primary failed and has not been seen healthy since.
    degraded: AtomicBool,
    /// Since when operations are on the fallback.
    fallback_since: Mutex<Option<Instant>>,
    health: Mutex<Health>,
    journals: Mutex<Vec<Weak<dyn Replay>>>,
    replaying: tokio::sync::Mutex<()>,
    fallback_ops: AtomicU64,
    replayed: AtomicU64,
    /// Writes waiting in every journal (kept by the journals), so the hot path checks an atomic.
    pending: Arc<AtomicUsize>,
    /// Mirrors `fallback_since.is_some()` for the hot path.
    on_fallback: AtomicBool,
}

impl fmt::Debug for Resilience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilience")
            .field("backend", &self.backend)
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

impl Resilience {
    pub fn new(
        backend: impl Into<String>,
        config: ResilienceConfig,
        telemetry: SharedTelemetry,
    ) -> Arc<Self> {
        let backend = backend.into();
        let breaker = CircuitBreaker::new(
            backend.clone(),
            config.breaker.clone(),
            system_clock(),
            telemetry.clone(),
        );
        Arc::new(Self {
            backend,
            config,
            breaker,
            telemetry,
            healthy: AtomicBool::new(true),
            degraded: AtomicBool::new(false),
            fallback_since: Mutex::new(None),
            health: Mutex::new(Health::default()),
            journals: Mutex::new(Vec::new()),
            replaying: tokio::sync::Mutex::new(()),
            fallback_ops: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            pending: Arc::new(AtomicUsize::new(0)),
            on_fallback: AtomicBool::new(false),
        })
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    pub fn config(&self) -> &ResilienceConfig {
        &self.config
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> ResilienceStatus {
        ResilienceStatus {
            backend: self.backend.clone(),
            mode: self.config.mode,
            healthy: self.is_healthy(),
            on_fallback: lock(&self.fallback_since).is_some(),
            pending_replay: self.pending(),
            replayed_total: self.replayed.load(Ordering::Relaxed),
            fallback_ops_total: self.fallback_ops.load(Ordering::Relaxed),
            last_probe_latency: lock(&self.health).last_latency,
            breaker: self.breaker.snapshot(),
        }
    }

    fn register(&self, journal: Weak<dyn Replay>) {
        lock(&self.journals).push(journal);
    }

    fn live_journals(&self) -> Vec<Arc<dyn Replay>> {
        let mut journals = lock(&self.journals);
        journals.retain(|j| j.strong_count() > 0);
        journals.iter().filter_map(Weak::upgrade).collect()
    }

    /// Fallback writes waiting for replay, over every store on this primary.
    pub fn pending(&self) -> usize {
        self.live_journals().iter().map(|j| j.pending()).sum()
    }

    /// Replays every journal to the primary. Serialized: concurrent callers wait for the one
    /// replaying, then find nothing left.
    pub async fn replay_pending(&self) -> Result<usize> {
        let _guard = self.replaying.lock().await;
        self.replay_locked(usize::MAX).await
    }

    async fn replay_locked(&self, max: usize) -> Result<usize> {
        let mut total = 0;
        for journal in self.live_journals() {
            if journal.pending() == 0 || total >= max {
                continue;
            }
            let result = journal.replay(max - total).await;
            total += result.as_ref().map_or(0, |n| *n);
            if let Err(e) = result {
                self.note_replayed(total);
                return Err(e);
            }
        }
        self.note_replayed(total);
        Ok(total)
    }

    fn note_replayed(&self, items: usize) {
        if items == 0 {
            return;
        }
        self.replayed
            .fetch_add(u64::try_from(items).unwrap_or(u64::MAX), Ordering::Relaxed);
        tracing::info!(backend = %self.backend, items, "fallback writes replayed to the primary");
        self.telemetry.emit(&TelemetryEvent::FallbackReplayed {
            backend: &self.backend,
            items,
        });
    }

    /// One operation goes to the fallback.
    fn served_by_fallback(&self) {
        self.fallback_ops.fetch_add(1, Ordering::Relaxed);
        self.telemetry.emit(&TelemetryEvent::FallbackServed {
            backend: &self.backend,
        });
    }

    fn activate(&self, reason: &str) {
        self.served_by_fallback();
        let mut since = lock(&self.fallback_since);
        if since.is_none() {
            *since = Some(Instant::now());
            self.on_fallback.store(true, Ordering::SeqCst);
            drop(since);
            tracing::warn!(backend = %self.backend, mode = %self.config.mode, reason, "primary store unavailable; serving from the fallback");
            self.telemetry.emit(&TelemetryEvent::FallbackActivated {
                backend: &self.backend,
                reason,
            });
        }
    }

    fn note_primary_ok(&self) {
        if !self.on_fallback.load(Ordering::SeqCst) {
            return;
        }
        let mut since = lock(&self.fallback_since);
        if let Some(at) = since.take() {
            self.on_fallback.store(false, Ordering::SeqCst);
            drop(since);
            let outage = at.elapsed();
            tracing::info!(backend = %self.backend, outage = ?outage, "primary store recovered; fallback no longer used");
            self.telemetry.emit(&TelemetryEvent::FallbackRecovered {
                backend: &self.backend,
                outage,
            });
        }
    }

    /// One bounded attempt on the primary, replaying fallback writes first (at most
    /// `OP_REPLAY_BATCH` of them, so no caller waits long; while writes remain, or while another
    /// task replays, the fallback keeps serving so the primary sees writes in order).
    async fn attempt<T, F, Fut>(&self, op: &mut F) -> std::result::Result<T, Attempt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if self.pending.load(Ordering::SeqCst) > 0 {
            let Ok(_guard) = self.replaying.try_lock() else {
                return Err(Attempt::Busy);
            };
            self.replay_locked(OP_REPLAY_BATCH)
                .await
                .map_err(Attempt::Failed)?;
            if self.pending.load(Ordering::SeqCst) > 0 {
                return Err(Attempt::Busy);
            }
        }
        if !self.config.enforce_timeout {
            return op().await.map_err(Attempt::Failed);
        }
        match tokio::time::timeout(self.config.op_timeout, op()).await {
            Ok(result) => result.map_err(Attempt::Failed),
            Err(_) => Err(Attempt::Failed(ObserverError::Timeout {
                what: format!("{} operation", self.backend),
                after: self.config.op_timeout,
            })),
        }
    }

    /// Runs `op` on the primary if the mode allows it. `Some` is the primary's answer; `None`
    /// means the caller must serve the operation from its fallback (already logged and counted).
    pub async fn on_primary<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let result = match self.config.mode {
            FallbackMode::CircuitBreaker => {
                let Ok(permit) = self.breaker.try_acquire() else {
                    self.activate("circuit breaker open");
                    return None;
                };
                let result = self.attempt(&mut op).await;
                let outcome = match &result {
                    Ok(_) => CallOutcome::Success,
                    Err(Attempt::Busy) => CallOutcome::Ignored,
                    Err(Attempt::Failed(_)) => CallOutcome::Failure,
                };
                self.breaker.record(permit, outcome);
                result
            }
            FallbackMode::HealthBased => {
                if !self.is_healthy() {
                    self.activate("health checks failing");
                    return None;
                }
                self.attempt(&mut op).await
            }
            FallbackMode::Immediate | FallbackMode::AfterRetries(_) => {
                if self.degraded.load(Ordering::SeqCst) {
                    self.activate("primary failed; waiting for healthy probes");
                    return None;
                }
                let tries = match self.config.mode {
                    FallbackMode::AfterRetries(n) => n.saturating_add(1),
                    _ => 1,
                };
                let mut result = self.attempt(&mut op).await;
                for _ in 1..tries {
                    if !matches!(result, Err(Attempt::Failed(_))) {
                        break;
                    }
                    result = self.attempt(&mut op).await;
                }
                if matches!(result, Err(Attempt::Failed(_))) {
                    self.degraded.store(true, Ordering::SeqCst);
                }
                result
            }
        };
        match result {
            Ok(v) => {
                self.note_primary_ok();
                Some(v)
            }
            Err(Attempt::Busy) => {
                self.served_by_fallback();
                None
            }
            Err(Attempt::Failed(e)) => {
                tracing::debug!(backend = %self.backend, op = what, error = %e, "primary operation failed");
                self.telemetry.emit(&TelemetryEvent::PrimaryFailed {
                    backend: &self.backend,
                });
                self.activate("primary operation failed");
                None
            }
        }
    }

    /// One probe: updates the verdict, emits telemetry, and on a healthy primary replays what is
    /// pending (and, in the Immediate / AfterRetries modes, lets operations back on it).
    pub async fn check(&self, probe: &dyn HealthProbe) -> bool {
        let started = Instant::now();
        let ok = matches!(
            tokio::time::timeout(self.config.health.timeout, probe.ping()).await,
            Ok(Ok(()))
        );
        let latency = started.elapsed();
        self.telemetry.emit(&TelemetryEvent::HealthCheck {
            backend: &self.backend,
            healthy: ok,
            latency,
        });
        let was = self.is_healthy();
        let now_healthy = {
            let mut h = lock(&self.health);
            h.last_latency = Some(latency);
            if ok {
                h.consecutive_ok = h.consecutive_ok.saturating_add(1);
                h.consecutive_failed = 0;
            } else {
                h.consecutive_failed = h.consecutive_failed.saturating_add(1);
                h.consecutive_ok = 0;
            }
            if was && h.consecutive_failed >= self.config.health.unhealthy_threshold {
                false
            } else if !was && h.consecutive_ok >= self.config.health.healthy_threshold {
                true
            } else {
                was
            }
        };
        if now_healthy != was {
            self.healthy.store(now_healthy, Ordering::SeqCst);
            if now_healthy {
                tracing::info!(backend = %self.backend, latency = ?latency, "health monitor: primary store healthy");
            } else {
                tracing::warn!(backend = %self.backend, "health monitor: primary store unhealthy");
            }
            self.telemetry.emit(&TelemetryEvent::HealthStateChanged {
                backend: &self.backend,
                healthy: now_healthy,
            });
        }
        if now_healthy && ok {
            match self.replay_pending().await {
                Ok(_) => {
                    if self.degraded.swap(false, Ordering::SeqCst) {
                        tracing::info!(backend = %self.backend, "primary store back in use");
                    }
                    // A healthy verdict (after `healthy_threshold` good probes) also ends a
                    // breaker's open period: without it, recovery would wait for the next
                    // operation after a possibly long, backed-off open period.
                    if self.config.mode == FallbackMode::CircuitBreaker
                        && self.breaker.state() != BreakerState::Closed
                        && h_ok_streak(&self.health) >= self.config.health.healthy_threshold
                    {
                        tracing::info!(backend = %self.backend, "health checks pass; closing the circuit breaker");
                        self.breaker.reset();
                    }
                    if self.config.mode != FallbackMode::CircuitBreaker
                        || self.breaker.state() == BreakerState::Closed
                    {
                        self.note_primary_ok();
                    }
                }
                Err(e) => {
                    tracing::warn!(backend = %self.backend, error = %e, "replay to the primary failed; will retry");
                }
            }
        }
        self.telemetry.emit(&TelemetryEvent::ReplayBacklog {
            backend: &self.backend,
            pending: self.pending(),
        });
        now_healthy
    }

    /// Probes the primary every `health.interval` until the returned guard is dropped.
    pub fn spawn_health_monitor(self: &Arc<Self>, probe: Arc<dyn HealthProbe>) -> MonitorGuard {
        MonitorGuard(self.monitor_task(probe))
    }

    /// Probes the primary every `health.interval` for as long as this `Resilience` lives (the
    /// task holds only a weak reference between probes).
    pub fn start_health_monitor(self: &Arc<Self>, probe: Arc<dyn HealthProbe>) {
        drop(self.monitor_task(probe));
    }

    fn monitor_task(self: &Arc<Self>, probe: Arc<dyn HealthProbe>) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        let interval = self.config.health.interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(this) = this.upgrade() else { break };
                this.check(probe.as_ref()).await;
            }
        })
    }
}

fn h_ok_streak(health: &Mutex<Health>) -> u32 {
    lock(health).consecutive_ok
}

/// Stops the health monitor when dropped.
#[derive(Debug)]
pub struct MonitorGuard(tokio::task::JoinHandle<()>);

impl Drop for MonitorGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A bounded FIFO of writes to replay.
struct Journal<E> {
    backend: String,
    entries: Mutex<VecDeque<E>>,
    max: usize,
    dropped: AtomicU64,
    total: Arc<AtomicUsize>,
}

impl<E> Journal<E> {
    fn new(resilience: &Resilience) -> Self {
        Self {
            backend: resilience.backend.clone(),
            entries: Mutex::new(VecDeque::new()),
            max: resilience.config.max_replay.max(1),
            dropped: AtomicU64::new(0),
            total: resilience.pending.clone(),
        }
    }

    fn push(&self, entry: E) {
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max {
            entries.pop_front();
            self.total.fetch_sub(1, Ordering::SeqCst);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(backend = %self.backend, dropped, max = self.max, "fallback replay journal full; oldest writes dropped");
            }
        }
        entries.push_back(entry);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn pop(&self) -> Option<E> {
        // The counter moves under the lock, so it never goes below zero.
        let mut entries = lock(&self.entries);
        let entry = entries.pop_front();
        if entry.is_some() {
            self.total.fetch_sub(1, Ordering::SeqCst);
        }
        entry
    }

    fn unpop(&self, entry: E) {
        let mut entries = lock(&self.entries);
        entries.push_front(entry);
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

impl<E> Drop for Journal<E> {
    fn drop(&mut self) {
        let left = lock(&self.entries).len();
        self.total.fetch_sub(left, Ordering::SeqCst);
    }
}

/// Time left of a TTL that ran out at `expires_at`, `None` once it has.
fn remaining(expires_at: Instant) -> Option<Duration> {
    let left = expires_at.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

enum DedupWrite {
    Complete { key: String, expires_at: Instant },
    Release { key: String },
}

struct DedupJournal {
    primary: Arc<dyn DedupStore>,
    journal: Journal<DedupWrite>,
}

#[async_trait]
impl Replay for DedupJournal {
    fn pending(&self) -> usize {
        self.journal.len()
    }

    async fn replay(&self, max: usize) -> Result<usize> {
        let mut n = 0;
        while n < max
            && let Some(write) = self.journal.pop()
        {
            let result = match &write {
                DedupWrite::Complete { key, expires_at } => match remaining(*expires_at) {
                    Some(left) => self.primary.complete(key, left).await,
                    None => Ok(()),
                },
                DedupWrite::Release { key } => self.primary.release(key).await,
            };
            if let Err(e) = result {
                self.journal.unpop(write);
                return Err(e);
            }
            n += 1;
        }
        Ok(n)
    }
}

/// A [`DedupStore`] on a primary with a fallback (see the module docs). Claims made on the
/// fallback are not replayed (they complete or expire); completions and releases are.
pub struct FallbackDedupStore {
    resilience: Arc<Resilience>,
    primary: Arc<dyn DedupStore>,
    fallback: Arc<dyn DedupStore>,
    journal: Arc<DedupJournal>,
}

impl FallbackDedupStore {
    pub fn new(
        resilience: Arc<Resilience>,
        primary: Arc<dyn DedupStore>,
        fallback: Arc<dyn DedupStore>,
    ) -> Self {
        let journal = Arc::new(DedupJournal {
            primary: primary.clone(),
            journal: Journal::new(&resilience),
        });
        let as_replay: Arc<dyn Replay> = journal.clone();
        resilience.register(Arc::downgrade(&as_replay));
        Self {
            resilience,
            primary,
            fallback,
            journal,
        }
    }

    pub fn pending_replay(&self) -> usize {
        self.journal.pending()
    }
}

#[async_trait]
impl DedupStore for FallbackDedupStore {
    async fn claim(&self, key: &str, owner: &str, ttl: Duration) -> Result<ClaimOutcome> {
        let primary = &self.primary;
        if let Some(outcome) = self
            .resilience
            .on_primary("dedup claim", || primary.claim(key, owner, ttl))
            .await
        {
            return Ok(outcome);
        }
        self.fallback.claim(key, owner, ttl).await
    }

    async fn complete(&self, key: &str, window: Duration) -> Result<()> {
        let primary = &self.primary;
        if let Some(()) = self
            .resilience
            .on_primary("dedup complete", || primary.complete(key, window))
            .await
        {
            return Ok(());
        }
        self.fallback.complete(key, window).await?;
        self.journal.journal.push(DedupWrite::Complete {
            key: key.to_owned(),
            expires_at: Instant::now() + window,
        });
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<()> {
        let primary = &self.primary;
        if let Some(()) = self
            .resilience
            .on_primary("dedup release", || primary.release(key))
            .await
        {
            return Ok(());
        }
        self.fallback.release(key).await?;
        self.journal.journal.push(DedupWrite::Release {
            key: key.to_owned(),
        });
        Ok(())
    }
}

enum CacheWrite {
    Set {
        key: String,
        value: Vec<u8>,
        expires_at: Instant,
    },
    Delete {
        key: String,
    },
    DeletePattern {
        pattern: String,
    },
}

struct CacheJournal {
    primary: Arc<dyn CacheBackend>,
    journal: Journal<CacheWrite>,
}

#[async_trait]
impl Replay for CacheJournal {
    fn pending(&self) -> usize {
        self.journal.len()
    }

    async fn replay(&self, max: usize) -> Result<usize> {
        let mut n = 0;
        while n < max
            && let Some(write) = self.journal.pop()
        {
            let result = match &write {
                CacheWrite::Set {
                    key,
                    value,
                    expires_at,
                } => match remaining(*expires_at) {
                    Some(left) => self.primary.set(key, value.clone(), left).await,
                    None => Ok(()),
                },
                CacheWrite::Delete { key } => self.primary.delete(key).await.map(|_| ()),
                CacheWrite::DeletePattern { pattern } => {
                    self.primary.delete_pattern(pattern).await.map(|_| ())
                }
            };
            if let Err(e) = result {
                self.journal.unpop(write);
                return Err(e);
            }
            n += 1;
        }
        Ok(n)
    }
}

/// A [`CacheBackend`] on a primary with a fallback. Invalidations made during an outage are
/// replayed too, so the primary never keeps serving an entry that was invalidated meanwhile.
pub struct FallbackCache {
    resilience: Arc<Resilience>,
    primary: Arc<dyn CacheBackend>,
    fallback: Arc<dyn CacheBackend>,
    journal: Arc<CacheJournal>,
}

impl FallbackCache {
    pub fn new(
        resilience: Arc<Resilience>,
        primary: Arc<dyn CacheBackend>,
        fallback: Arc<dyn CacheBackend>,
    ) -> Self {
        let journal = Arc::new(CacheJournal {
            primary: primary.clone(),
            journal: Journal::new(&resilience),
        });
        let as_replay: Arc<dyn Replay> = journal.clone();
        resilience.register(Arc::downgrade(&as_replay));
        Self {
            resilience,
            primary,
            fallback,
            journal,
        }
    }

    pub fn pending_replay(&self) -> usize {
        self.journal.pending()
    }
}

#[async_trait]
impl CacheBackend for FallbackCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let primary = &self.primary;
        if let Some(v) = self
            .resilience
            .on_primary("cache get", || primary.get(key))
            .await
        {
            return Ok(v);
        }
        self.fallback.get(key).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return self.primary.set(key, value, ttl).await;
        }
        let primary = &self.primary;
        if let Some(()) = self
            .resilience
            .on_primary("cache set", || primary.set(key, value.clone(), ttl))
            .await
        {
            return Ok(());
        }
        self.fallback.set(key, value.clone(), ttl).await?;
        self.journal.journal.push(CacheWrite::Set {
            key: key.to_owned(),
            value,
            expires_at: Instant::now() + ttl,
        });
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let primary = &self.primary;
        if let Some(removed) = self
            .resilience
            .on_primary("cache delete", || primary.delete(key))
            .await
        {
            // Also drop what the fallback may still hold from the outage.
            let _ = self.fallback.delete(key).await;
            return Ok(removed);
        }
        let removed = self.fallback.delete(key).await?;
        self.journal.journal.push(CacheWrite::Delete {
            key: key.to_owned(),
        });
        Ok(removed)
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        let primary = &self.primary;
        if let Some(removed) = self
            .resilience
            .on_primary("cache delete_pattern", || primary.delete_pattern(pattern))
            .await
        {
            let _ = self.fallback.delete_pattern(pattern).await;
            return Ok(removed);
        }
        let removed = self.fallback.delete_pattern(pattern).await?;
        self.journal.journal.push(CacheWrite::DeletePattern {
            pattern: pattern.to_owned(),
        });
        Ok(removed)
    }

    fn stats(&self) -> CacheStats {
        let (p, f) = (self.primary.stats(), self.fallback.stats());
        CacheStats {
            entries: p.entries.saturating_add(f.entries),
            hits: p.hits.saturating_add(f.hits),
            misses: p.misses.saturating_add(f.misses),
            evictions: p.evictions.saturating_add(f.evictions),
        }
    }
}

#[cfg(test)]
mod tests;
