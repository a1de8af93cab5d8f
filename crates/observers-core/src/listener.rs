//! The listener loop, generic over its source and checkpoint store: read a batch after the
//! cursor, run it through the executor (per-entity order, entities concurrently), save the
//! checkpoint over the contiguous completed prefix, wait for a wake-up or poll, repeat.
//! observers-postgres plugs in the change-log source; tests and library users can plug in the
//! in-memory one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{ObserverError, Result};
use crate::event::{Cursor, EntityEvent, EventKind};
use crate::executor::ObserverExecutor;
use crate::schedule::{ProgressTracker, run_batch};
use crate::stores::checkpoint::CheckpointStore;
use crate::stores::dlq::DlqEntry;
use crate::stores::source::{EventSource, SourceItem};
use crate::telemetry::TelemetryEvent;

/// The default byte budget of one batch (`[source] max_batch_bytes`): 16 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub listener_id: String,
    pub batch_size: usize,
    /// Bytes of row data one batch may hold, for sources that can measure it (the PostgreSQL
    /// change log does); a source always returns at least one item, however big.
    pub max_batch_bytes: usize,
    pub poll_interval: Duration,
    pub max_in_flight: usize,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            listener_id: "default".into(),
            batch_size: 1000,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            poll_interval: Duration::from_secs(1),
            max_in_flight: 64,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Counters of a listener run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub batches: u64,
    pub events: u64,
    pub poison: u64,
    pub cursor: Cursor,
    /// Events already counted in a saved checkpoint.
    pub saved_events: u64,
}

/// Drives events from a source through an executor.
pub struct Listener {
    source: Arc<dyn EventSource>,
    checkpoints: Arc<dyn CheckpointStore>,
    executor: Arc<ObserverExecutor>,
    config: ListenerConfig,
    guard: Option<ListenerGuard>,
}

/// Says whether the listener may still deliver (HA: this instance still holds its lease by its
/// own conservative clock). Checked before every read and before every event is started.
pub type ListenerGuard = Arc<dyn Fn() -> bool + Send + Sync>;

impl Listener {
    pub fn new(
        source: Arc<dyn EventSource>,
        checkpoints: Arc<dyn CheckpointStore>,
        executor: Arc<ObserverExecutor>,
        config: ListenerConfig,
    ) -> Self {
        Self {
            source,
            checkpoints,
            executor,
            config,
            guard: None,
        }
    }

    /// Stops the listener with `ObserverError::Fenced` as soon as `guard` answers `false`:
    /// nothing more is read or started (events already running finish, and the save that
    /// follows is refused by the fenced store).
    #[must_use]
    pub fn with_guard(mut self, guard: ListenerGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    fn guard_holds(&self) -> bool {
        self.guard.as_ref().is_none_or(|g| g())
    }

    /// Runs until `shutdown` turns true: events in flight finish and the checkpoint is saved.
    /// Returns an error only for a fenced checkpoint write (this instance lost its lease).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<ListenerStats> {
        let id = self.config.listener_id.as_str();
        let telemetry = self.executor.telemetry().clone();
        let mut stats = ListenerStats {
            cursor: self.load_cursor(&mut shutdown).await?,
            ..ListenerStats::default()
        };
        tracing::info!(listener = id, cursor = %stats.cursor, "listener started");
        let mut backoff = Duration::from_millis(100);
        let mut source_failed = false;
        while !*shutdown.borrow() {
            if !self.guard_holds() {
                return Err(ObserverError::Fenced(format!(
                    "listener `{id}` lost its lease; stopping without reading further"
                )));
            }
            let items = match self
                .source
                .fetch(stats.cursor, self.config.batch_size)
                .await
            {
                Ok(items) => {
                    if source_failed {
                        source_failed = false;
                        telemetry.emit(&TelemetryEvent::ListenerReconnected {
                            listener: id,
                            backoff,
                        });
                        tracing::info!(listener = id, "reading the source works again");
                    }
                    backoff = Duration::from_millis(100);
                    items
                }
                Err(e) => {
                    source_failed = true;
                    let error = e.to_string();
                    telemetry.emit(&TelemetryEvent::ListenerError {
                        listener: id,
                        error: &error,
                        backoff,
                    });
                    tracing::warn!(
                        listener = id,
                        error,
                        ?backoff,
                        "reading the source failed; retrying"
                    );
                    sleep_or_shutdown(backoff, &mut shutdown).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    continue;
                }
            };
            if items.is_empty() {
                tokio::select! {
                    _ = self.source.wait_for_changes(self.config.poll_interval) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let (done, complete) = self.process_batch(items, &shutdown, &mut stats).await;
            if let Some(committed) = done
                && committed > stats.cursor
            {
                self.save(committed, &mut stats).await?;
            }
            if !complete && !*shutdown.borrow() {
                // An outcome could not be recorded (DLQ unreachable): re-read from the cursor
                // after a pause rather than skip anything.
                sleep_or_shutdown(backoff, &mut shutdown).await;
                backoff = (backoff * 2).min(self.config.max_backoff);
            }
        }
        tracing::info!(listener = id, cursor = %stats.cursor, events = stats.events, "listener stopped");
        Ok(stats)
    }

    /// Processes at most one batch; returns how many items it completed. For tests and tools.
    pub async fn run_once(&self) -> Result<ListenerStats> {
        let (_tx, rx) = watch::channel(false);
        let mut stats = ListenerStats {
            cursor: self
                .checkpoints
                .load(&self.config.listener_id)
                .await?
                .map(|c| c.cursor)
                .unwrap_or_default(),
            ..ListenerStats::default()
        };
        let items = self
            .source
            .fetch(stats.cursor, self.config.batch_size)
            .await?;
        if items.is_empty() {
            return Ok(stats);
        }
        let (done, _) = self.process_batch(items, &rx, &mut stats).await;
        if let Some(committed) = done
            && committed > stats.cursor
        {
            self.save(committed, &mut stats).await?;
        }
        Ok(stats)
    }

    async fn load_cursor(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Cursor> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.checkpoints.load(&self.config.listener_id).await {
                Ok(cp) => return Ok(cp.map(|c| c.cursor).unwrap_or_default()),
                Err(e) if *shutdown.borrow() => return Err(e),
                Err(e) => {
                    tracing::warn!(listener = %self.config.listener_id, error = %e, "loading the checkpoint failed; retrying");
                    sleep_or_shutdown(backoff, shutdown).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    async fn save(&self, cursor: Cursor, stats: &mut ListenerStats) -> Result<()> {
        let started = Instant::now();
        let processed = stats.events - stats.saved_events;
        match self
            .checkpoints
            .save(&self.config.listener_id, cursor, processed)
            .await
        {
            Ok(()) => {
                self.executor
                    .telemetry()
                    .emit(&TelemetryEvent::CheckpointSaved {
                        listener: &self.config.listener_id,
                        duration: started.elapsed(),
                    });
            }
            Err(e @ ObserverError::Fenced(_)) => {
                self.executor
                    .telemetry()
                    .emit(&TelemetryEvent::CheckpointFenced {
                        listener: &self.config.listener_id,
                    });
                return Err(e);
            }
            Err(e) => {
                // The position still advances in memory; the next save persists it. A crash
                // before then re-delivers (at-least-once), never skips.
                let error = e.to_string();
                tracing::warn!(listener = %self.config.listener_id, error, "saving the checkpoint failed; will retry");
                self.executor
                    .telemetry()
                    .emit(&TelemetryEvent::CheckpointSaveFailed {
                        listener: &self.config.listener_id,
                        error: &error,
                    });
                if let Err(e) = self
                    .checkpoints
                    .record_save_error(&self.config.listener_id, &error)
                    .await
                {
                    tracing::debug!(listener = %self.config.listener_id, error = %e, "could not record the failed save");
                }
            }
        }
        stats.cursor = cursor;
        stats.saved_events = stats.events;
        Ok(())
    }

    /// Returns the committed prefix cursor and whether every item completed.
    async fn process_batch(
        &self,
        items: Vec<SourceItem>,
        shutdown: &watch::Receiver<bool>,
        stats: &mut ListenerStats,
    ) -> (Option<Cursor>, bool) {
        let id = self.config.listener_id.as_str();
        let started = Instant::now();
        let tracker = ProgressTracker::new(items.iter().map(SourceItem::cursor).collect());
        let mut events = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        for (pos, item) in items.into_iter().enumerate() {
            match item {
                SourceItem::Event(e) => {
                    events.push(e);
                    positions.push(pos);
                }
                SourceItem::Poison { cursor, raw, error } => {
                    if self.dead_letter_poison(cursor, &raw, &error).await {
                        tracker.complete(pos);
                        stats.poison += 1;
                    }
                }
            }
        }
        let executor = &self.executor;
        let telemetry = executor.telemetry();
        run_batch(
            &events,
            self.config.max_in_flight,
            &|p| tracker.complete(positions[p]),
            &|| !*shutdown.borrow() && self.guard_holds(),
            |_, event| async move {
                let lag = chrono::Utc::now() - event.timestamp;
                telemetry.emit(&TelemetryEvent::CommitToDispatch {
                    entity_type: &event.entity_type,
                    latency: lag.to_std().unwrap_or_default(),
                });
                match executor.process(event).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(listener = id, event_id = event.id, error = %e, "event outcome could not be recorded; it will be re-read");
                        false
                    }
                }
            },
        )
        .await;
        let done = tracker.prefix_len();
        stats.batches += 1;
        stats.events += done as u64;
        telemetry.emit(&TelemetryEvent::BatchProcessed {
            listener: id,
            size: done,
            duration: started.elapsed(),
        });
        (tracker.committed(), tracker.is_complete())
    }

    async fn dead_letter_poison(
        &self,
        cursor: Cursor,
        raw: &serde_json::Value,
        error: &str,
    ) -> bool {
        let id = self.config.listener_id.as_str();
        let field = |k: &str| {
            raw.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let mut event = EntityEvent::new(
            cursor.id,
            field("entity_type"),
            field("entity_id"),
            EventKind::Insert,
            None,
            Some(raw.clone()),
        );
        event.txid = raw
            .get("txid")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_default();
        let entry = DlqEntry {
            event,
            observer: String::new(),
            action_index: 0,
            action_type: "source".into(),
            error_code: "OBS-INVALID-EVENT".into(),
            error: error.to_owned(),
            attempts: 0,
        };
        self.executor
            .telemetry()
            .emit(&TelemetryEvent::PoisonEvent {
                listener: id,
                id: cursor.id,
            });
        tracing::error!(
            listener = id,
            change_id = cursor.id,
            error,
            "undecodable change-log row; dead-lettered"
        );
        match self.executor.dlq().push(entry).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(listener = id, error = %e, "could not dead-letter an undecodable row; it will be re-read");
                false
            }
        }
    }
}

/// Sleeps `d`, or less when `shutdown` changes: the wait of every background loop.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}
