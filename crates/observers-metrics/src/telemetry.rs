//! Core telemetry into metrics. The match over `TelemetryEvent` is exhaustive on purpose (no
//! catch-all arm): a variant added to core is a compile error here until it is mapped to a
//! family, so no event goes unmetered silently.

use std::time::Duration;

use observers_core::telemetry::{ActionOutcome, BreakerState, Telemetry, TelemetryEvent};

use crate::families::{ActionHandles, EntityHandles, ObserverMetrics, l1, l2};

/// Index of an outcome in `ActionHandles::outcomes`.
fn outcome_index(o: ActionOutcome) -> usize {
    match o {
        ActionOutcome::Success => 0,
        ActionOutcome::DeadLettered => 1,
        ActionOutcome::ShortCircuited => 2,
        ActionOutcome::Queued => 3,
        ActionOutcome::Skipped => 4,
    }
}

/// The value of `observer_circuit_breaker_state`.
pub fn breaker_state_value(s: BreakerState) -> i64 {
    match s {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

impl Telemetry for ObserverMetrics {
    /// The two events of every event's hot path are handled here, in a small function; every
    /// other one in `emit_cold`, out of line, so its big frame is not paid per event.
    #[inline]
    fn emit(&self, event: &TelemetryEvent<'_>) {
        match event {
            TelemetryEvent::EventProcessed {
                entity_type,
                matched,
                failed,
                duration,
            } => self.event_processed(entity_type, *matched, *failed, *duration),
            TelemetryEvent::ActionFinished {
                observer,
                action_type,
                outcome,
                attempts,
                duration,
            } => self.action_finished(observer, action_type, *outcome, *attempts, *duration),
            other => self.emit_cold(other),
        }
    }
}

impl ObserverMetrics {
    fn event_processed(
        &self,
        entity_type: &str,
        matched: usize,
        failed: usize,
        duration: Duration,
    ) {
        self.entity(entity_type, |h, shard| {
            h.processed.inc_by_at(shard, 1);
            if failed > 0 {
                event_failed(h);
            }
            self.event_duration
                .observe_at(shard, duration.as_secs_f64());
            if matched == 0 {
                self.observers_matched_zero.inc_by_at(shard, 1);
            } else {
                self.observers_matched.inc_by_at(shard, matched as u64);
            }
        });
    }

    fn action_finished(
        &self,
        observer: &str,
        action_type: &str,
        outcome: ActionOutcome,
        attempts: u32,
        duration: Duration,
    ) {
        self.action(observer, action_type, |h, shard| {
            h.outcomes[outcome_index(outcome)].inc_by_at(shard, 1);
            h.duration.observe_at(shard, duration.as_secs_f64());
            if outcome != ActionOutcome::Success || attempts > 1 {
                action_failed_or_retried(h, outcome, attempts);
            }
        });
    }

    #[inline(never)]
    #[allow(clippy::too_many_lines)] // one arm per variant, kept in one place on purpose
    fn emit_cold(&self, event: &TelemetryEvent<'_>) {
        match event {
            // Handled by `emit` itself; listed so the match stays exhaustive.
            TelemetryEvent::EventProcessed { .. } | TelemetryEvent::ActionFinished { .. } => {
                self.emit(event);
            }
            TelemetryEvent::EventDeduplicated { entity_type } => {
                self.entity(entity_type, |h, _| {
                    h.deduplicated.inc();
                });
            }
            TelemetryEvent::ConditionFailed { observer, error: _ } => {
                self.condition_errors
                    .get_or_create(&l1("observer", observer))
                    .inc();
            }
            TelemetryEvent::ActionRetried {
                observer,
                action_type,
                attempt: _,
                delay,
            } => {
                self.retry_delay.observe(delay.as_secs_f64());
                self.action(observer, action_type, |h, _| {
                    h.retries.inc();
                });
            }
            TelemetryEvent::DeadLettered {
                observer,
                action_type,
            } => self.action(observer, action_type, |h, _| {
                h.dead_lettered.inc();
            }),
            TelemetryEvent::BreakerTransition {
                endpoint,
                from: _,
                to,
            } => {
                self.breaker_state
                    .get_or_create(&l1("endpoint", endpoint))
                    .set(breaker_state_value(*to));
                self.breaker_transitions
                    .get_or_create(&l2("endpoint", endpoint, "to", to.as_str()))
                    .inc();
            }
            TelemetryEvent::BreakerRejected { endpoint } => {
                self.rejection_handles.with(
                    endpoint,
                    |k| {
                        self.breaker_rejections
                            .get_or_create_owned(&l1("endpoint", k))
                    },
                    prometheus_client::metrics::counter::Counter::inc,
                );
            }
            TelemetryEvent::BatchProcessed {
                listener,
                size,
                duration,
            } => self.listener(listener, |h| {
                h.batches.inc();
                h.events.inc_by(*size as u64);
                h.batch_duration.observe(duration.as_secs_f64());
                h.consecutive_errors.set(0);
                h.backoff.set(0.0);
            }),
            TelemetryEvent::CheckpointSaved { listener, duration } => {
                self.listener(listener, |h| {
                    h.checkpoint_saves.inc();
                    h.checkpoint_duration.observe(duration.as_secs_f64());
                });
            }
            TelemetryEvent::CheckpointSaveFailed { listener, error: _ } => {
                self.checkpoint_save_failed(listener);
            }
            TelemetryEvent::CheckpointFenced { listener } => self.fenced_write(listener),
            TelemetryEvent::ListenerFailed { .. } => self.listener_failed(),
            TelemetryEvent::ListenerError {
                listener,
                error: _,
                backoff,
            } => self.listener(listener, |h| {
                h.errors.inc();
                h.consecutive_errors.inc();
                h.backoff.set(backoff.as_secs_f64());
            }),
            TelemetryEvent::ListenerReconnected {
                listener,
                backoff: _,
            } => self.listener(listener, |h| {
                h.reconnects.inc();
                h.backoff.set(0.0);
            }),
            TelemetryEvent::PoisonEvent { listener, id: _ } => {
                self.listener(listener, |h| h.poison.inc());
                self.dlq_items_total
                    .get_or_create(&l2("observer", "", "action_type", "source"))
                    .inc();
            }
            TelemetryEvent::CutoffLag { listener, lag } => {
                self.listener(listener, |h| h.cutoff_lag.set(lag.as_secs_f64()));
            }
            TelemetryEvent::CommitToDispatch {
                entity_type: _,
                latency,
            } => self.commit_to_dispatch.observe(latency.as_secs_f64()),
            TelemetryEvent::SourceBacklog { listener, rows } => {
                self.listener(listener, |h| {
                    h.backlog.set(crate::families::saturating_i64(*rows));
                });
            }
            TelemetryEvent::FallbackActivated { backend, reason: _ } => {
                self.set_fallback_active(backend, true);
            }
            TelemetryEvent::FallbackServed { backend } => self.fallback_invoked(backend),
            TelemetryEvent::PrimaryFailed { backend } => self.primary_failed(backend),
            TelemetryEvent::ReplayBacklog { backend, pending } => {
                self.set_sync_queue(backend, *pending as u64);
            }
            TelemetryEvent::FallbackRecovered { backend, outage: _ } => {
                self.set_fallback_active(backend, false);
            }
            TelemetryEvent::HealthCheck {
                backend,
                healthy,
                latency,
            } => self.health_checked(backend, *latency, *healthy),
            TelemetryEvent::FallbackReplayed { backend, items } => {
                self.sync_operations(backend, "ok", *items as u64);
            }
            TelemetryEvent::CacheHit { action_type } => self.cache_hit(action_type),
            TelemetryEvent::CacheMiss { action_type } => self.cache_miss(action_type),
            TelemetryEvent::CacheEviction {
                action_type,
                entries,
            } => self.cache_evicted(action_type, *entries),
            TelemetryEvent::HaListenersActive { group: _, count } => {
                self.set_listeners_active(*count as u64);
            }
            TelemetryEvent::HaFailover { .. } => {
                self.failover();
                self.listener_failed();
            }
            TelemetryEvent::HaLeasesHeld { count, .. } => {
                self.set_leases_held(*count as u64);
                self.set_partitions_owned(*count as u64);
            }
            TelemetryEvent::HaLeaderElected { .. } => self.set_leader(true),
            TelemetryEvent::HaLeadershipLost { .. } => self.set_leader(false),
            TelemetryEvent::HaCheckpointLag {
                listener,
                rows,
                lag,
            } => {
                self.set_checkpoint_lag(listener, *lag);
                self.listener(listener, |h| {
                    h.backlog.set(crate::families::saturating_i64(*rows));
                });
            }
            TelemetryEvent::HaLeaseRenewed { outcome, .. } => self.lease_renewal(outcome),
            TelemetryEvent::HaLeaseEnded { held, .. } => self.lease_released(*held),
            // A health verdict shows as observer_fallback_active and the consecutive-failure
            // gauge that HealthCheck keeps; a step-down is counted by the renewal (`lost`) or
            // the fenced write that caused it.
            TelemetryEvent::HealthStateChanged { .. } | TelemetryEvent::HaSteppedDown { .. } => {}
            TelemetryEvent::JobEnqueued { queue } => self.job_enqueued(queue),
            TelemetryEvent::SearchIndexed {
                backend,
                ok,
                events,
                duration,
            } => self.search_indexed(backend, *ok, *events as u64, *duration),
            TelemetryEvent::SearchQueried { backend, duration } => {
                self.search_query(backend, *duration);
            }
            TelemetryEvent::JobFinished {
                queue,
                outcome,
                duration,
            } => {
                let outcome = match *outcome {
                    "completed" => crate::JobOutcome::Completed,
                    "retried" => crate::JobOutcome::Retried,
                    _ => crate::JobOutcome::Failed,
                };
                self.job_finished(queue, outcome, *duration);
            }
        }
    }
}

/// Out of line: most events have no failed action.
#[cold]
#[inline(never)]
fn event_failed(h: &EntityHandles) {
    h.failed.inc();
}

/// The rarer counts of a finished action (failures, retries), out of line so the hot code of
/// `ActionFinished` stays small.
#[cold]
#[inline(never)]
fn action_failed_or_retried(h: &ActionHandles, outcome: ActionOutcome, attempts: u32) {
    let failed = matches!(
        outcome,
        ActionOutcome::DeadLettered | ActionOutcome::ShortCircuited
    );
    if failed {
        h.failed.inc();
    }
    if attempts > 1 {
        if outcome == ActionOutcome::Success {
            h.retries_successful.inc();
        } else if failed {
            h.retries_exhausted.inc();
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::too_many_lines)] // exact small counters; one table of cases
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scrape::Scrape;

    fn scrape(m: &ObserverMetrics) -> Scrape {
        Scrape::parse(&m.encode()).unwrap()
    }

    #[test]
    fn events_map_to_their_families() {
        let m = ObserverMetrics::new();
        let ms = Duration::from_millis(3);
        let events = [
            TelemetryEvent::EventProcessed {
                entity_type: "Order",
                matched: 2,
                failed: 1,
                duration: ms,
            },
            TelemetryEvent::EventProcessed {
                entity_type: "Order",
                matched: 0,
                failed: 0,
                duration: ms,
            },
            TelemetryEvent::EventDeduplicated {
                entity_type: "Order",
            },
            TelemetryEvent::ActionRetried {
                observer: "o",
                action_type: "webhook",
                attempt: 1,
                delay: ms,
            },
            TelemetryEvent::ActionFinished {
                observer: "o",
                action_type: "webhook",
                outcome: ActionOutcome::DeadLettered,
                attempts: 2,
                duration: ms,
            },
            TelemetryEvent::ActionFinished {
                observer: "o",
                action_type: "webhook",
                outcome: ActionOutcome::Success,
                attempts: 1,
                duration: ms,
            },
            TelemetryEvent::DeadLettered {
                observer: "o",
                action_type: "webhook",
            },
            TelemetryEvent::BreakerTransition {
                endpoint: "h:80",
                from: BreakerState::Closed,
                to: BreakerState::Open,
            },
            TelemetryEvent::BreakerRejected { endpoint: "h:80" },
            TelemetryEvent::ListenerError {
                listener: "l",
                error: "x",
                backoff: Duration::from_millis(400),
            },
            TelemetryEvent::ListenerError {
                listener: "l",
                error: "x",
                backoff: Duration::from_millis(400),
            },
            TelemetryEvent::ListenerReconnected {
                listener: "l",
                backoff: Duration::from_millis(400),
            },
            TelemetryEvent::CheckpointSaved {
                listener: "l",
                duration: ms,
            },
            TelemetryEvent::PoisonEvent {
                listener: "l",
                id: 9,
            },
            TelemetryEvent::CutoffLag {
                listener: "l",
                lag: Duration::from_secs(12),
            },
            TelemetryEvent::SourceBacklog {
                listener: "l",
                rows: 40,
            },
            TelemetryEvent::CommitToDispatch {
                entity_type: "Order",
                latency: ms,
            },
        ];
        for e in &events {
            m.emit(e);
        }
        let s = scrape(&m);
        assert_eq!(
            s.sum(
                "observer_events_processed_total",
                &[("entity_type", "Order")]
            ),
            2.0
        );
        assert_eq!(
            s.sum("observer_events_failed_total", &[("entity_type", "Order")]),
            1.0
        );
        assert_eq!(s.sum("observer_events_deduplicated_total", &[]), 1.0);
        assert_eq!(s.sum("observer_observers_matched_total", &[]), 2.0);
        assert_eq!(s.sum("observer_observers_matched_zero_total", &[]), 1.0);
        let o = [("observer", "o"), ("action_type", "webhook")];
        assert_eq!(s.sum("observer_retries_total", &o), 1.0);
        assert_eq!(s.sum("observer_retries_exhausted_total", &o), 1.0);
        assert_eq!(s.sum("observer_retries_successful_total", &o), 0.0);
        assert_eq!(s.sum("observer_actions_failed_total", &o), 1.0);
        assert_eq!(
            s.sum("observer_actions_executed_total", &[("outcome", "success")]),
            1.0
        );
        assert_eq!(
            s.sum("observer_actions_executed_total", &[("outcome", "queued")]),
            0.0
        );
        assert_eq!(s.sum("observer_dlq_items_total", &o), 1.0);
        assert_eq!(
            s.sum("observer_dlq_items_total", &[("action_type", "source")]),
            1.0
        );
        assert_eq!(
            s.sum("observer_circuit_breaker_state", &[("endpoint", "h:80")]),
            1.0
        );
        assert_eq!(
            s.sum(
                "observer_circuit_breaker_transitions_total",
                &[("to", "open")]
            ),
            1.0
        );
        assert_eq!(s.sum("observer_circuit_breaker_rejections_total", &[]), 1.0);
        let l = [("listener", "l")];
        assert_eq!(s.sum("observer_listener_errors_total", &l), 2.0);
        assert_eq!(s.sum("observer_listener_consecutive_errors", &l), 2.0);
        // Two failed reads, then the source works again: the wait is over.
        assert_eq!(s.sum("observer_listener_backoff_seconds", &l), 0.0);
        assert_eq!(s.sum("observer_listener_reconnects_total", &l), 1.0);
        assert_eq!(s.sum("observer_checkpoint_saves_total", &l), 1.0);
        assert_eq!(s.sum("observer_poison_events_total", &l), 1.0);
        assert_eq!(s.sum("observer_cutoff_lag_seconds", &l), 12.0);
        assert_eq!(s.sum("observer_source_backlog", &l), 40.0);
        assert_eq!(s.sum("observer_commit_to_dispatch_seconds_count", &[]), 1.0);

        // While reads fail, the gauge shows the wait before the next attempt.
        m.emit(&TelemetryEvent::ListenerError {
            listener: "l",
            error: "x",
            backoff: Duration::from_millis(800),
        });
        assert_eq!(scrape(&m).sum("observer_listener_backoff_seconds", &l), 0.8);
        // A processed batch clears the error streak and the backoff.
        m.emit(&TelemetryEvent::BatchProcessed {
            listener: "l",
            size: 5,
            duration: ms,
        });
        let s = scrape(&m);
        assert_eq!(s.sum("observer_listener_consecutive_errors", &l), 0.0);
        assert_eq!(s.sum("observer_listener_backoff_seconds", &l), 0.0);
        assert_eq!(s.sum("observer_listener_events_total", &l), 5.0);
    }

    #[test]
    fn per_thread_caches_never_mix_instances() {
        let (a, b) = (ObserverMetrics::new(), ObserverMetrics::new());
        let processed = TelemetryEvent::EventProcessed {
            entity_type: "Order",
            matched: 1,
            failed: 0,
            duration: Duration::ZERO,
        };
        let finished = TelemetryEvent::ActionFinished {
            observer: "o",
            action_type: "webhook",
            outcome: ActionOutcome::Success,
            attempts: 1,
            duration: Duration::ZERO,
        };
        for _ in 0..3 {
            a.emit(&processed);
            a.emit(&finished);
        }
        b.emit(&processed);
        b.emit(&finished);
        for (m, n) in [(&a, 3.0), (&b, 1.0)] {
            let s = scrape(m);
            assert_eq!(s.sum("observer_events_processed_total", &[]), n);
            assert_eq!(
                s.sum("observer_actions_executed_total", &[("outcome", "success")]),
                n
            );
        }
    }

    #[test]
    fn more_action_pairs_than_cached_slots_each_count_exactly() {
        let m = ObserverMetrics::new();
        let pairs: Vec<(String, &str)> = (0..6u32)
            .flat_map(|o| ["webhook", "email"].map(|t| (format!("o{o}"), t)))
            .collect();
        // Round-robin and repeated, so the per-thread cache both hits and misses.
        for round in 0..5u32 {
            for (i, (observer, action_type)) in (0u32..).zip(&pairs) {
                for _ in 0..=(i + round) % 3 {
                    m.emit(&TelemetryEvent::ActionFinished {
                        observer,
                        action_type,
                        outcome: ActionOutcome::Success,
                        attempts: 1,
                        duration: Duration::ZERO,
                    });
                }
            }
        }
        let s = scrape(&m);
        for (i, (observer, action_type)) in (0u32..).zip(&pairs) {
            let want: u32 = (0..5).map(|round| (i + round) % 3 + 1).sum();
            assert_eq!(
                s.sum(
                    "observer_actions_executed_total",
                    &[("observer", observer), ("action_type", action_type)]
                ),
                f64::from(want),
                "{observer}/{action_type}"
            );
        }
    }

    #[test]
    fn label_values_past_the_cap_fold_into_other() {
        let m = ObserverMetrics::new();
        for i in 0..crate::families::MAX_LABEL_VALUES + 5 {
            m.emit(&TelemetryEvent::EventProcessed {
                entity_type: &format!("E{i}"),
                matched: 1,
                failed: 0,
                duration: Duration::ZERO,
            });
        }
        let s = scrape(&m);
        let series = s.select("observer_events_processed_total", &[]).count();
        assert_eq!(series, crate::families::MAX_LABEL_VALUES + 1);
        assert_eq!(
            s.sum(
                "observer_events_processed_total",
                &[("entity_type", "other")]
            ),
            5.0
        );
    }

    #[test]
    fn helper_methods_for_other_areas_reach_their_families() {
        let m = ObserverMetrics::new();
        m.cache_hit("webhook");
        m.cache_miss("webhook");
        m.cache_evicted("webhook", 3);
        m.fallback_invoked("dedup");
        m.set_fallback_active("dedup", true);
        m.health_checked("redis", Duration::from_millis(2), false);
        m.health_checked("redis", Duration::from_millis(2), false);
        m.sync_operations("dedup", "ok", 4);
        m.job_enqueued("default");
        m.job_finished(
            "default",
            crate::JobOutcome::Completed,
            Duration::from_millis(5),
        );
        m.set_leader(true);
        m.set_leader(true);
        m.failover();
        m.search_indexed("postgres", true, 10, Duration::from_millis(1));
        let s = scrape(&m);
        assert_eq!(
            s.sum("observer_cache_hits_total", &[("action_type", "webhook")]),
            1.0
        );
        assert_eq!(s.sum("observer_cache_evictions_total", &[]), 3.0);
        assert_eq!(
            s.sum("observer_fallback_active", &[("store", "dedup")]),
            1.0
        );
        assert_eq!(
            s.sum("observer_health_check_consecutive_failures", &[]),
            2.0
        );
        assert_eq!(
            s.sum("observer_sync_operations_total", &[("outcome", "ok")]),
            4.0
        );
        assert_eq!(
            s.sum("observer_jobs_completed_total", &[("queue", "default")]),
            1.0
        );
        assert_eq!(s.sum("observer_leader", &[]), 1.0);
        assert_eq!(s.sum("observer_leader_elections_total", &[]), 1.0);
        assert_eq!(s.sum("observer_failovers_total", &[]), 1.0);
        assert_eq!(s.sum("observer_search_indexed_total", &[]), 10.0);
        let summary = crate::MetricsSummary::from_scrape(&s);
        assert_eq!(summary.cache_hit_ratio, Some(0.5));
        assert_eq!(summary.fallback_active, ["dedup"]);
    }

    #[test]
    fn component_events_reach_their_families() {
        let m = ObserverMetrics::new();
        let ms = Duration::from_millis(2);
        for e in [
            TelemetryEvent::CheckpointSaveFailed {
                listener: "l",
                error: "x",
            },
            TelemetryEvent::CheckpointFenced { listener: "l" },
            TelemetryEvent::ListenerFailed {
                listener: "l",
                error: "x",
            },
            TelemetryEvent::FallbackServed { backend: "redis" },
            TelemetryEvent::FallbackServed { backend: "redis" },
            TelemetryEvent::PrimaryFailed { backend: "redis" },
            TelemetryEvent::ReplayBacklog {
                backend: "redis",
                pending: 7,
            },
            TelemetryEvent::HaLeaseRenewed {
                group: "g",
                partition: 0,
                outcome: "ok",
            },
            TelemetryEvent::HaLeaseRenewed {
                group: "g",
                partition: 0,
                outcome: "error",
            },
            TelemetryEvent::HaLeaseEnded {
                group: "g",
                partition: 0,
                held: Duration::from_secs(12),
            },
            TelemetryEvent::JobEnqueued { queue: "default" },
            TelemetryEvent::SearchIndexed {
                backend: "postgres",
                ok: true,
                events: 3,
                duration: ms,
            },
            TelemetryEvent::SearchQueried {
                backend: "postgres",
                duration: ms,
            },
        ] {
            m.emit(&e);
        }
        let s = scrape(&m);
        let l = [("listener", "l")];
        assert_eq!(s.sum("observer_checkpoint_save_errors_total", &l), 1.0);
        assert_eq!(s.sum("observer_fenced_writes_total", &l), 1.0);
        assert_eq!(s.sum("observer_listeners_failed_total", &[]), 1.0);
        let redis = [("store", "redis")];
        assert_eq!(s.sum("observer_fallback_invocations_total", &redis), 2.0);
        assert_eq!(s.sum("observer_primary_failures_total", &redis), 1.0);
        assert_eq!(s.sum("observer_sync_queue_size", &redis), 7.0);
        for outcome in ["ok", "error"] {
            assert_eq!(
                s.sum("observer_lease_renewals_total", &[("outcome", outcome)]),
                1.0
            );
        }
        assert_eq!(
            s.sum("observer_lease_hold_duration_seconds_count", &[]),
            1.0
        );
        assert_eq!(s.sum("observer_lease_hold_duration_seconds_sum", &[]), 12.0);
        assert_eq!(
            s.sum("observer_jobs_enqueued_total", &[("queue", "default")]),
            1.0
        );
        let pg = [("backend", "postgres")];
        assert_eq!(s.sum("observer_search_indexed_total", &pg), 3.0);
        assert_eq!(s.sum("observer_search_queries_total", &pg), 1.0);
        assert_eq!(
            s.sum("observer_search_query_duration_seconds_count", &pg),
            1.0
        );
    }

    #[test]
    fn job_runs_count_by_queue_and_outcome() {
        let m = ObserverMetrics::new();
        for outcome in ["completed", "completed", "retried", "failed"] {
            m.emit(&TelemetryEvent::JobFinished {
                queue: "default",
                outcome,
                duration: Duration::from_millis(3),
            });
        }
        let s = scrape(&m);
        let q = [("queue", "default")];
        assert_eq!(s.sum("observer_jobs_completed_total", &q), 2.0);
        assert_eq!(s.sum("observer_jobs_retried_total", &q), 1.0);
        assert_eq!(s.sum("observer_jobs_failed_total", &q), 1.0);
    }

    #[test]
    fn leadership_is_counted_when_won_and_cleared_when_lost() {
        let m = ObserverMetrics::new();
        let elected = TelemetryEvent::HaLeaderElected {
            group: "g",
            leader: "a",
            epoch: 1,
        };
        m.emit(&elected);
        m.emit(&elected);
        assert_eq!(scrape(&m).sum("observer_leader", &[]), 1.0);
        m.emit(&TelemetryEvent::HaLeadershipLost {
            group: "g",
            instance: "a",
        });
        assert_eq!(scrape(&m).sum("observer_leader", &[]), 0.0);
        m.emit(&elected);
        let s = scrape(&m);
        assert_eq!(s.sum("observer_leader", &[]), 1.0);
        assert_eq!(s.sum("observer_leader_elections_total", &[]), 2.0);
    }
}
