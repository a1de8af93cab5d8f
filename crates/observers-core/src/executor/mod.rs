//! The executor: for one event, dedup claim, match, condition, then every matching action
//! concurrently, each with its timeout, circuit breaker, retries and dead-letter hand-off.

mod cached;
mod observers;
mod summary;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::Semaphore;

pub use cached::{CachedActionExecutor, escape_glob};
pub use observers::{ActionSlot, CompiledObserver, MatchDecision, ObserverSet};
pub use summary::{ActionReport, ExecutionSummary};

use crate::actions::{Invocation, idempotency_key_with};
use crate::breaker::{BreakerRegistry, CallOutcome};
use crate::config::ActionMode;
use crate::error::{ObserverError, Result};
use crate::event::EntityEvent;
use crate::retry::{GiveUpReason, RetryDecision};
use crate::stores::dedup::{ClaimOutcome, DedupStore};
use crate::stores::dlq::{DeadLetterQueue, DlqEntry, DlqItem, MemoryDeadLetterQueue};
use crate::stores::gone::{GoneEndpoint, GoneEndpoints, MemoryGoneEndpoints};
use crate::stores::jobs::{EnqueueOutcome, JobQueue, NewJob};
use crate::telemetry::{ActionOutcome, NoopTelemetry, SharedTelemetry, TelemetryEvent};
use crate::template::TemplateContext;

/// The job queue of `mode = "queued"` actions that name no `queue`.
pub const JOB_QUEUE: &str = crate::config::DEFAULT_QUEUE;

/// Deduplication settings of an executor.
#[derive(Clone)]
pub struct Dedup {
    pub store: Arc<dyn DedupStore>,
    /// How long a processed event stays remembered.
    pub window: Duration,
    /// Prefix of every key (the listener id), so consumers do not dedup each other.
    pub namespace: String,
}

/// How the dedup key of an event is made (the listener id is always prepended).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupKey {
    /// The change-log id: exactly the same change is processed once (re-deliveries).
    #[default]
    EventId,
    /// The seeds' `(entity_type, entity_id, kind, time bucket)`: at most one event per entity
    /// and kind per bucket of the event timestamp is processed; later ones in the bucket are
    /// dropped even when their data differ.
    TimeBucket(Duration),
}

impl DedupKey {
    pub fn key(&self, namespace: &str, event: &EntityEvent) -> String {
        match self {
            DedupKey::EventId => format!("{namespace}:{}", event.id),
            DedupKey::TimeBucket(bucket) => {
                let width = i64::try_from(bucket.as_millis()).unwrap_or(i64::MAX).max(1);
                let at = event.timestamp.timestamp_millis();
                format!(
                    "{namespace}:{}:{}:{}:{}",
                    event.entity_type,
                    event.entity_id,
                    event.kind.as_str(),
                    at.div_euclid(width) * width
                )
            }
        }
    }
}

/// Runs observers for events. Cheap to share (`Arc`); the observer set can be swapped while
/// events are in flight (in-flight work keeps the set it started with).
pub struct ObserverExecutor {
    set: RwLock<Arc<ObserverSet>>,
    dlq: Arc<dyn DeadLetterQueue>,
    dedup: Option<Dedup>,
    dedup_key: DedupKey,
    telemetry: SharedTelemetry,
    breakers: Arc<BreakerRegistry>,
    jobs: Option<Arc<dyn JobQueue>>,
    cache: Option<Arc<CachedActionExecutor>>,
    permits: Arc<Semaphore>,
    summaries: Option<Arc<dyn SummarySink>>,
    /// Identifies this process run in dedup claims.
    owner: String,
    /// Dedup keys this executor is processing right now. A claim the store reports as in
    /// progress under our own owner is a duplicate only while its key is here; otherwise it is
    /// a claim left by an earlier attempt of ours that could not record its outcome, and the
    /// event is processed again instead of being skipped.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Where targets that answered `410 Gone` are kept, and the ones this executor knows of
    /// (checked with the store before an event is refused, so a re-enable takes effect).
    gone: Arc<dyn GoneEndpoints>,
    gone_known: Mutex<HashSet<String>>,
    gone_count: AtomicUsize,
    /// Appended to every idempotency key (see [`ExecutorBuilder::key_suffix`]).
    key_suffix: Option<String>,
}

/// A key in [`ObserverExecutor::in_flight`], removed when the event's processing ends, however
/// it ends (returned, failed, cancelled or panicked).
struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Registers `key`; `None` when it is already being processed by this executor.
    fn enter(keys: &Arc<Mutex<HashSet<String>>>, key: &str) -> Option<Self> {
        let fresh = crate::stores::lock(keys).insert(key.to_owned());
        fresh.then(|| Self {
            keys: keys.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        crate::stores::lock(&self.keys).remove(&self.key);
    }
}

/// Receives every processed event with its outcome (search indexing, audit trails). Called on
/// the executor's hot path once per processed event (not for duplicates): it must return at
/// once (hand the work to a channel or a task) and never block.
pub trait SummarySink: Send + Sync {
    fn accept(&self, event: &EntityEvent, summary: &ExecutionSummary);
}

/// Builder for [`ObserverExecutor`].
pub struct ExecutorBuilder {
    set: ObserverSet,
    dlq: Option<Arc<dyn DeadLetterQueue>>,
    dedup: Option<Dedup>,
    dedup_key: DedupKey,
    telemetry: Option<SharedTelemetry>,
    breakers: Option<Arc<BreakerRegistry>>,
    jobs: Option<Arc<dyn JobQueue>>,
    cache: Option<Arc<CachedActionExecutor>>,
    max_concurrent_actions: usize,
    summaries: Option<Arc<dyn SummarySink>>,
    gone: Option<Arc<dyn GoneEndpoints>>,
    key_suffix: Option<String>,
}

impl ExecutorBuilder {
    /// Where endpoints that answered `410 Gone` are recorded (default: in memory).
    #[must_use]
    pub fn gone_endpoints(mut self, store: Arc<dyn GoneEndpoints>) -> Self {
        self.gone = Some(store);
        self
    }

    /// Hands every processed event and its summary to `sink` (e.g. the search indexer).
    #[must_use]
    pub fn summaries(mut self, sink: Arc<dyn SummarySink>) -> Self {
        self.summaries = Some(sink);
        self
    }

    #[must_use]
    pub fn dlq(mut self, dlq: Arc<dyn DeadLetterQueue>) -> Self {
        self.dlq = Some(dlq);
        self
    }

    #[must_use]
    pub fn dedup(mut self, dedup: Dedup) -> Self {
        self.dedup = Some(dedup);
        self
    }

    /// How dedup keys are made (default: the event id).
    #[must_use]
    pub fn dedup_key(mut self, key: DedupKey) -> Self {
        self.dedup_key = key;
        self
    }

    #[must_use]
    pub fn telemetry(mut self, telemetry: SharedTelemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    #[must_use]
    pub fn breakers(mut self, breakers: Arc<BreakerRegistry>) -> Self {
        self.breakers = Some(breakers);
        self
    }

    #[must_use]
    pub fn jobs(mut self, jobs: Arc<dyn JobQueue>) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// Caches successful inline action results (see [`CachedActionExecutor`]).
    #[must_use]
    pub fn action_cache(mut self, cache: Arc<CachedActionExecutor>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Appends `":{suffix}"` to every idempotency key, queued jobs included (`observers replay`
    /// gives `replay-{replay_id}`, so receivers that dedupe on the key take a replay as new).
    #[must_use]
    pub fn key_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.key_suffix = Some(suffix.into());
        self
    }

    #[must_use]
    pub fn max_concurrent_actions(mut self, n: usize) -> Self {
        self.max_concurrent_actions = n.max(1);
        self
    }

    pub fn build(self) -> ObserverExecutor {
        let telemetry = self.telemetry.unwrap_or_else(|| Arc::new(NoopTelemetry));
        let breakers = self.breakers.unwrap_or_else(|| {
            Arc::new(BreakerRegistry::new(
                crate::breaker::BreakerConfig::default(),
                crate::clock::system_clock(),
                telemetry.clone(),
            ))
        });
        ObserverExecutor {
            set: RwLock::new(Arc::new(self.set)),
            dlq: self
                .dlq
                .unwrap_or_else(|| Arc::new(MemoryDeadLetterQueue::default())),
            dedup: self.dedup,
            dedup_key: self.dedup_key,
            telemetry,
            breakers,
            jobs: self.jobs,
            cache: self.cache,
            permits: Arc::new(Semaphore::new(self.max_concurrent_actions)),
            summaries: self.summaries,
            owner: format!(
                "{}-{}-{}",
                std::process::id(),
                chrono::Utc::now().timestamp_micros(),
                rand::random::<u32>()
            ),
            in_flight: Arc::default(),
            gone: self
                .gone
                .unwrap_or_else(|| Arc::new(MemoryGoneEndpoints::default())),
            gone_known: Mutex::default(),
            gone_count: AtomicUsize::new(0),
            key_suffix: self.key_suffix,
        }
    }
}

/// Result of one action run with retries, before the DLQ hand-off.
struct Attempted {
    report: ActionReport,
    error: Option<ObserverError>,
}

impl ObserverExecutor {
    pub fn builder(set: ObserverSet) -> ExecutorBuilder {
        ExecutorBuilder {
            set,
            dlq: None,
            dedup: None,
            dedup_key: DedupKey::EventId,
            telemetry: None,
            breakers: None,
            jobs: None,
            cache: None,
            max_concurrent_actions: 128,
            summaries: None,
            gone: None,
            key_suffix: None,
        }
    }

    /// The current observer set.
    pub fn observers(&self) -> Arc<ObserverSet> {
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Swaps in a new observer set; events already running finish with the old one.
    pub fn reload(&self, set: ObserverSet) {
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
    }

    pub fn breakers(&self) -> &Arc<BreakerRegistry> {
        &self.breakers
    }

    /// Targets disabled by `410 Gone`.
    pub fn gone_endpoints(&self) -> &Arc<dyn GoneEndpoints> {
        &self.gone
    }

    /// Learns the disabled targets from the store (at start: other processes may have met
    /// some); later ones are learnt as they answer 410.
    pub async fn load_gone_endpoints(&self) -> Result<usize> {
        let all = self.gone.list().await?;
        let mut known = crate::stores::lock(&self.gone_known);
        known.extend(all.into_iter().map(|g| g.target));
        self.gone_count.store(known.len(), Ordering::Relaxed);
        Ok(known.len())
    }

    pub fn dlq(&self) -> &Arc<dyn DeadLetterQueue> {
        &self.dlq
    }

    pub fn telemetry(&self) -> &SharedTelemetry {
        &self.telemetry
    }

    /// Processes one event. Action failures never fail the call: after their retries they are
    /// dead-lettered and reported in the summary. An `Err` means the outcome could not be
    /// recorded (the DLQ write failed): the caller must not treat the event as processed.
    pub async fn process(&self, event: &EntityEvent) -> Result<ExecutionSummary> {
        let started = Instant::now();
        let dedup_key = self
            .dedup
            .as_ref()
            .map(|d| self.dedup_key.key(&d.namespace, event));
        let mut _in_flight = None;
        if let (Some(d), Some(key)) = (&self.dedup, &dedup_key) {
            let Some(guard) = InFlight::enter(&self.in_flight, key) else {
                return Ok(self.deduplicated(event, started));
            };
            _in_flight = Some(guard);
            // Two-phase claim; a store outage must not lose events, so it fails open. An
            // in-progress claim of our own owner cannot be a concurrent run (the key was not in
            // flight here): it is left from an attempt whose outcome could not be recorded,
            // and is taken over.
            match d.store.claim(key, &self.owner, d.window).await {
                Ok(ClaimOutcome::Acquired | ClaimOutcome::InProgress) => {}
                Ok(ClaimOutcome::AlreadyDone) => return Ok(self.deduplicated(event, started)),
                Err(e) => {
                    tracing::warn!(error = %e, event_id = event.id, "dedup claim failed; processing anyway");
                }
            }
        }
        let set = self.observers();
        let telemetry = &self.telemetry;
        let matched = set.matching(event, &mut |observer, error| {
            tracing::warn!(
                observer,
                event_id = event.id,
                error,
                "condition failed to evaluate; observer skipped"
            );
            telemetry.emit(&TelemetryEvent::ConditionFailed { observer, error });
        });

        let contexts: Vec<TemplateContext<'_>> = matched
            .iter()
            .map(|&i| TemplateContext::new(event, &set.observers[i].name))
            .collect();
        let mut runs = Vec::new();
        for (&i, ctx) in matched.iter().zip(&contexts) {
            let o = &set.observers[i];
            for (idx, slot) in o.actions.iter().enumerate() {
                runs.push(self.run_slot(&set, o, idx, slot, event, ctx));
            }
        }
        let attempted = join_all(runs).await;

        let mut reports = Vec::with_capacity(attempted.len());
        let mut failed = 0;
        for a in attempted {
            if let Some(err) = a.error {
                if let Err(e) = self.dead_letter(event, &a.report, &err).await {
                    // Not processed: forget the claim so a re-read (by this process or
                    // another) runs the event again instead of taking it for a duplicate.
                    if let (Some(d), Some(key)) = (&self.dedup, &dedup_key)
                        && let Err(release) = d.store.release(key).await
                    {
                        tracing::warn!(error = %release, event_id = event.id, "dedup release failed");
                    }
                    return Err(e);
                }
                failed += 1;
            }
            reports.push(a.report);
        }
        if let (Some(d), Some(key)) = (&self.dedup, &dedup_key)
            && let Err(e) = d.store.complete(key, d.window).await
        {
            tracing::warn!(error = %e, event_id = event.id, "dedup completion failed");
        }
        let summary = ExecutionSummary {
            event_id: event.id,
            entity_type: event.entity_type.clone(),
            entity_id: event.entity_id.clone(),
            kind: event.kind,
            deduplicated: false,
            matched: matched
                .iter()
                .map(|&i| set.observers[i].name.clone())
                .collect(),
            actions: reports,
            duration: started.elapsed(),
        };
        self.telemetry.emit(&TelemetryEvent::EventProcessed {
            entity_type: &event.entity_type,
            matched: matched.len(),
            failed,
            duration: summary.duration,
        });
        if let Some(sink) = &self.summaries {
            sink.accept(event, &summary);
        }
        Ok(summary)
    }

    fn deduplicated(&self, event: &EntityEvent, started: Instant) -> ExecutionSummary {
        self.telemetry.emit(&TelemetryEvent::EventDeduplicated {
            entity_type: &event.entity_type,
        });
        ExecutionSummary::deduplicated(event, started.elapsed())
    }

    async fn dead_letter(
        &self,
        event: &EntityEvent,
        report: &ActionReport,
        err: &ObserverError,
    ) -> Result<()> {
        let entry = DlqEntry {
            event: event.clone(),
            observer: report.observer.clone(),
            action_index: report.action_index,
            action_type: report.action_type.to_owned(),
            error_code: err.code().to_owned(),
            error: err.to_string(),
            attempts: report.attempts,
        };
        self.dlq.push(entry).await?;
        self.telemetry.emit(&TelemetryEvent::DeadLettered {
            observer: &report.observer,
            action_type: report.action_type,
        });
        tracing::warn!(observer = %report.observer, action = report.action_type, event_id = event.id,
            attempts = report.attempts, error = %err, "action failed; dead-lettered");
        Ok(())
    }

    /// Runs one action of one observer again (for `dlq retry`), with retries but without a
    /// new DLQ item; the caller records the outcome on the existing item.
    pub async fn retry_action(
        &self,
        event: &EntityEvent,
        observer: &str,
        action_index: usize,
    ) -> Result<ActionReport> {
        let set = self.observers();
        let (o, slot) = find_action(
            &set,
            observer,
            action_index,
            ("OBS-DLQ-UNKNOWN-OBSERVER", "OBS-DLQ-UNKNOWN-ACTION"),
        )?;
        let ctx = TemplateContext::new(event, &o.name);
        let a = self
            .attempt_inline(&set, o, action_index, slot, event, &ctx)
            .await;
        match a.error {
            Some(e) => Err(e),
            None => Ok(a.report),
        }
    }

    /// Retries one dead-lettered action (`dlq retry`, the console) and records the outcome on
    /// its item: resolved on success, the new error otherwise. `Ok(Err(message))` means the
    /// action still fails; `Err` that the DLQ could not be written.
    pub async fn retry_dead_letter(
        &self,
        dlq: &dyn DeadLetterQueue,
        item: &DlqItem,
    ) -> Result<std::result::Result<(), String>> {
        let e = &item.entry;
        let outcome = if e.observer.is_empty() {
            Err("an undecodable change-log row: fix or delete it, then purge this item".to_owned())
        } else {
            self.retry_action(&e.event, &e.observer, e.action_index)
                .await
                .map(|_| ())
                .map_err(|err| err.to_string())
        };
        dlq.record_retry(
            item.id,
            outcome.is_ok(),
            outcome.as_ref().err().map(String::as_str),
        )
        .await?;
        Ok(outcome)
    }

    /// Runs one attempt of one action (a queued job's run): timeout and circuit breaker apply,
    /// inline retries do not (the job queue schedules the next attempt). A target disabled by
    /// `410 Gone` fails permanently (the job is dead-lettered). `attempt` is the job's attempt
    /// number (1-based); `key_suffix` the one the job was enqueued with (a replay's).
    pub async fn run_job(
        &self,
        event: &EntityEvent,
        observer: &str,
        action_index: usize,
        attempt: u32,
        key_suffix: Option<&str>,
    ) -> Result<ActionReport> {
        let set = self.observers();
        let (o, slot) = find_action(
            &set,
            observer,
            action_index,
            ("OBS-JOB-UNKNOWN-OBSERVER", "OBS-JOB-UNKNOWN-ACTION"),
        )?;
        let ctx = TemplateContext::new(event, &o.name);
        let key = idempotency_key_with(event.id, &o.name, action_index, key_suffix);
        let a = self
            .attempt(&set, o, action_index, slot, event, &ctx, key, Some(attempt))
            .await;
        match a.error {
            Some(e) => Err(e),
            None => Ok(a.report),
        }
    }

    async fn run_slot(
        &self,
        set: &ObserverSet,
        o: &CompiledObserver,
        index: usize,
        slot: &ActionSlot,
        event: &EntityEvent,
        ctx: &TemplateContext<'_>,
    ) -> Attempted {
        if slot.mode == ActionMode::Queued
            && let Some(jobs) = &self.jobs
        {
            return self
                .enqueue(jobs.as_ref(), set, o, index, slot, event)
                .await;
        }
        let action_type = slot.action.type_name();
        let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| CachedActionExecutor::caches(action_type))
        else {
            return self.attempt_inline(set, o, index, slot, event, ctx).await;
        };
        let started = Instant::now();
        let key = CachedActionExecutor::key(event, &o.name, index, action_type);
        if let Some(detail) = cache.lookup(&key, action_type).await {
            let report = ActionReport::new(&o.name, index, action_type).finish(
                ActionOutcome::Success,
                0,
                started.elapsed(),
                Some(format!("cached: {detail}")),
            );
            self.emit_finished(&report);
            return Attempted {
                report,
                error: None,
            };
        }
        let attempted = self.attempt_inline(set, o, index, slot, event, ctx).await;
        if attempted.error.is_none() && attempted.report.outcome == ActionOutcome::Success {
            let detail = attempted.report.detail.as_deref().unwrap_or_default();
            cache.store(&key, action_type, detail).await;
        }
        attempted
    }

    async fn enqueue(
        &self,
        jobs: &dyn JobQueue,
        set: &ObserverSet,
        o: &CompiledObserver,
        index: usize,
        slot: &ActionSlot,
        event: &EntityEvent,
    ) -> Attempted {
        let started = Instant::now();
        let key = self.idempotency_key(event, &o.name, index);
        let mut payload =
            serde_json::json!({ "observer": o.name, "action_index": index, "event": event });
        if let Some(suffix) = &self.key_suffix {
            payload["key_suffix"] = suffix.as_str().into();
        }
        let queue = slot.queue.as_str();
        let job = NewJob {
            queue: queue.into(),
            kind: slot.action.type_name().into(),
            payload,
            unique_key: Some(key),
            priority: slot.priority,
            run_at: None,
            max_attempts: set.job_max_attempts,
            // One entity's jobs of one action run one at a time, in change-log order (events of
            // an entity are enqueued in that order); other entities run in parallel.
            group_key: Some(format!(
                "{}:{index}:{}:{}",
                o.name, event.entity_type, event.entity_id
            )),
        };
        let report = ActionReport::new(&o.name, index, slot.action.type_name());
        let enqueued = jobs.enqueue(job).await;
        if let Ok(EnqueueOutcome::Enqueued(_)) = enqueued {
            self.telemetry.emit(&TelemetryEvent::JobEnqueued { queue });
        }
        let (report, error) = match enqueued {
            Ok(EnqueueOutcome::Enqueued(id) | EnqueueOutcome::Duplicate(id)) => (
                report.finish(
                    ActionOutcome::Queued,
                    1,
                    started.elapsed(),
                    Some(format!("job {id}")),
                ),
                None,
            ),
            Err(e) => (
                report.failed(ActionOutcome::DeadLettered, 1, started.elapsed(), &e),
                Some(e),
            ),
        };
        self.emit_finished(&report);
        Attempted { report, error }
    }

    async fn attempt_inline(
        &self,
        set: &ObserverSet,
        o: &CompiledObserver,
        index: usize,
        slot: &ActionSlot,
        event: &EntityEvent,
        ctx: &TemplateContext<'_>,
    ) -> Attempted {
        let key = self.idempotency_key(event, &o.name, index);
        self.attempt(set, o, index, slot, event, ctx, key, None)
            .await
    }

    /// The idempotency key of one action for one event, with this executor's suffix.
    fn idempotency_key(&self, event: &EntityEvent, observer: &str, index: usize) -> String {
        idempotency_key_with(event.id, observer, index, self.key_suffix.as_deref())
    }

    /// Runs an action with inline retries, or exactly once as attempt `single` (a job run).
    #[expect(
        clippy::too_many_arguments,
        clippy::too_many_lines,
        reason = "internal; one call site each way; the retry loop reads best in one piece"
    )]
    async fn attempt(
        &self,
        set: &ObserverSet,
        o: &CompiledObserver,
        index: usize,
        slot: &ActionSlot,
        event: &EntityEvent,
        ctx: &TemplateContext<'_>,
        key: String,
        single: Option<u32>,
    ) -> Attempted {
        let started = Instant::now();
        let action_type = slot.action.type_name();
        let timeout = slot.timeout.unwrap_or(set.action_timeout);
        let breaker = slot.action.endpoint().map(|e| self.breakers.get(e));
        let mut attempt = single.map_or(0, |a| a.saturating_sub(1));
        let gone_target = |attempt| {
            let inv = Invocation {
                event,
                observer: &o.name,
                action_index: index,
                idempotency_key: &key,
                template: ctx,
                attempt,
            };
            slot.action
                .gone_target(&inv)
                .unwrap_or_else(|| format!("{action_type}:{}#{index}", o.name))
        };
        if self.gone_count.load(Ordering::Relaxed) > 0
            && let Some(refused) = self
                .refuse_gone(&gone_target(attempt + 1), &o.name, index, action_type)
                .await
        {
            return refused;
        }
        let (outcome, error, detail) = loop {
            attempt += 1;
            // Take a concurrency slot first, so waiting for one never counts as a slow call
            // nor holds a half-open probe slot.
            let concurrency = self.permits.acquire().await;
            let permit = match &breaker {
                Some(b) => match b.try_acquire() {
                    Ok(p) => Some(p),
                    Err(rejected) => {
                        let err = ObserverError::CircuitOpen {
                            endpoint: rejected.endpoint.clone(),
                        };
                        break (ActionOutcome::ShortCircuited, Some(err), None);
                    }
                },
                None => None,
            };
            let inv = Invocation {
                event,
                observer: &o.name,
                action_index: index,
                idempotency_key: &key,
                template: ctx,
                attempt,
            };
            let limit = permit
                .as_ref()
                .and_then(crate::breaker::Permit::probe_timeout)
                .map_or(timeout, |p| p.min(timeout));
            let result = match tokio::time::timeout(limit, slot.action.execute(&inv)).await {
                Ok(r) => r,
                Err(_) => Err(ObserverError::Timeout {
                    what: format!("{action_type} action of `{}`", o.name),
                    after: limit,
                }),
            };
            drop(concurrency);
            if let (Some(b), Some(p)) = (&breaker, permit) {
                let call = match &result {
                    Ok(_) => CallOutcome::Success,
                    Err(e) if e.blames_endpoint() => CallOutcome::Failure,
                    Err(_) => CallOutcome::Ignored,
                };
                b.record(p, call);
            }
            let err = match result {
                Ok(r) => break (ActionOutcome::Success, None, Some(r.detail)),
                Err(e) => e,
            };
            if err.code() == "OBS-HTTP-410-GONE" {
                self.mark_gone(gone_target(attempt), &o.name, index, &err)
                    .await;
            }
            if single.is_some() {
                break (ActionOutcome::DeadLettered, Some(err), None);
            }
            match set
                .retry
                .decide(attempt, err.is_transient(), err.retry_after())
            {
                RetryDecision::RetryAfter(delay) => {
                    self.telemetry.emit(&TelemetryEvent::ActionRetried {
                        observer: &o.name,
                        action_type,
                        attempt,
                        delay,
                    });
                    tracing::debug!(observer = %o.name, action = action_type, attempt, ?delay, error = %err, "retrying");
                    tokio::time::sleep(delay).await;
                }
                RetryDecision::GiveUp(GiveUpReason::RetryAfterTooLong(wait)) => {
                    let err = ObserverError::permanent(
                        err.code(),
                        format!(
                            "{err} (Retry-After {wait:?} exceeds the inline max_backoff; retry from the DLQ or use mode = \"queued\")"
                        ),
                    );
                    break (ActionOutcome::DeadLettered, Some(err), None);
                }
                RetryDecision::GiveUp(_) => break (ActionOutcome::DeadLettered, Some(err), None),
            }
        };
        let report = ActionReport::new(&o.name, index, action_type);
        let report = match &error {
            Some(e) => report.failed(outcome, attempt, started.elapsed(), e),
            None => report.finish(outcome, attempt, started.elapsed(), detail),
        };
        self.emit_finished(&report);
        Attempted { report, error }
    }

    /// The dead-lettered outcome of an attempt at a target disabled by `410 Gone`, or `None`
    /// when `target` is not disabled.
    async fn refuse_gone(
        &self,
        target: &str,
        observer: &str,
        index: usize,
        action_type: &'static str,
    ) -> Option<Attempted> {
        if !self.is_gone(target).await {
            return None;
        }
        let err = ObserverError::permanent(
            "OBS-HTTP-410-GONE",
            format!(
                "`{target}` answered 410 Gone before and is disabled; re-enable it with `observers actions enable --url {target}`"
            ),
        );
        let report = ActionReport::new(observer, index, action_type).failed(
            ActionOutcome::DeadLettered,
            0,
            Duration::ZERO,
            &err,
        );
        self.emit_finished(&report);
        Some(Attempted {
            report,
            error: Some(err),
        })
    }

    /// Whether `target` is disabled: only targets known here are checked with the store (a
    /// re-enable elsewhere is seen at the next event for it); a store error keeps it disabled
    /// (its events go to the DLQ, nothing is lost).
    async fn is_gone(&self, target: &str) -> bool {
        if !crate::stores::lock(&self.gone_known).contains(target) {
            return false;
        }
        match self.gone.is_disabled(target).await {
            Ok(true) => true,
            Ok(false) => {
                let mut known = crate::stores::lock(&self.gone_known);
                known.remove(target);
                self.gone_count.store(known.len(), Ordering::Relaxed);
                tracing::info!(target, "endpoint re-enabled; delivering to it again");
                false
            }
            Err(e) => {
                tracing::warn!(target, error = %e, "could not check a disabled endpoint; keeping it disabled");
                true
            }
        }
    }

    async fn mark_gone(&self, target: String, observer: &str, index: usize, err: &ObserverError) {
        tracing::warn!(observer, action = index, target = %target, "endpoint answered 410 Gone; disabled until `observers actions enable --url` re-enables it");
        let record = GoneEndpoint {
            target: target.clone(),
            observer: observer.to_owned(),
            action_index: index,
            reason: crate::text::storable_owned(err.to_string()),
            disabled_at: chrono::Utc::now(),
        };
        if let Err(e) = self.gone.disable(&record).await {
            tracing::warn!(target = %target, error = %e, "could not record the disabled endpoint; disabled in this process only");
        }
        let mut known = crate::stores::lock(&self.gone_known);
        known.insert(target);
        self.gone_count.store(known.len(), Ordering::Relaxed);
    }

    fn emit_finished(&self, r: &ActionReport) {
        self.telemetry.emit(&TelemetryEvent::ActionFinished {
            observer: &r.observer,
            action_type: r.action_type,
            outcome: r.outcome,
            attempts: r.attempts,
            duration: r.duration,
        });
    }
}

/// An observer of `set` and one of its actions, by name and index; `codes` are the error codes
/// for an unknown observer and an unknown action.
fn find_action<'s>(
    set: &'s ObserverSet,
    observer: &str,
    action_index: usize,
    codes: (&'static str, &'static str),
) -> Result<(&'s CompiledObserver, &'s ActionSlot)> {
    let o = set.find(observer).ok_or_else(|| {
        ObserverError::permanent(
            codes.0,
            format!("observer `{observer}` is not in the current config"),
        )
    })?;
    let slot = o.actions.get(action_index).ok_or_else(|| {
        ObserverError::permanent(
            codes.1,
            format!("observer `{observer}` has no action #{action_index} in the current config"),
        )
    })?;
    Ok((o, slot))
}

#[cfg(test)]
mod tests;
