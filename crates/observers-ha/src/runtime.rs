//! `HaRuntime`: what `observers run` does with `[ha] enabled = true`. Every renew interval it
//! heartbeats, renews the partition leases it holds (a refused renewal stops that partition's
//! listener at once), takes part in leader election (the leader records failovers), computes
//! the group's balanced plan and acquires or hands back partitions to follow it, running one
//! listener per held partition with fenced checkpoint saves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use observers_core::executor::ObserverExecutor;
use observers_core::listener::{Listener, ListenerConfig, ListenerStats};
use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::stores::lease::{Lease, LeaseStore};
use observers_core::telemetry::TelemetryEvent;
use observers_core::{ObserverError, Result};
use observers_postgres::{PgEventSource, PgPool, PostgresCheckpointStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::assignment::assign;
use crate::config::MultiListenerConfig;
use crate::coordinator::MultiListenerCoordinator;
use crate::failover::FailoverManager;
use crate::partition::{FencedCheckpoints, LeaseClock, PartitionSource, WakeFanout};
use crate::state::{ListenerState, ListenerStateMachine};
use crate::status::partition_lag;

/// A partition this instance holds (or is handing back).
struct Held {
    lease: Lease,
    clock: Arc<LeaseClock>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<ListenerStats>>,
    /// Handing back (rebalance or shutdown): keep renewing until the listener has saved.
    releasing: bool,
    /// When the lease was acquired (`observer_lease_hold_duration_seconds`).
    acquired: Instant,
}

/// What a run did, for the exit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HaRunSummary {
    pub events: u64,
    pub acquisitions: u64,
    pub step_downs: u64,
}

/// One instance of an HA group.
pub struct HaRuntime {
    config: MultiListenerConfig,
    coordinator: Arc<MultiListenerCoordinator>,
    failover: FailoverManager,
    checkpoints: Arc<PostgresCheckpointStore>,
    executor: Arc<ObserverExecutor>,
    listener: ListenerConfig,
    source: Arc<PgEventSource>,
    state: Arc<ListenerStateMachine>,
}

impl HaRuntime {
    /// `listener` is the single-listener configuration; its id is replaced by each partition's
    /// cursor name.
    pub fn new(
        pool: PgPool,
        config: MultiListenerConfig,
        executor: Arc<ObserverExecutor>,
        listener: ListenerConfig,
    ) -> Self {
        let coordinator = Arc::new(MultiListenerCoordinator::new(pool.clone(), config.clone()));
        let checkpoints = Arc::new(
            PostgresCheckpointStore::new(pool.clone()).with_instance(config.listener_id.clone()),
        );
        let failover = FailoverManager::new(
            coordinator.clone(),
            checkpoints.clone() as Arc<dyn CheckpointStore>,
        );
        let state = Arc::new(ListenerStateMachine::new(
            config.listener_id.clone(),
            config.max_recovery_attempts,
        ));
        Self {
            source: Arc::new(
                PgEventSource::new(pool)
                    .with_max_batch_bytes(listener.max_batch_bytes)
                    .with_poll_interval(listener.poll_interval),
            ),
            config,
            coordinator,
            failover,
            checkpoints,
            executor,
            listener,
            state,
        }
    }

    pub fn coordinator(&self) -> &Arc<MultiListenerCoordinator> {
        &self.coordinator
    }

    pub fn state(&self) -> &Arc<ListenerStateMachine> {
        &self.state
    }

    fn emit(&self, event: &TelemetryEvent<'_>) {
        self.executor.telemetry().emit(event);
    }

    fn transition(&self, next: ListenerState) {
        if let Err(e) = self.state.transition(next) {
            tracing::debug!(error = %e, "state transition skipped");
        }
    }

    /// Runs until `shutdown` turns true, then stops the partition listeners (in-flight events
    /// finish, checkpoints are saved under the lease), releases every lease and deregisters.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<HaRunSummary> {
        let me = self.config.listener_id.clone();
        let fanout = WakeFanout::start(self.source.clone());
        self.register(&mut shutdown).await?;
        self.adopt_layout(&mut shutdown).await?;
        self.transition(ListenerState::Connecting);
        tracing::info!(
            group = %self.config.group,
            instance = %me,
            partitions = self.config.partitions,
            lease_ttl = ?self.config.lease_duration,
            "joined the HA group"
        );
        let mut held: BTreeMap<u32, Held> = BTreeMap::new();
        let mut summary = HaRunSummary::default();
        let mut leader_epoch: Option<i64> = None;
        while !*shutdown.borrow() {
            let started = Instant::now();
            self.renew(&mut held, &mut summary).await;
            self.reap(&mut held, &mut summary).await;
            leader_epoch = self.lead(&me, leader_epoch).await;
            let parts: Vec<u32> = held.keys().copied().collect();
            let state = if held.values().any(|h| !h.releasing) {
                ListenerState::Running
            } else {
                ListenerState::Connecting
            };
            if self.state.state() == ListenerState::Recovering || state != self.state.state() {
                self.transition(state);
            }
            if let Err(e) = self
                .coordinator
                .heartbeat(&me, self.state.state(), &parts, leader_epoch.is_some())
                .await
            {
                tracing::warn!(error = %e, "heartbeat failed");
            }
            if let Err(e) = self.rebalance(&me, &mut held, &fanout, &mut summary).await {
                tracing::warn!(error = %e, "rebalancing failed; retrying next round");
            }
            let count = held.values().filter(|h| !h.releasing).count();
            self.emit(&TelemetryEvent::HaLeasesHeld {
                group: &self.config.group,
                instance: &me,
                count,
            });
            let wait = self
                .config
                .health_check_interval
                .saturating_sub(started.elapsed());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        self.shut_down(&me, held, &mut summary).await;
        Ok(summary)
    }

    async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .coordinator
                .register_listener(&self.config.listener_id)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if *shutdown.borrow() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "registering with the HA group failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Before any partition is processed, the consumer's checkpoints are made to match this
    /// layout ([`PostgresCheckpointStore::adopt_partitions`]): after a change of
    /// `[source] partitions` every partition starts from the lowest old cursor (duplicates,
    /// never a skip), and every partition has a checkpoint, so that `changelog prune` (which
    /// keeps everything after the slowest checkpoint) never deletes rows a partition has not
    /// read. No partition starts until this has succeeded: retried until it does or shutdown.
    async fn adopt_layout(&self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let names: Vec<String> = (0..self.config.partitions)
            .map(|p| self.config.partition_cursor(p))
            .collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .checkpoints
                .adopt_partitions(&self.config.consumer, self.config.partitions, &names)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if *shutdown.borrow() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "adopting the partition layout failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Renews every held lease; a refused renewal stops that listener at once.
    async fn renew(&self, held: &mut BTreeMap<u32, Held>, summary: &mut HaRunSummary) {
        let ttl = self.config.lease_duration;
        for (p, h) in held.iter_mut() {
            if h.clock.is_revoked() || h.task.is_finished() {
                continue;
            }
            let sent = Instant::now();
            let renewed = self.coordinator.leases().renew(&h.lease, ttl).await;
            self.emit(&TelemetryEvent::HaLeaseRenewed {
                group: &self.config.group,
                partition: *p,
                outcome: match &renewed {
                    Ok(Some(_)) => "ok",
                    Ok(None) => "lost",
                    Err(_) => "error",
                },
            });
            match renewed {
                Ok(Some(lease)) => h.clock.extend(sent, &lease),
                Ok(None) => {
                    h.clock.revoke();
                    let _ = h.stop.send(true);
                    summary.step_downs += 1;
                    self.transition(ListenerState::Recovering);
                    self.emit(&TelemetryEvent::HaSteppedDown {
                        group: &self.config.group,
                        partition: *p,
                    });
                    tracing::warn!(
                        partition = p,
                        epoch = h.lease.epoch,
                        "partition lease lost (expired or taken over); stopped its listener"
                    );
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "renewing the partition lease failed; it lapses if this persists");
                }
            }
        }
    }

    /// Collects finished partition listeners and hands their leases back.
    async fn reap(&self, held: &mut BTreeMap<u32, Held>, summary: &mut HaRunSummary) {
        let done: Vec<u32> = held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            let Some(h) = held.remove(&p) else { continue };
            match h.task.await {
                Ok(Ok(stats)) => {
                    summary.events += stats.events;
                    tracing::info!(partition = p, events = stats.events, cursor = %stats.cursor, "partition listener stopped");
                }
                Ok(Err(ObserverError::Fenced(m))) => {
                    summary.step_downs += 1;
                    self.transition(ListenerState::Recovering);
                    self.emit(&TelemetryEvent::HaSteppedDown {
                        group: &self.config.group,
                        partition: p,
                    });
                    tracing::warn!(partition = p, reason = %m, "checkpoint write fenced; stepped down from the partition");
                }
                Ok(Err(e)) => {
                    tracing::error!(partition = p, error = %e, "partition listener failed");
                    self.listener_failed(p, &e.to_string());
                }
                Err(e) => {
                    tracing::error!(partition = p, error = %e, "partition listener panicked");
                    self.listener_failed(p, &e.to_string());
                }
            }
            self.emit(&TelemetryEvent::HaLeaseEnded {
                group: &self.config.group,
                partition: p,
                held: h.acquired.elapsed(),
            });
            if let Err(e) = self.coordinator.leases().release(&h.lease).await {
                tracing::warn!(partition = p, error = %e, "releasing the partition lease failed; it lapses on its own");
            }
        }
    }

    fn listener_failed(&self, partition: u32, error: &str) {
        self.emit(&TelemetryEvent::ListenerFailed {
            listener: &self.config.partition_cursor(partition),
            error,
        });
    }

    /// Leader election and, on the leader, failure detection. Returns the leader epoch held.
    async fn lead(&self, me: &str, previous: Option<i64>) -> Option<i64> {
        let lease = match self.coordinator.elect_leader(me).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed");
                return None;
            }
        };
        let epoch = lease.map(|l| l.epoch);
        if epoch.is_none() && previous.is_some() {
            tracing::info!("no longer the group leader");
            self.emit(&TelemetryEvent::HaLeadershipLost {
                group: &self.config.group,
                instance: me,
            });
        }
        if let Some(epoch) = epoch
            && previous != Some(epoch)
        {
            tracing::info!(epoch, "elected group leader");
            self.emit(&TelemetryEvent::HaLeaderElected {
                group: &self.config.group,
                leader: me,
                epoch,
            });
        }
        if epoch.is_some() {
            match self.failover.check(me).await {
                Ok(events) => {
                    for e in events {
                        self.emit(&TelemetryEvent::HaFailover {
                            group: &self.config.group,
                            failed_instance: &e.failed_listener_id,
                            partitions: e.partitions.len(),
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "failure detection failed"),
            }
            match partition_lag(self.coordinator.pool(), &self.config).await {
                Ok(lags) => {
                    for l in lags {
                        self.emit(&TelemetryEvent::HaCheckpointLag {
                            listener: &l.cursor_name,
                            rows: l.rows,
                            lag: Duration::try_from_secs_f64(l.oldest_age_secs).unwrap_or_default(),
                        });
                    }
                }
                Err(e) => tracing::debug!(error = %e, "checkpoint lag query failed"),
            }
        }
        epoch
    }

    /// Follows the group plan: hands back partitions beyond this instance's share, takes free
    /// ones within it.
    async fn rebalance(
        &self,
        me: &str,
        held: &mut BTreeMap<u32, Held>,
        fanout: &Arc<WakeFanout>,
        summary: &mut HaRunSummary,
    ) -> Result<()> {
        let live = self
            .coordinator
            .live_instances(self.config.lease_duration)
            .await?;
        self.emit(&TelemetryEvent::HaListenersActive {
            group: &self.config.group,
            count: live.len(),
        });
        let prefix = self.config.partition_lease_prefix();
        let holders: BTreeMap<u32, String> = self
            .coordinator
            .leases()
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|l| {
                let p = l.name.strip_prefix(&prefix)?.parse::<u32>().ok()?;
                Some((p, l.holder))
            })
            .collect();
        let mut live = live;
        if !live.iter().any(|i| i == me) {
            live.push(me.to_owned());
        }
        let plan = assign(
            self.config.partitions,
            &live,
            &holders,
            self.config.max_listeners,
        );
        let mine: BTreeSet<u32> = plan.get(me).cloned().unwrap_or_default();
        for (p, h) in held.iter_mut() {
            if !mine.contains(p) && !h.releasing {
                tracing::info!(partition = p, "handing the partition to another instance");
                h.releasing = true;
                let _ = h.stop.send(true);
            }
        }
        for p in mine {
            if held.contains_key(&p) || holders.contains_key(&p) {
                continue;
            }
            let name = self.config.partition_lease(p);
            let sent = Instant::now();
            let Some(lease) = self
                .coordinator
                .leases()
                .acquire(&name, me, self.config.lease_duration)
                .await?
            else {
                continue;
            };
            summary.acquisitions += 1;
            tracing::info!(
                partition = p,
                epoch = lease.epoch,
                "partition lease acquired; resuming from its checkpoint"
            );
            held.insert(p, self.start_partition(p, sent, lease, fanout));
        }
        Ok(())
    }

    fn start_partition(
        &self,
        p: u32,
        sent: Instant,
        lease: Lease,
        fanout: &Arc<WakeFanout>,
    ) -> Held {
        let clock = Arc::new(LeaseClock::new(sent, &lease));
        let source = Arc::new(PartitionSource::new(
            self.source.clone(),
            fanout.clone(),
            p,
            self.config.partitions,
        ));
        let checkpoints = Arc::new(FencedCheckpoints::new(
            self.checkpoints.clone(),
            lease.clone(),
        ));
        let config = ListenerConfig {
            listener_id: self.config.partition_cursor(p),
            ..self.listener.clone()
        };
        let guard_clock = clock.clone();
        let listener = Listener::new(source, checkpoints, self.executor.clone(), config)
            .with_guard(Arc::new(move || guard_clock.holds()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move { listener.run(stop_rx).await });
        Held {
            lease,
            clock,
            stop,
            task,
            releasing: false,
            acquired: sent,
        }
    }

    async fn shut_down(&self, me: &str, mut held: BTreeMap<u32, Held>, summary: &mut HaRunSummary) {
        for h in held.values_mut() {
            h.releasing = true;
            let _ = h.stop.send(true);
        }
        // Keep the leases alive while the listeners finish their in-flight events and save.
        while !held.is_empty() {
            self.renew(&mut held, summary).await;
            self.reap(&mut held, summary).await;
            if held.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(Some(leader)) = self.coordinator.leader().await
            && leader.holder == me
            && let Err(e) = self.coordinator.leases().release(&leader).await
        {
            tracing::warn!(error = %e, "releasing the leader lease failed");
        }
        self.transition(ListenerState::Stopped);
        if let Err(e) = self.coordinator.deregister_listener(me).await {
            tracing::warn!(error = %e, "deregistering failed; the entry ages out");
        }
        tracing::info!(instance = me, "left the HA group");
    }
}
