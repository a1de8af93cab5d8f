//! Per-endpoint circuit breakers: stop calling a failing webhook host, probe it, and recover.
//!
//! A [`CircuitBreaker`] is Closed while an endpoint behaves. It trips Open when the failure rate
//! over a count-based sliding window reaches a threshold (once a minimum number of calls has been
//! seen); slow successes count as failures. While Open every call is rejected without touching the
//! network. After the open period (which grows with consecutive trips, is capped and jittered so
//! instances do not probe in lockstep) it turns HalfOpen and admits a fixed number of probes
//! atomically; enough successful probes close it, any failed probe (or probes that take longer
//! than `max_half_open_duration` to finish) reopens it.
//!
//! The API is synchronous: the state sits behind a `std::sync::Mutex` held for a few
//! instructions and never across an `.await`. The closed path (`try_acquire` + `record`) does not
//! allocate and emits no telemetry; telemetry is emitted on every state change and rejection.
//!
//! Permits carry the "epoch" (a process-wide unique number taken at every transition) they were
//! issued in, so an outcome that arrives after the breaker moved on (reopened, was forced, was
//! reset) is ignored instead of corrupting the new state.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, system_clock};
pub use crate::telemetry::BreakerState;
use crate::telemetry::{NoopTelemetry, SharedTelemetry, TelemetryEvent};

/// Tuning of every breaker in a registry. Durations are humantime strings (`"5s"`, `"250ms"`);
/// `slow_call_threshold = "off"` disables slow-call detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Fraction of failed calls in the window (0 < x <= 1) at or above which the breaker opens.
    pub failure_rate_threshold: f64,
    /// Number of most recent calls the failure rate is computed over.
    pub window_size: u32,
    /// The failure rate is not evaluated before the window holds this many calls.
    pub minimum_calls: u32,
    /// A successful call slower than this counts as a failure. `None` disables the check.
    #[serde(with = "duration_serde::option")]
    pub slow_call_threshold: Option<Duration>,
    /// Open period after the first trip.
    #[serde(with = "duration_serde")]
    pub open_duration: Duration,
    /// Ceiling of the backed-off open period (before jitter).
    #[serde(with = "duration_serde")]
    pub max_open_duration: Duration,
    /// Each consecutive trip multiplies the open period by this factor.
    pub open_backoff_multiplier: f64,
    /// The open period is scaled by a random factor in `1 ± jitter` (0 <= jitter < 1).
    pub jitter: f64,
    /// Probes allowed in flight at once while half-open; further calls are rejected.
    pub half_open_max_calls: u32,
    /// Successful probes needed to close the breaker.
    pub success_threshold: u32,
    /// Probes must settle within this time after the breaker turns half-open, or it reopens.
    #[serde(with = "duration_serde")]
    pub max_half_open_duration: Duration,
    /// Timeout callers should apply to a probe call (see [`Permit::probe_timeout`]).
    #[serde(with = "duration_serde")]
    pub probe_timeout: Duration,
    /// Most breakers a [`BreakerRegistry`] keeps; the least recently used Closed one is evicted.
    pub max_endpoints: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            window_size: 20,
            minimum_calls: 10,
            slow_call_threshold: Some(Duration::from_secs(10)),
            open_duration: Duration::from_secs(5),
            max_open_duration: Duration::from_secs(300),
            open_backoff_multiplier: 2.0,
            jitter: 0.1,
            half_open_max_calls: 3,
            success_threshold: 3,
            max_half_open_duration: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(2),
            max_endpoints: 1024,
        }
    }
}

/// Largest accepted `window_size`: the window costs one byte per call per endpoint.
const MAX_WINDOW_SIZE: u32 = 10_000;

impl BreakerConfig {
    /// Checks every field; the error names the first bad one and says what is expected.
    pub fn validate(&self) -> Result<(), String> {
        let rate = self.failure_rate_threshold;
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(format!(
                "failure_rate_threshold must be a fraction in (0, 1], got {rate}"
            ));
        }
        if self.window_size == 0 || self.window_size > MAX_WINDOW_SIZE {
            return Err(format!(
                "window_size must be between 1 and {MAX_WINDOW_SIZE} calls, got {}",
                self.window_size
            ));
        }
        if self.minimum_calls == 0 || self.minimum_calls > self.window_size {
            return Err(format!(
                "minimum_calls must be between 1 and window_size ({}), got {}",
                self.window_size, self.minimum_calls
            ));
        }
        if self.slow_call_threshold == Some(Duration::ZERO) {
            return Err("slow_call_threshold must be positive (use \"off\" to disable)".into());
        }
        if self.open_duration.is_zero() {
            return Err("open_duration must be positive".into());
        }
        if self.max_open_duration < self.open_duration {
            return Err(format!(
                "max_open_duration ({}) must not be shorter than open_duration ({})",
                humantime::format_duration(self.max_open_duration),
                humantime::format_duration(self.open_duration)
            ));
        }
        let multiplier = self.open_backoff_multiplier;
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(format!(
                "open_backoff_multiplier must be a finite number >= 1, got {multiplier}"
            ));
        }
        if !(self.jitter >= 0.0 && self.jitter < 1.0) {
            return Err(format!("jitter must be in [0, 1), got {}", self.jitter));
        }
        if self.half_open_max_calls == 0 {
            return Err("half_open_max_calls must be at least 1".into());
        }
        if self.success_threshold == 0 {
            return Err("success_threshold must be at least 1".into());
        }
        if self.probe_timeout.is_zero() {
            return Err("probe_timeout must be positive".into());
        }
        if self.max_half_open_duration < self.probe_timeout {
            return Err(format!(
                "max_half_open_duration ({}) must not be shorter than probe_timeout ({})",
                humantime::format_duration(self.max_half_open_duration),
                humantime::format_duration(self.probe_timeout)
            ));
        }
        if self.max_endpoints == 0 {
            return Err("max_endpoints must be at least 1".into());
        }
        Ok(())
    }
}

/// How a guarded call went, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// The endpoint did its job (a slow success still counts as a failure).
    Success,
    /// The endpoint is unhealthy: 5xx, 429/503, timeout, connection error.
    Failure,
    /// Neither: the caller's or receiver's own fault (other 4xx), a cancelled call. A probe slot
    /// is released, nothing is counted.
    Ignored,
}

/// A call refused without touching the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "circuit breaker for `{endpoint}` is {}; call short-circuited, retry in {}",
    state.as_str(),
    humantime::format_duration(*retry_in)
)]
pub struct Rejected {
    pub endpoint: String,
    /// Open, or HalfOpen with every probe slot taken.
    pub state: BreakerState,
    /// When trying again may be admitted: the rest of the open period; for a forced-open
    /// breaker `max_open_duration`; when half-open and full, at most `probe_timeout`.
    pub retry_in: Duration,
}

/// Admission to call the endpoint once. Hand it back with [`CircuitBreaker::record`]; a probe
/// permit dropped without being recorded releases its half-open slot and counts neither way.
#[must_use = "record the call's outcome with CircuitBreaker::record"]
pub struct Permit {
    /// Set for probes only, so dropping one can release its slot. Closed-path permits stay light.
    owner: Option<Arc<Shared>>,
    epoch: u64,
    acquired_at: Duration,
    probe_timeout: Option<Duration>,
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe_timeout.is_some()
    }

    /// Clock reading when the permit was issued.
    pub fn acquired_at(&self) -> Duration {
        self.acquired_at
    }

    /// For probes, the timeout the caller should put on the call (`probe_timeout`).
    pub fn probe_timeout(&self) -> Option<Duration> {
        self.probe_timeout
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .field("epoch", &self.epoch)
            .field("acquired_at", &self.acquired_at)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            let mut st = owner.lock();
            if st.epoch == self.epoch && st.state == BreakerState::HalfOpen {
                st.probes_in_flight = st.probes_in_flight.saturating_sub(1);
            }
        }
    }
}

/// Point-in-time view of one breaker, for `status` output and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerSnapshot {
    pub endpoint: String,
    pub state: BreakerState,
    /// Failures / calls in the current window (0 when empty).
    pub failure_rate: f64,
    pub calls_in_window: u32,
    pub consecutive_trips: u32,
    pub probes_in_flight: u32,
    /// Held open by an operator until forced closed or reset.
    pub forced_open: bool,
    /// Time left in the open period (serialized as milliseconds); `None` unless automatically
    /// open. Zero means the next call will be admitted as a probe.
    #[serde(serialize_with = "serialize_millis")]
    pub open_until_in: Option<Duration>,
}

#[allow(clippy::ref_option)] // serde's `serialize_with` contract passes `&Option<T>`
fn serialize_millis<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => serializer.serialize_none(),
    }
}

/// Source of epochs; process-wide so a permit from another breaker never matches.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

fn fresh_epoch() -> u64 {
    NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
}

/// Count-based sliding window of call outcomes (a ring buffer of "failed" flags).
struct Window {
    failed: Box<[bool]>,
    next: usize,
    len: u32,
    failures: u32,
}

impl Window {
    fn new(size: u32) -> Self {
        Self {
            failed: vec![false; size.max(1) as usize].into_boxed_slice(),
            next: 0,
            len: 0,
            failures: 0,
        }
    }

    fn push(&mut self, failed: bool) {
        if self.len as usize == self.failed.len() {
            // Full: the slot at `next` is the oldest outcome and falls out of the window.
            if self.failed[self.next] {
                self.failures -= 1;
            }
        } else {
            self.len += 1;
        }
        self.failed[self.next] = failed;
        self.failures += u32::from(failed);
        self.next += 1;
        if self.next == self.failed.len() {
            self.next = 0;
        }
    }

    fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
        self.failures = 0;
    }

    fn failure_rate(&self) -> f64 {
        if self.len == 0 {
            0.0
        } else {
            f64::from(self.failures) / f64::from(self.len)
        }
    }
}

struct Machine {
    state: BreakerState,
    /// Changes at every transition; permits from an older epoch are ignored.
    epoch: u64,
    window: Window,
    consecutive_trips: u32,
    /// While Open: when the open period ends; `None` when forced open (no automatic probing).
    open_until: Option<Duration>,
    /// While HalfOpen: when it reopens if probes have not closed it.
    half_open_until: Duration,
    probes_in_flight: u32,
    probe_successes: u32,
}

struct Shared {
    endpoint: Arc<str>,
    config: BreakerConfig,
    clock: SharedClock,
    telemetry: SharedTelemetry,
    state: Mutex<Machine>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Emits under the lock so transitions reach telemetry in the order they happened.
    fn transition(&self, st: &mut Machine, to: BreakerState) {
        let from = st.state;
        st.state = to;
        st.epoch = fresh_epoch();
        st.probes_in_flight = 0;
        st.probe_successes = 0;
        if from == to {
            return;
        }
        self.telemetry.emit(&TelemetryEvent::BreakerTransition {
            endpoint: &self.endpoint,
            from,
            to,
        });
    }

    /// Automatic trip (from Closed on failure rate, from HalfOpen on a failed or late probe).
    fn trip(&self, st: &mut Machine, now: Duration) {
        st.consecutive_trips = st.consecutive_trips.saturating_add(1);
        let open_for = self.open_duration_for(st.consecutive_trips);
        st.open_until = Some(now.saturating_add(open_for));
        tracing::warn!(
            endpoint = %self.endpoint,
            from = st.state.as_str(),
            failure_rate = st.window.failure_rate(),
            consecutive_trips = st.consecutive_trips,
            open_for = %humantime::format_duration(open_for),
            "circuit breaker opened; calls are short-circuited"
        );
        self.transition(st, BreakerState::Open);
    }

    fn close(&self, st: &mut Machine) {
        st.window.clear();
        st.consecutive_trips = 0;
        st.open_until = None;
        if st.state != BreakerState::Closed {
            tracing::info!(endpoint = %self.endpoint, from = st.state.as_str(), "circuit breaker closed");
        }
        self.transition(st, BreakerState::Closed);
    }

    fn half_open(&self, st: &mut Machine, now: Duration) {
        st.half_open_until = now.saturating_add(self.config.max_half_open_duration);
        st.open_until = None;
        tracing::info!(endpoint = %self.endpoint, "circuit breaker half-open; probing");
        self.transition(st, BreakerState::HalfOpen);
    }

    /// Reopens a half-open breaker whose probes did not settle in time.
    fn expire_half_open(&self, st: &mut Machine, now: Duration) {
        if st.state == BreakerState::HalfOpen && now >= st.half_open_until {
            self.trip(st, now);
        }
    }

    /// `open_duration × multiplier^(trips−1)`, capped, then jittered by `1 ± jitter`.
    fn open_duration_for(&self, trips: u32) -> Duration {
        let cfg = &self.config;
        let exponent = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
        let cap = cfg.max_open_duration.as_secs_f64();
        // `f64::min` ignores NaN, so a nonsensical multiplier degrades to the cap.
        let mut secs =
            (cfg.open_duration.as_secs_f64() * cfg.open_backoff_multiplier.powi(exponent)).min(cap);
        if cfg.jitter > 0.0 && cfg.jitter.is_finite() {
            let jitter = cfg.jitter.min(1.0);
            secs *= 1.0 + rand::rng().random_range(-jitter..=jitter);
        }
        Duration::try_from_secs_f64(secs).unwrap_or(cfg.max_open_duration)
    }
}

/// The breaker of one endpoint. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("endpoint", &self.shared.endpoint)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A Closed breaker. Call [`BreakerConfig::validate`] first: an invalid config does not panic
    /// but behaves oddly (e.g. `minimum_calls = 0` may trip on the first failure).
    pub fn new(
        endpoint: impl Into<String>,
        config: BreakerConfig,
        clock: SharedClock,
        telemetry: SharedTelemetry,
    ) -> Self {
        let state = Machine {
            state: BreakerState::Closed,
            epoch: fresh_epoch(),
            window: Window::new(config.window_size),
            consecutive_trips: 0,
            open_until: None,
            half_open_until: Duration::ZERO,
            probes_in_flight: 0,
            probe_successes: 0,
        };
        Self {
            shared: Arc::new(Shared {
                endpoint: Arc::from(endpoint.into()),
                config,
                clock,
                telemetry,
                state: Mutex::new(state),
            }),
        }
    }

    /// A breaker on the system clock that reports no telemetry, for library users and tools.
    pub fn standalone(endpoint: impl Into<String>, config: BreakerConfig) -> Self {
        Self::new(endpoint, config, system_clock(), Arc::new(NoopTelemetry))
    }

    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The timeout callers should put on a probe call.
    pub fn probe_timeout(&self) -> Duration {
        self.shared.config.probe_timeout
    }

    /// The stored state. An Open breaker whose period has elapsed still reads Open until the next
    /// `try_acquire` turns it HalfOpen (see `open_until_in` in [`Self::snapshot`]).
    pub fn state(&self) -> BreakerState {
        self.shared.lock().state
    }

    /// Asks to call the endpoint once. Closed: admitted. Open: rejected until the open period
    /// ends, then this caller becomes the first probe. HalfOpen: admitted as a probe while fewer
    /// than `half_open_max_calls` probes are in flight, otherwise rejected.
    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        let shared = &*self.shared;
        let cfg = &shared.config;
        let now = shared.clock.now();
        let refused = {
            let mut st = shared.lock();
            match st.state {
                BreakerState::Closed => {
                    return Ok(Permit {
                        owner: None,
                        epoch: st.epoch,
                        acquired_at: now,
                        probe_timeout: None,
                    });
                }
                BreakerState::Open => match st.open_until {
                    Some(until) if now >= until => {
                        shared.half_open(&mut st, now);
                        st.probes_in_flight = 1;
                        return Ok(self.probe(st.epoch, now));
                    }
                    Some(until) => (BreakerState::Open, until.saturating_sub(now)),
                    None => (BreakerState::Open, cfg.max_open_duration),
                },
                BreakerState::HalfOpen => {
                    if now >= st.half_open_until {
                        shared.trip(&mut st, now);
                        let retry_in = st
                            .open_until
                            .map_or(Duration::ZERO, |u| u.saturating_sub(now));
                        (BreakerState::Open, retry_in)
                    } else if st.probes_in_flight < cfg.half_open_max_calls {
                        st.probes_in_flight += 1;
                        return Ok(self.probe(st.epoch, now));
                    } else {
                        let left = st.half_open_until.saturating_sub(now);
                        (BreakerState::HalfOpen, left.min(cfg.probe_timeout))
                    }
                }
            }
        };
        let (state, retry_in) = refused;
        shared.telemetry.emit(&TelemetryEvent::BreakerRejected {
            endpoint: &shared.endpoint,
        });
        Err(Rejected {
            endpoint: shared.endpoint.to_string(),
            state,
            retry_in,
        })
    }

    fn probe(&self, epoch: u64, now: Duration) -> Permit {
        Permit {
            owner: Some(Arc::clone(&self.shared)),
            epoch,
            acquired_at: now,
            probe_timeout: Some(self.shared.config.probe_timeout),
        }
    }

    /// Reports how the admitted call went. Outcomes of permits issued before the latest
    /// transition (or by another breaker) are ignored.
    #[allow(clippy::needless_pass_by_value)] // consuming the permit is the point: one record each
    pub fn record(&self, mut permit: Permit, outcome: CallOutcome) {
        let shared = &*self.shared;
        let cfg = &shared.config;
        let is_probe = match &permit.owner {
            Some(owner) if !Arc::ptr_eq(owner, &self.shared) => {
                // Another breaker's probe: its Drop releases the slot where it belongs.
                tracing::debug!(endpoint = %shared.endpoint, "permit recorded on the wrong breaker; ignored");
                return;
            }
            Some(_) => true,
            None => false,
        };
        // Disarm Drop: this call settles the slot itself.
        permit.owner = None;
        let slow_check = outcome == CallOutcome::Success && cfg.slow_call_threshold.is_some();
        let now = if is_probe || slow_check {
            shared.clock.now()
        } else {
            Duration::ZERO
        };
        let failed = match outcome {
            CallOutcome::Failure => true,
            CallOutcome::Success => cfg
                .slow_call_threshold
                .is_some_and(|limit| now.saturating_sub(permit.acquired_at) > limit),
            CallOutcome::Ignored => false,
        };

        let mut st = shared.lock();
        if is_probe {
            shared.expire_half_open(&mut st, now);
        }
        if st.epoch != permit.epoch {
            return;
        }
        match st.state {
            BreakerState::Closed => {
                if outcome == CallOutcome::Ignored {
                    return;
                }
                st.window.push(failed);
                let calls = st.window.len;
                if calls >= cfg.minimum_calls
                    && f64::from(st.window.failures)
                        >= cfg.failure_rate_threshold * f64::from(calls)
                {
                    // `now` may not have been read (failures need no latency); trips are rare.
                    shared.trip(&mut st, shared.clock.now());
                }
            }
            BreakerState::HalfOpen => {
                st.probes_in_flight = st.probes_in_flight.saturating_sub(1);
                match outcome {
                    CallOutcome::Ignored => {}
                    _ if failed => shared.trip(&mut st, now),
                    _ => {
                        st.probe_successes += 1;
                        if st.probe_successes >= cfg.success_threshold {
                            shared.close(&mut st);
                        }
                    }
                }
            }
            // No permit is issued while Open, so a matching epoch cannot be Open.
            BreakerState::Open => {}
        }
    }

    /// Runs `f` if admitted and records the outcome `classify` assigns to its result. If the
    /// future is dropped mid-call the permit is released uncounted. It does not apply
    /// `probe_timeout`; callers needing that use [`Self::try_acquire`] and
    /// [`Permit::probe_timeout`].
    pub async fn call<T, E, F, Fut>(
        &self,
        classify: impl Fn(&Result<T, E>) -> CallOutcome,
        f: F,
    ) -> Result<Result<T, E>, Rejected>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        let result = f().await;
        self.record(permit, classify(&result));
        Ok(result)
    }

    /// Operator override: open now and stay open (no automatic probing) until
    /// [`Self::force_closed`], [`Self::force_half_open`] or [`Self::reset`].
    pub fn force_open(&self) {
        let shared = &*self.shared;
        let mut st = shared.lock();
        st.open_until = None;
        tracing::warn!(endpoint = %shared.endpoint, "circuit breaker forced open by operator");
        shared.transition(&mut st, BreakerState::Open);
    }

    /// Operator override: close now with an empty window and no trip history. Automatic
    /// operation resumes, so it can trip again.
    pub fn force_closed(&self) {
        let shared = &*self.shared;
        let mut st = shared.lock();
        tracing::warn!(endpoint = %shared.endpoint, "circuit breaker forced closed by operator");
        shared.close(&mut st);
    }

    /// Operator override: start probing now.
    pub fn force_half_open(&self) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let mut st = shared.lock();
        tracing::warn!(endpoint = %shared.endpoint, "circuit breaker forced half-open by operator");
        shared.half_open(&mut st, now);
    }

    /// Forgets all history: Closed, empty window, trip counter zero. Same effect as
    /// [`Self::force_closed`] without the operator warning.
    pub fn reset(&self) {
        let shared = &*self.shared;
        let mut st = shared.lock();
        shared.close(&mut st);
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let st = shared.lock();
        let open = st.state == BreakerState::Open;
        BreakerSnapshot {
            endpoint: shared.endpoint.to_string(),
            state: st.state,
            failure_rate: st.window.failure_rate(),
            calls_in_window: st.window.len,
            consecutive_trips: st.consecutive_trips,
            probes_in_flight: st.probes_in_flight,
            forced_open: open && st.open_until.is_none(),
            open_until_in: if open {
                st.open_until.map(|until| until.saturating_sub(now))
            } else {
                None
            },
        }
    }
}

struct RegistryEntry {
    breaker: Arc<CircuitBreaker>,
    last_used: u64,
}

#[derive(Default)]
struct RegistryEntries {
    map: HashMap<Box<str>, RegistryEntry>,
    tick: u64,
}

/// One breaker per endpoint, created on first use and bounded by `max_endpoints`: when full, the
/// least recently used Closed breaker is evicted (an Open or HalfOpen one only if none is Closed).
/// An evicted breaker keeps working for whoever still holds its `Arc`; the next `get` starts a
/// fresh one.
pub struct BreakerRegistry {
    config: BreakerConfig,
    clock: SharedClock,
    telemetry: SharedTelemetry,
    entries: Mutex<RegistryEntries>,
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("config", &self.config)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl BreakerRegistry {
    pub fn new(config: BreakerConfig, clock: SharedClock, telemetry: SharedTelemetry) -> Self {
        Self {
            config,
            clock,
            telemetry,
            entries: Mutex::new(RegistryEntries::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryEntries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The endpoint's breaker, created (possibly evicting another) on first use.
    pub fn get(&self, endpoint: &str) -> Arc<CircuitBreaker> {
        let mut entries = self.lock();
        entries.tick += 1;
        let tick = entries.tick;
        if let Some(entry) = entries.map.get_mut(endpoint) {
            entry.last_used = tick;
            return Arc::clone(&entry.breaker);
        }
        while entries.map.len() >= self.config.max_endpoints.max(1) {
            Self::evict_one(&mut entries.map);
        }
        let breaker = Arc::new(CircuitBreaker::new(
            endpoint,
            self.config.clone(),
            Arc::clone(&self.clock),
            Arc::clone(&self.telemetry),
        ));
        entries.map.insert(
            endpoint.into(),
            RegistryEntry {
                breaker: Arc::clone(&breaker),
                last_used: tick,
            },
        );
        breaker
    }

    fn evict_one(map: &mut HashMap<Box<str>, RegistryEntry>) {
        let victim = map
            .iter()
            .filter(|(_, e)| e.breaker.state() == BreakerState::Closed)
            .min_by_key(|(_, e)| e.last_used)
            .or_else(|| map.iter().min_by_key(|(_, e)| e.last_used))
            .map(|(endpoint, _)| endpoint.clone());
        if let Some(endpoint) = victim {
            tracing::debug!(endpoint = %endpoint, "circuit breaker evicted from a full registry");
            map.remove(&endpoint);
        }
    }

    /// The endpoint's breaker if one exists; does not create one or count as a use.
    pub fn peek(&self, endpoint: &str) -> Option<Arc<CircuitBreaker>> {
        self.lock()
            .map
            .get(endpoint)
            .map(|e| Arc::clone(&e.breaker))
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().map.is_empty()
    }

    /// Snapshots of every breaker, sorted by endpoint.
    pub fn snapshot_all(&self) -> Vec<BreakerSnapshot> {
        let breakers: Vec<Arc<CircuitBreaker>> = self
            .lock()
            .map
            .values()
            .map(|e| Arc::clone(&e.breaker))
            .collect();
        let mut snapshots: Vec<BreakerSnapshot> = breakers.iter().map(|b| b.snapshot()).collect();
        snapshots.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        snapshots
    }

    /// Operator override for one endpoint (creating its breaker if needed): Open pins it open,
    /// Closed closes it with a clean history, HalfOpen starts probing now.
    pub fn force(&self, endpoint: &str, state: BreakerState) -> BreakerSnapshot {
        let breaker = self.get(endpoint);
        match state {
            BreakerState::Open => breaker.force_open(),
            BreakerState::Closed => breaker.force_closed(),
            BreakerState::HalfOpen => breaker.force_half_open(),
        }
        breaker.snapshot()
    }
}

/// Humantime strings for `Duration` fields (`"5s"`, `"1m 30s"`, `"250ms"`).
mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|err| {
            format!("invalid duration `{text}` ({err}); write e.g. \"5s\" or \"250ms\"")
        })
    }

    /// Optional durations: `"off"`, `"none"` or `"disabled"` (or a null) mean `None`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        #[allow(clippy::ref_option)] // serde's `with` contract passes `&Option<T>`
        pub fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(d) => serializer.collect_str(&humantime::format_duration(*d)),
                None => serializer.serialize_str("off"),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                None => Ok(None),
                Some(text)
                    if ["off", "none", "disabled"]
                        .iter()
                        .any(|word| text.trim().eq_ignore_ascii_case(word)) =>
                {
                    Ok(None)
                }
                Some(text) => super::parse(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::sync::Barrier;
    use std::thread;

    use super::*;
    use crate::clock::ManualClock;
    use crate::telemetry::Telemetry;

    use BreakerState::{Closed, HalfOpen, Open};
    use CallOutcome::{Failure, Ignored, Success};

    #[derive(Debug, Clone, PartialEq)]
    enum Seen {
        Transition(BreakerState, BreakerState),
        Rejected,
    }

    #[derive(Default)]
    struct Recording {
        events: Mutex<Vec<Seen>>,
    }

    impl Recording {
        fn events(&self) -> Vec<Seen> {
            self.events.lock().unwrap().clone()
        }

        fn transitions(&self) -> Vec<(BreakerState, BreakerState)> {
            self.events()
                .into_iter()
                .filter_map(|e| match e {
                    Seen::Transition(from, to) => Some((from, to)),
                    Seen::Rejected => None,
                })
                .collect()
        }

        fn rejections(&self) -> usize {
            self.events()
                .iter()
                .filter(|e| **e == Seen::Rejected)
                .count()
        }
    }

    impl Telemetry for Recording {
        fn emit(&self, event: &TelemetryEvent<'_>) {
            let seen = match event {
                TelemetryEvent::BreakerTransition { endpoint, from, to } => {
                    assert_eq!(*endpoint, "hooks.example.com");
                    Seen::Transition(*from, *to)
                }
                TelemetryEvent::BreakerRejected { endpoint } => {
                    assert_eq!(*endpoint, "hooks.example.com");
                    Seen::Rejected
                }
                other => panic!("unexpected event {other:?}"),
            };
            self.events.lock().unwrap().push(seen);
        }
    }

    /// Defaults without jitter, so open periods are exact.
    fn config() -> BreakerConfig {
        BreakerConfig {
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    struct Harness {
        breaker: CircuitBreaker,
        clock: ManualClock,
        telemetry: Arc<Recording>,
    }

    fn harness(config: BreakerConfig) -> Harness {
        config.validate().unwrap();
        let clock = ManualClock::new();
        let telemetry = Arc::new(Recording::default());
        let breaker = CircuitBreaker::new(
            "hooks.example.com",
            config,
            Arc::new(clock.clone()),
            telemetry.clone(),
        );
        Harness {
            breaker,
            clock,
            telemetry,
        }
    }

    impl Harness {
        /// One call per letter: S success, F failure, I ignored. Rejected calls are skipped.
        fn calls(&self, script: &str) {
            for letter in script.chars().filter(|c| !c.is_whitespace()) {
                let outcome = match letter {
                    'S' => Success,
                    'F' => Failure,
                    'I' => Ignored,
                    other => panic!("bad script letter {other}"),
                };
                if let Ok(permit) = self.breaker.try_acquire() {
                    self.breaker.record(permit, outcome);
                }
            }
        }

        fn trip(&self) {
            self.calls("FFFFFFFFFF");
            assert_eq!(self.breaker.state(), Open);
        }

        fn rejected(&self) -> Rejected {
            self.breaker.try_acquire().unwrap_err()
        }

        fn probe(&self) -> Permit {
            let permit = self.breaker.try_acquire().unwrap();
            assert!(permit.is_probe());
            permit
        }
    }

    #[test]
    fn trips_on_failure_rate_only_once_minimum_calls_are_seen() {
        // (case, window_size, minimum_calls, threshold, script, expected state)
        let cases = [
            ("below minimum calls", 20, 10, 0.5, "FFFFFFFFF", Closed),
            (
                "minimum reached, all failed",
                20,
                10,
                0.5,
                "FFFFFFFFFF",
                Open,
            ),
            ("exactly at the threshold", 20, 10, 0.5, "SSSSSFFFFF", Open),
            (
                "reaching minimum on a success",
                20,
                10,
                0.5,
                "FFFFFSSSSS",
                Open,
            ),
            (
                "just below the threshold",
                20,
                10,
                0.5,
                "SSSSSSFFFF",
                Closed,
            ),
            (
                "threshold 1 needs all failed",
                20,
                10,
                1.0,
                "FFFFFFFFFS",
                Closed,
            ),
            ("low threshold", 20, 4, 0.25, "SSSF", Open),
            (
                "ignored calls do not count",
                20,
                10,
                0.5,
                "FFFFF IIIIIIIIII",
                Closed,
            ),
            (
                "ignored between failures",
                20,
                10,
                0.5,
                "FFFFF IIIII FFFFF",
                Open,
            ),
            // A window of 10 sees SSSSSFFFFF (5/10); a cumulative count would see 5/15.
            ("window slides", 10, 10, 0.5, "SSSSSSSSSS FFFFF", Open),
            (
                "old failures slide out",
                10,
                10,
                0.5,
                "SSSSFFFF SSSSSSSSSS F",
                Closed,
            ),
        ];
        for (case, window_size, minimum_calls, threshold, script, expected) in cases {
            let h = harness(BreakerConfig {
                window_size,
                minimum_calls,
                failure_rate_threshold: threshold,
                ..config()
            });
            h.calls(script);
            assert_eq!(h.breaker.state(), expected, "{case}");
        }
    }

    #[test]
    fn stays_closed_under_a_steady_low_failure_rate() {
        let h = harness(config());
        for _ in 0..100 {
            h.calls("SSSF"); // 25% failures against a 50% threshold
        }
        let snap = h.breaker.snapshot();
        assert_eq!(snap.state, Closed);
        assert_eq!(snap.calls_in_window, 20);
        assert!((snap.failure_rate - 0.25).abs() < 1e-9);
        assert!(h.telemetry.events().is_empty());
    }

    #[test]
    fn short_circuits_while_open_and_reports_the_time_left() {
        let h = harness(config());
        h.trip();
        let first = h.rejected();
        assert_eq!(first.state, Open);
        assert_eq!(first.retry_in, Duration::from_secs(5));
        assert_eq!(first.endpoint, "hooks.example.com");
        h.clock.advance(Duration::from_millis(3_250));
        assert_eq!(h.rejected().retry_in, Duration::from_millis(1_750));
        h.clock.advance(Duration::from_millis(1_749));
        assert_eq!(h.rejected().retry_in, Duration::from_millis(1));
        assert_eq!(h.telemetry.rejections(), 3);
        assert_eq!(
            h.breaker.snapshot().open_until_in,
            Some(Duration::from_millis(1))
        );
        assert!(first.to_string().contains("is open"), "{first}");
    }

    #[test]
    fn half_open_admits_exactly_the_configured_probes() {
        let h = harness(config());
        h.trip();
        h.clock
            .advance(Duration::from_secs(5) - Duration::from_nanos(1));
        assert_eq!(h.rejected().state, Open);
        h.clock.advance(Duration::from_nanos(1));
        let probes: Vec<Permit> = (0..3).map(|_| h.probe()).collect();
        assert_eq!(h.breaker.state(), HalfOpen);
        assert_eq!(probes[0].probe_timeout(), Some(Duration::from_secs(2)));
        let full = h.rejected();
        assert_eq!(full.state, HalfOpen);
        assert_eq!(
            full.retry_in,
            Duration::from_secs(2),
            "bounded by probe_timeout"
        );
        assert_eq!(h.breaker.snapshot().probes_in_flight, 3);
    }

    #[test]
    fn closes_after_the_success_threshold_of_probes() {
        let h = harness(BreakerConfig {
            half_open_max_calls: 2,
            success_threshold: 3,
            ..config()
        });
        h.trip();
        h.clock.advance(Duration::from_secs(5));
        let (a, b) = (h.probe(), h.probe());
        h.breaker.record(a, Success);
        // A settled probe frees its slot for the next one.
        let c = h.probe();
        assert!(h.breaker.try_acquire().is_err());
        h.breaker.record(b, Success);
        assert_eq!(h.breaker.state(), HalfOpen);
        h.breaker.record(c, Success);
        let snap = h.breaker.snapshot();
        assert_eq!(snap.state, Closed);
        assert_eq!(snap.calls_in_window, 0, "window cleared on close");
        assert_eq!(snap.consecutive_trips, 0);
        assert!(!h.breaker.try_acquire().unwrap().is_probe());
    }

    #[test]
    fn failed_probes_reopen_for_longer_up_to_the_cap() {
        let h = harness(BreakerConfig {
            open_duration: Duration::from_secs(5),
            max_open_duration: Duration::from_secs(30),
            open_backoff_multiplier: 2.0,
            ..config()
        });
        h.trip();
        let expected = [5, 10, 20, 30, 30, 30];
        for (trip, secs) in expected.iter().enumerate() {
            let open_for = Duration::from_secs(*secs);
            assert_eq!(h.rejected().retry_in, open_for, "trip {}", trip + 1);
            assert_eq!(
                h.breaker.snapshot().consecutive_trips,
                u32::try_from(trip + 1).unwrap()
            );
            h.clock.advance(open_for);
            let probe = h.probe();
            let sibling = h.probe();
            h.breaker.record(probe, Failure);
            assert_eq!(h.breaker.state(), Open, "any failed probe reopens");
            // The sibling settles after the reopen: stale, so it neither closes nor re-trips.
            h.breaker.record(sibling, Success);
            assert_eq!(h.breaker.state(), Open);
        }
    }

    #[test]
    fn backoff_survives_huge_trip_counts() {
        let h = harness(config());
        let shared = &h.breaker.shared;
        assert_eq!(shared.open_duration_for(1), Duration::from_secs(5));
        assert_eq!(shared.open_duration_for(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn slow_successes_count_as_failures() {
        // (elapsed, counts as failure)
        let cases = [
            (Duration::from_millis(10), false),
            (Duration::from_secs(1), false),
            (Duration::from_secs(1) + Duration::from_nanos(1), true),
            (Duration::from_secs(60), true),
        ];
        for (elapsed, slow) in cases {
            let h = harness(BreakerConfig {
                slow_call_threshold: Some(Duration::from_secs(1)),
                minimum_calls: 1,
                failure_rate_threshold: 1.0,
                ..config()
            });
            let permit = h.breaker.try_acquire().unwrap();
            h.clock.advance(elapsed);
            h.breaker.record(permit, Success);
            let expected = if slow { Open } else { Closed };
            assert_eq!(h.breaker.state(), expected, "elapsed {elapsed:?}");
        }
    }

    #[test]
    fn slow_probe_reopens_and_disabled_threshold_ignores_latency() {
        let h = harness(BreakerConfig {
            slow_call_threshold: Some(Duration::from_secs(1)),
            ..config()
        });
        h.trip();
        h.clock.advance(Duration::from_secs(5));
        let probe = h.probe();
        h.clock.advance(Duration::from_millis(1_500));
        h.breaker.record(probe, Success);
        assert_eq!(h.breaker.state(), Open);

        let h = harness(BreakerConfig {
            slow_call_threshold: None,
            minimum_calls: 1,
            ..config()
        });
        let permit = h.breaker.try_acquire().unwrap();
        h.clock.advance(Duration::from_secs(3_600));
        h.breaker.record(permit, Success);
        assert_eq!(h.breaker.state(), Closed);
    }

    #[test]
    fn ignored_outcomes_neither_trip_nor_close() {
        let h = harness(config());
        h.calls(&"I".repeat(1_000));
        assert_eq!(h.breaker.snapshot().calls_in_window, 0);
        assert_eq!(h.breaker.state(), Closed);

        h.trip();
        h.clock.advance(Duration::from_secs(5));
        let probes: Vec<Permit> = (0..3).map(|_| h.probe()).collect();
        for probe in probes {
            h.breaker.record(probe, Ignored);
        }
        assert_eq!(h.breaker.state(), HalfOpen);
        // Every slot came back.
        let again: Vec<Permit> = (0..3).map(|_| h.probe()).collect();
        assert!(h.breaker.try_acquire().is_err());
        drop(again);
    }

    #[test]
    fn dropped_probe_releases_its_slot() {
        let h = harness(config());
        h.trip();
        h.clock.advance(Duration::from_secs(5));
        let mut probes: Vec<Permit> = (0..3).map(|_| h.probe()).collect();
        assert!(h.breaker.try_acquire().is_err());
        drop(probes.pop());
        probes.push(h.probe());
        assert!(h.breaker.try_acquire().is_err());
        assert_eq!(h.breaker.snapshot().probes_in_flight, 3);
    }

    #[test]
    fn half_open_for_too_long_reopens() {
        // Slow-call detection off, so a late probe is judged by the half-open deadline alone.
        let h = harness(BreakerConfig {
            slow_call_threshold: None,
            ..config()
        });
        h.trip();
        h.clock.advance(Duration::from_secs(5));
        let stuck: Vec<Permit> = (0..3).map(|_| h.probe()).collect();
        h.clock.advance(Duration::from_secs(30));
        let rejected = h.rejected();
        assert_eq!(rejected.state, Open);
        assert_eq!(
            rejected.retry_in,
            Duration::from_secs(10),
            "second trip backs off"
        );
        assert_eq!(h.breaker.snapshot().consecutive_trips, 2);
        // Late successes of the stuck probes are stale.
        for probe in stuck {
            h.breaker.record(probe, Success);
        }
        assert_eq!(h.breaker.state(), Open);

        // The deadline is also enforced when a late probe reports without new traffic.
        h.clock.advance(Duration::from_secs(10));
        let late = h.probe();
        h.clock.advance(Duration::from_secs(31));
        h.breaker.record(late, Success);
        assert_eq!(h.breaker.state(), Open);
        assert_eq!(h.breaker.snapshot().consecutive_trips, 3);
    }

    #[test]
    fn operators_force_open_and_closed() {
        let h = harness(config());
        h.calls("FFFF");
        h.breaker.force_open();
        h.clock.advance(Duration::from_secs(86_400));
        let rejected = h.rejected();
        assert_eq!(rejected.retry_in, Duration::from_secs(300));
        let snap = h.breaker.snapshot();
        assert!(snap.forced_open);
        assert_eq!(snap.open_until_in, None);
        assert_eq!(snap.state, Open);

        h.breaker.force_closed();
        let snap = h.breaker.snapshot();
        assert_eq!(
            (snap.state, snap.calls_in_window, snap.forced_open),
            (Closed, 0, false)
        );
        assert!(h.breaker.try_acquire().is_ok());

        h.breaker.force_half_open();
        let _probe = h.probe();
        h.breaker.reset();
        assert_eq!(h.breaker.state(), Closed);
        assert_eq!(
            h.telemetry.transitions(),
            vec![
                (Closed, Open),
                (Open, Closed),
                (Closed, HalfOpen),
                (HalfOpen, Closed)
            ]
        );
    }

    #[test]
    fn outcomes_from_before_a_transition_are_ignored() {
        let h = harness(BreakerConfig {
            minimum_calls: 1,
            ..config()
        });
        let permit = h.breaker.try_acquire().unwrap();
        h.breaker.force_open();
        h.breaker.force_closed();
        h.breaker.record(permit, Failure);
        assert_eq!(h.breaker.state(), Closed);
        assert_eq!(h.breaker.snapshot().calls_in_window, 0);

        // A permit from another breaker is ignored too.
        let other = harness(config());
        let foreign = other.breaker.try_acquire().unwrap();
        h.breaker.record(foreign, Failure);
        assert_eq!(h.breaker.snapshot().calls_in_window, 0);
    }

    #[test]
    fn telemetry_reports_transitions_in_order() {
        let h = harness(config());
        h.trip();
        let _ = h.rejected();
        h.clock.advance(Duration::from_secs(5));
        let probe = h.probe();
        h.breaker.record(probe, Failure);
        h.clock.advance(Duration::from_secs(10));
        for _ in 0..3 {
            let probe = h.probe();
            h.breaker.record(probe, Success);
        }
        assert_eq!(
            h.telemetry.events(),
            vec![
                Seen::Transition(Closed, Open),
                Seen::Rejected,
                Seen::Transition(Open, HalfOpen),
                Seen::Transition(HalfOpen, Open),
                Seen::Transition(Open, HalfOpen),
                Seen::Transition(HalfOpen, Closed),
            ]
        );
    }

    #[test]
    fn jitter_spreads_open_periods_within_bounds() {
        let h = harness(BreakerConfig {
            jitter: 0.1,
            ..config()
        });
        let samples: Vec<Duration> = (0..200)
            .map(|_| h.breaker.shared.open_duration_for(1))
            .collect();
        let (low, high) = (Duration::from_millis(4_500), Duration::from_millis(5_500));
        assert!(
            samples.iter().all(|d| (low..=high).contains(d)),
            "{samples:?}"
        );
        assert!(samples.iter().any(|d| *d != samples[0]), "jitter must vary");
    }

    #[test]
    fn many_threads_racing_into_half_open_get_exactly_the_probe_slots() {
        const THREADS: usize = 16;
        for _ in 0..20 {
            let h = harness(config());
            h.trip();
            h.clock.advance(Duration::from_secs(5));
            let breaker = Arc::new(h.breaker);
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let breaker = Arc::clone(&breaker);
                    let barrier = Arc::clone(&barrier);
                    thread::spawn(move || {
                        barrier.wait();
                        breaker.try_acquire().ok()
                    })
                })
                .collect();
            // Keep admitted permits alive until all threads are counted.
            let admitted: Vec<Permit> = handles
                .into_iter()
                .filter_map(|handle| handle.join().unwrap())
                .collect();
            assert_eq!(admitted.len(), 3);
            assert!(admitted.iter().all(Permit::is_probe));
            assert_eq!(h.telemetry.rejections(), THREADS - 3);
            assert_eq!(
                h.telemetry.transitions(),
                vec![(Closed, Open), (Open, HalfOpen)]
            );
        }
    }

    fn registry(max_endpoints: usize) -> (BreakerRegistry, ManualClock) {
        let clock = ManualClock::new();
        let registry = BreakerRegistry::new(
            BreakerConfig {
                max_endpoints,
                minimum_calls: 1,
                ..config()
            },
            Arc::new(clock.clone()),
            Arc::new(NoopTelemetry),
        );
        (registry, clock)
    }

    fn fail_once(breaker: &CircuitBreaker) {
        let permit = breaker.try_acquire().unwrap();
        breaker.record(permit, Failure);
    }

    #[test]
    fn registry_reuses_breakers_and_evicts_least_recently_used_closed_first() {
        let (registry, _clock) = registry(3);
        let a = registry.get("a");
        assert!(Arc::ptr_eq(&a, &registry.get("a")));
        registry.get("b");
        registry.get("c");
        fail_once(&a); // a is Open and the least recently used
        registry.get("b");
        registry.get("d"); // full: evicts c (LRU Closed), not a (Open) nor b (used recently)
        let mut present: Vec<&str> = ["a", "b", "c", "d"]
            .into_iter()
            .filter(|e| registry.peek(e).is_some())
            .collect();
        present.sort_unstable();
        assert_eq!(present, vec!["a", "b", "d"]);
        assert!(
            Arc::ptr_eq(&a, &registry.get("a")),
            "open breaker kept its state"
        );
        assert_eq!(registry.get("a").state(), Open);
    }

    #[test]
    fn registry_stays_bounded_when_every_breaker_is_open() {
        let (registry, _clock) = registry(2);
        fail_once(&registry.get("x"));
        fail_once(&registry.get("y"));
        registry.get("z");
        assert_eq!(registry.len(), 2);
        assert!(
            registry.peek("x").is_none(),
            "oldest goes when none is closed"
        );
    }

    #[test]
    fn registry_forces_and_snapshots_every_breaker() {
        let (registry, clock) = registry(8);
        fail_once(&registry.get("b.example"));
        let forced = registry.force("a.example", Open);
        assert!(forced.forced_open);
        clock.advance(Duration::from_secs(2));
        let all = registry.snapshot_all();
        let endpoints: Vec<&str> = all.iter().map(|s| s.endpoint.as_str()).collect();
        assert_eq!(endpoints, vec!["a.example", "b.example"]);
        assert_eq!(all[1].open_until_in, Some(Duration::from_secs(3)));
        let json = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(json["state"], "open");
        assert_eq!(json["open_until_in"], 3_000);
        assert_eq!(json["calls_in_window"], 1);
        assert_eq!(registry.force("a.example", Closed).state, Closed);
        assert_eq!(registry.force("b.example", HalfOpen).state, HalfOpen);
        assert!(registry.get("b.example").try_acquire().unwrap().is_probe());
    }

    #[test]
    fn config_reads_humantime_and_rejects_unknown_fields() {
        let parsed: BreakerConfig = toml::from_str(
            "open_duration = \"250ms\"\nmax_open_duration = \"2m\"\nslow_call_threshold = \"off\"\nwindow_size = 50",
        )
        .unwrap();
        assert_eq!(parsed.open_duration, Duration::from_millis(250));
        assert_eq!(parsed.max_open_duration, Duration::from_secs(120));
        assert_eq!(parsed.slow_call_threshold, None);
        assert_eq!(parsed.window_size, 50);
        assert_eq!(parsed.minimum_calls, 10, "unset fields keep defaults");
        parsed.validate().unwrap();

        let empty: BreakerConfig = toml::from_str("").unwrap();
        assert_eq!(empty, BreakerConfig::default());
        assert!(toml::from_str::<BreakerConfig>("failure_threshold = 5").is_err());
        let bad = toml::from_str::<BreakerConfig>("open_duration = \"soon\"").unwrap_err();
        assert!(bad.to_string().contains("invalid duration"), "{bad}");

        let round_trip: BreakerConfig =
            serde_json::from_value(serde_json::to_value(BreakerConfig::default()).unwrap())
                .unwrap();
        assert_eq!(round_trip, BreakerConfig::default());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cases: [(&str, BreakerConfig); 13] = [
            (
                "failure_rate_threshold",
                BreakerConfig {
                    failure_rate_threshold: 0.0,
                    ..config()
                },
            ),
            (
                "failure_rate_threshold",
                BreakerConfig {
                    failure_rate_threshold: f64::NAN,
                    ..config()
                },
            ),
            (
                "window_size",
                BreakerConfig {
                    window_size: 0,
                    ..config()
                },
            ),
            (
                "minimum_calls",
                BreakerConfig {
                    minimum_calls: 21,
                    ..config()
                },
            ),
            (
                "slow_call_threshold",
                BreakerConfig {
                    slow_call_threshold: Some(Duration::ZERO),
                    ..config()
                },
            ),
            (
                "open_duration",
                BreakerConfig {
                    open_duration: Duration::ZERO,
                    ..config()
                },
            ),
            (
                "max_open_duration",
                BreakerConfig {
                    max_open_duration: Duration::from_secs(1),
                    ..config()
                },
            ),
            (
                "open_backoff_multiplier",
                BreakerConfig {
                    open_backoff_multiplier: 0.5,
                    ..config()
                },
            ),
            (
                "jitter",
                BreakerConfig {
                    jitter: 1.0,
                    ..config()
                },
            ),
            (
                "half_open_max_calls",
                BreakerConfig {
                    half_open_max_calls: 0,
                    ..config()
                },
            ),
            (
                "success_threshold",
                BreakerConfig {
                    success_threshold: 0,
                    ..config()
                },
            ),
            (
                "max_half_open_duration",
                BreakerConfig {
                    max_half_open_duration: Duration::from_secs(1),
                    ..config()
                },
            ),
            (
                "max_endpoints",
                BreakerConfig {
                    max_endpoints: 0,
                    ..config()
                },
            ),
        ];
        BreakerConfig::default().validate().unwrap();
        for (field, bad) in cases {
            let err = bad.validate().unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[tokio::test]
    async fn call_records_the_classified_outcome() {
        let h = harness(BreakerConfig {
            minimum_calls: 2,
            ..config()
        });
        let classify = |r: &Result<u16, u16>| match r {
            Ok(_) => Success,
            Err(code) if *code >= 500 => Failure,
            Err(_) => Ignored,
        };
        assert_eq!(
            h.breaker
                .call(classify, || async { Err(404) })
                .await
                .unwrap(),
            Err(404)
        );
        assert_eq!(
            h.breaker
                .call(classify, || async { Ok(200) })
                .await
                .unwrap(),
            Ok(200)
        );
        let _ = h
            .breaker
            .call(classify, || async { Err(503) })
            .await
            .unwrap();
        assert_eq!(
            h.breaker.state(),
            Open,
            "one 503 of two counted calls is 50%"
        );
        let rejected = h
            .breaker
            .call(classify, || async { Ok(200) })
            .await
            .unwrap_err();
        assert_eq!(rejected.state, Open);
    }
}
