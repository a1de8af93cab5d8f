//! The pieces one partition listener runs with: a source reading only its partition (sharing
//! one LISTEN connection through a fan-out), a checkpoint store whose saves are fenced by the
//! partition lease, and a local lease clock the listener checks before reading or starting an
//! event.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use observers_core::stores::checkpoint::{Checkpoint, CheckpointStore};
use observers_core::stores::lease::Lease;
use observers_core::stores::source::{EventSource, SourceItem};
use observers_core::{Cursor, ObserverError, Result};
use observers_postgres::{PgEventSource, PostgresCheckpointStore};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Wakes every partition listener of this process when the change log is notified.
pub struct WakeFanout {
    counter: AtomicU64,
    notify: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl WakeFanout {
    /// Relays `source`'s wake-ups to every waiter.
    pub fn start(source: Arc<PgEventSource>) -> Arc<Self> {
        let fanout = Arc::new(Self {
            counter: AtomicU64::new(0),
            notify: Notify::new(),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&fanout);
        let task = tokio::spawn(async move {
            loop {
                source.wait_for_changes(Duration::from_secs(60)).await;
                let Some(f) = weak.upgrade() else { return };
                f.counter.fetch_add(1, Ordering::SeqCst);
                f.notify.notify_waiters();
            }
        });
        if let Ok(mut slot) = fanout.task.lock() {
            *slot = Some(task);
        }
        fanout
    }
}

impl Drop for WakeFanout {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.task.lock()
            && let Some(t) = slot.take()
        {
            t.abort();
        }
    }
}

/// The change log restricted to one partition.
pub struct PartitionSource {
    source: Arc<PgEventSource>,
    fanout: Arc<WakeFanout>,
    seen: AtomicU64,
    partition: u32,
    partitions: u32,
}

impl PartitionSource {
    pub fn new(
        source: Arc<PgEventSource>,
        fanout: Arc<WakeFanout>,
        partition: u32,
        partitions: u32,
    ) -> Self {
        let seen = AtomicU64::new(fanout.counter.load(Ordering::SeqCst));
        Self {
            source,
            fanout,
            seen,
            partition,
            partitions,
        }
    }
}

#[async_trait]
impl EventSource for PartitionSource {
    async fn fetch(&self, after: Cursor, limit: usize) -> Result<Vec<SourceItem>> {
        self.source
            .fetch_partition(after, limit, self.partition, self.partitions)
            .await
            .map_err(ObserverError::from)
    }

    async fn wait_for_changes(&self, timeout: Duration) -> bool {
        let notified = self.fanout.notify.notified();
        let now = self.fanout.counter.load(Ordering::SeqCst);
        if now != self.seen.swap(now, Ordering::SeqCst) {
            return true;
        }
        let woke = tokio::time::timeout(timeout, notified).await.is_ok();
        self.seen
            .store(self.fanout.counter.load(Ordering::SeqCst), Ordering::SeqCst);
        woke
    }
}

/// When this process must consider a lease lost by its own monotonic clock: the deadline is
/// measured from before the request that granted the time, so it is never later than the
/// database's. Revoked for good when a renewal is refused.
#[derive(Debug)]
pub struct LeaseClock {
    deadline: Mutex<Instant>,
    revoked: AtomicBool,
}

impl LeaseClock {
    /// A clock for a lease granted by a request sent at `sent_at`.
    pub fn new(sent_at: Instant, lease: &Lease) -> Self {
        Self {
            deadline: Mutex::new(deadline(sent_at, lease)),
            revoked: AtomicBool::new(false),
        }
    }

    pub fn extend(&self, sent_at: Instant, lease: &Lease) {
        if let Ok(mut d) = self.deadline.lock() {
            *d = deadline(sent_at, lease);
        }
    }

    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    pub fn holds(&self) -> bool {
        !self.revoked.load(Ordering::SeqCst)
            && self.deadline.lock().is_ok_and(|d| Instant::now() < *d)
    }
}

fn deadline(sent_at: Instant, lease: &Lease) -> Instant {
    // A small margin for scheduling delays between the check and the action.
    let margin = (lease.expires_in / 20).min(Duration::from_millis(250));
    sent_at + lease.expires_in.saturating_sub(margin)
}

/// Checkpoints of one partition, saved only under its lease (`save_fenced`).
pub struct FencedCheckpoints {
    inner: Arc<PostgresCheckpointStore>,
    lease: Lease,
}

impl FencedCheckpoints {
    pub fn new(inner: Arc<PostgresCheckpointStore>, lease: Lease) -> Self {
        Self { inner, lease }
    }
}

#[async_trait]
impl CheckpointStore for FencedCheckpoints {
    async fn load(&self, listener_id: &str) -> Result<Option<Checkpoint>> {
        self.inner.load(listener_id).await
    }

    async fn save(&self, listener_id: &str, cursor: Cursor, processed: u64) -> Result<()> {
        self.inner
            .save_fenced(
                listener_id,
                cursor,
                processed,
                &self.lease.name,
                &self.lease.holder,
                self.lease.epoch,
            )
            .await
    }

    async fn record_save_error(&self, listener_id: &str, error: &str) -> Result<()> {
        self.inner
            .record_error(listener_id, error)
            .await
            .map(|_| ())
    }

    async fn compare_and_swap(
        &self,
        listener_id: &str,
        expected: Option<Cursor>,
        new: Cursor,
    ) -> Result<bool> {
        self.inner
            .compare_and_swap(listener_id, expected, new)
            .await
    }

    async fn delete(&self, listener_id: &str) -> Result<bool> {
        self.inner.delete(listener_id).await
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        self.inner.list().await
    }
}
