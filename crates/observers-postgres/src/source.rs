//! The change-log source: reads `observer_change_log` in id order after an id cursor, only up to
//! the horizon below which every id is final (so no row it passes can appear later), and wakes
//! when the horizon moves, found by adaptive polling (writers never `NOTIFY`: a notifying commit
//! takes a cluster-wide lock). `ChangeLogListener` runs core's listener loop over it with
//! PostgreSQL checkpoints.
//!
//! The horizon (docs/postgres.md, "The cursor") costs writers nothing: a transaction writing the
//! change log holds PostgreSQL's own write lock on it from before its first id is drawn until its
//! rows are visible. A look (`observers_change_horizon_step`, migration 032) reads the id
//! sequence's last value `L`, then lists the transactions holding that lock, each with a bound
//! below its ids: the one it had at the last look, or, if it was not writing then, that look's
//! `L`. The horizon is the smaller of `L` and the lowest bound. Each source remembers its last
//! look ([`Look`]). The rows are read in a LATER statement, so with a later snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt as _;
use observers_core::executor::ObserverExecutor;
use observers_core::listener::{DEFAULT_MAX_BATCH_BYTES, Listener, ListenerConfig, ListenerStats};
use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::stores::source::{EventSource, SourceItem};
use observers_core::{Cursor, ObserverError};
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::change_row::{self, change_columns};
use crate::error::PgError;

/// How soon the wake-up poller looks again after it saw the horizon move: changes are flowing.
pub const MIN_POLL: Duration = Duration::from_millis(2);

/// How many reads after one that found a gap right after its cursor ask for the horizon first.
const HORIZON_FIRST_READS: u32 = 32;

/// The longest wait between polls when idle, unless [`PgEventSource::with_poll_interval`] says
/// otherwise (`[source] poll_interval`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The signal a write into the change log of `pool`'s database by this process (the WAL
/// relay's) gives once it committed: the waiting readers of this process that read the same
/// database are woken at once, not at their poller's next look. A reader that was not waiting at
/// that moment misses it and is woken by its poller as before.
pub(crate) fn written_signal(pool: &PgPool) -> Arc<Notify> {
    static SIGNALS: std::sync::Mutex<Vec<(String, std::sync::Weak<Notify>)>> =
        std::sync::Mutex::new(Vec::new());
    let options = pool.connect_options();
    let database = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let mut signals = SIGNALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    signals.retain(|(_, s)| s.strong_count() > 0);
    if let Some(signal) = signals
        .iter()
        .find(|(d, _)| *d == database)
        .and_then(|(_, s)| s.upgrade())
    {
        return signal;
    }
    let signal = Arc::new(Notify::new());
    signals.push((database, Arc::downgrade(&signal)));
    signal
}

/// One look, after the last one (`$1` the highest id known final; `$2`, `$3`, `$4` what the
/// last look left: its sequence value, and the writers it saw with a bound below the ids of each):
/// the horizon now, the same three for the next look, and whether it scanned `pg_locks` (it does
/// not when no id above `$1` was drawn).
const LOOK: &str = "SELECT horizon, next_look, next_holders, next_bounds, scanned \
                      FROM observers_change_horizon_step($1, $2, $3, $4)";

/// What a source knows of the horizon between looks: the highest id known final, and what the
/// last look saw: the sequence's value, and the writers in flight with a bound below the ids of
/// each (a writer first seen at the next look draws above that value).
#[derive(Debug, Default)]
struct Look {
    known: i64,
    sequence: Option<i64>,
    holders: Vec<String>,
    bounds: Vec<i64>,
}

impl Look {
    /// Looks again: `known` becomes the horizon now, the rest what the next look needs. Returns
    /// whether `pg_locks` was scanned.
    async fn next(&mut self, conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
        type Row = (i64, i64, Option<Vec<String>>, Option<Vec<i64>>, bool);
        let (horizon, last_look, holders, bounds, scanned): Row = sqlx::query_as(LOOK)
            .bind(self.known)
            .bind(self.sequence)
            .bind(&self.holders)
            .bind(&self.bounds)
            .fetch_one(conn)
            .await?;
        self.known = self.known.max(horizon);
        self.sequence = Some(last_look);
        self.holders = holders.unwrap_or_default();
        self.bounds = bounds.unwrap_or_default();
        Ok(scanned)
    }

    /// How many transactions were writing the change log at the last look.
    fn writers(&self) -> usize {
        self.holders.iter().filter(|h| h.starts_with('v')).count()
    }
}

/// How often [`settled_horizon`] looks again while writers are in flight.
const SETTLE_LOOK: Duration = Duration::from_millis(5);

/// The horizon once the transactions writing the change log now have ended: every id up to the
/// sequence's last value now is then final. `waiting` is called about once a second with the
/// number of those transactions still open (a forgotten `BEGIN` keeps it waiting).
pub async fn settled_horizon(
    pool: &PgPool,
    mut waiting: impl FnMut(usize),
) -> Result<i64, PgError> {
    let mut conn = pool.acquire().await?;
    let mut look = Look::default();
    look.next(&mut conn).await?;
    let target = look.sequence.unwrap_or(look.known);
    let mut told = tokio::time::Instant::now();
    while look.known < target {
        if told.elapsed() >= Duration::from_secs(1) {
            told = tokio::time::Instant::now();
            waiting(look.writers());
        }
        tokio::time::sleep(SETTLE_LOOK).await;
        look.next(&mut conn).await?;
    }
    Ok(look.known)
}

/// The read after the cursor `$1` up to the horizon `$2`, without the byte budget.
macro_rules! fetch_rows_sql {
    () => {
        "SELECT * FROM observer_change_log \
          WHERE id > $1 AND id <= $2 \
          ORDER BY id \
          LIMIT $3"
    };
}

/// The same read restricted to one partition: rows whose entity id hashes to `$5` of `$4`
/// (a stable hash, so an entity always lands in the same partition and stays in order).
macro_rules! fetch_partition_sql {
    () => {
        "SELECT * FROM observer_change_log \
          WHERE id > $1 AND id <= $2 \
            AND (hashtextextended(entity_id, 0) & 9223372036854775807) % $4 = $5 \
          ORDER BY id \
          LIMIT $3"
    };
}

/// Wraps a read (its rows in id order) in the byte budget `$budget`: the rows whose
/// running total of stored row-image size (`pg_column_size`, which reads no TOAST) stays within
/// it, and always the first. Stored sizes may be compressed, so the reader also counts the bytes
/// it receives and stops at the budget (see [`PgEventSource::fetch_with`]).
macro_rules! within_budget {
    ($read:expr, $budget:literal) => {
        concat!(
            "SELECT ",
            change_columns!(),
            " FROM (SELECT r.*, \
                    row_number() OVER w AS budget_row, \
                    sum(coalesce(pg_column_size(r.before), 0) + coalesce(pg_column_size(r.after), 0)) \
                        OVER w AS budget_bytes \
               FROM (",
            $read,
            ") r WINDOW w AS (ORDER BY r.id ROWS UNBOUNDED PRECEDING)) b \
              WHERE b.budget_row = 1 OR b.budget_bytes <= ",
            $budget,
            " ORDER BY b.id"
        )
    };
}

const FETCH: &str = within_budget!(fetch_rows_sql!(), "$4");
const FETCH_PARTITION: &str = within_budget!(fetch_partition_sql!(), "$6");

/// Reads the change log; a background task polls the horizon and wakes waiters when it moves.
pub struct PgEventSource {
    pool: PgPool,
    max_batch_bytes: usize,
    wake: Arc<Wake>,
    /// `[source] poll_interval` in microseconds: the poller's longest wait.
    poll_interval_us: Arc<AtomicU64>,
    poll_task: JoinHandle<()>,
    /// Rung when this process's WAL relay committed a write into the same database's change log.
    written: Arc<Notify>,
}

/// What the reader and the wake-up poller share.
#[derive(Default)]
struct Wake {
    /// Wakes the reader: the horizon moved.
    notify: Notify,
    /// Readers in [`EventSource::wait_for_changes`] now; the poller polls only while there is one.
    waiters: AtomicUsize,
    /// A reader began to wait.
    waiter_arrived: Notify,
    /// The highest horizon a read saw (so the poller does not wake a reader for rows it read).
    seen: AtomicI64,
    /// Horizon queries the poller has made.
    polls: AtomicU64,
    /// Those of them that read the horizon (a scan of `pg_locks`): ids had been drawn past what
    /// the poller knew.
    poll_scans: AtomicU64,
    /// Horizon queries reads have made (a read of rows whose ids follow the cursor without a gap
    /// needs none; see [`PgEventSource::read`]).
    read_horizons: AtomicU64,
    /// Reads left that ask for the horizon first, as every read did before: set after a read
    /// found a gap right after its cursor (writers in flight), so that concurrent writers cost
    /// one wasted read in [`HORIZON_FIRST_READS`], not one in two.
    horizon_first: AtomicU32,
    /// Wake-ups by this process's WAL relay (see [`written_signal`]).
    write_wakes: AtomicU64,
    /// The last look at the horizon (shared by the reader and the poller; both look on `conn`,
    /// one at a time).
    look: std::sync::Mutex<Look>,
    /// The connection the reader and the poller query on, kept rather than taken from the pool
    /// for each query: sqlx checks a connection with a round trip each time it goes back, which
    /// was half the round trips of a busy reader. The poller asks only while the reader waits,
    /// so they seldom queue for it. Dropped after an error (the next query takes a fresh one).
    conn: crate::Kept,
}

impl Drop for PgEventSource {
    fn drop(&mut self) {
        self.poll_task.abort();
    }
}

impl PgEventSource {
    /// Starts the wake-up poller (one query per poll, backing off to
    /// [`DEFAULT_POLL_INTERVAL`] when idle). Connection trouble wakes the reader, which reports
    /// it and retries.
    pub fn new(pool: PgPool) -> Self {
        let wake = Arc::new(Wake::default());
        let poll_interval_us = Arc::new(AtomicU64::new(micros(DEFAULT_POLL_INTERVAL)));
        let poll_task = tokio::spawn(poll_loop(
            pool.clone(),
            wake.clone(),
            poll_interval_us.clone(),
        ));
        Self {
            written: written_signal(&pool),
            pool,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            wake,
            poll_interval_us,
            poll_task,
        }
    }

    /// How many horizon queries the wake-up poller has made (it makes none while the reader is
    /// reading rather than waiting).
    pub fn horizon_polls(&self) -> u64 {
        self.wake.polls.load(Ordering::Relaxed)
    }

    /// How many of the poller's queries scanned `pg_locks` for the horizon's writers (the others
    /// found no id drawn past what it knew, reading only the sequence).
    pub fn horizon_poll_scans(&self) -> u64 {
        self.wake.poll_scans.load(Ordering::Relaxed)
    }

    /// How many horizon queries reads have made (none while the ids after the cursor run on
    /// without a gap).
    pub fn read_horizons(&self) -> u64 {
        self.wake.read_horizons.load(Ordering::Relaxed)
    }

    /// How often a waiting reader was woken by this process's WAL relay committing a write,
    /// rather than by the poller.
    pub fn write_wakes(&self) -> u64 {
        self.wake.write_wakes.load(Ordering::Relaxed)
    }

    /// The longest wait between polls when no change arrives (`[source] poll_interval`).
    #[must_use]
    pub fn with_poll_interval(self, interval: Duration) -> Self {
        self.poll_interval_us
            .store(micros(interval.max(MIN_POLL)), Ordering::Relaxed);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The byte budget of one fetch (default [`DEFAULT_MAX_BATCH_BYTES`]; at least one row is
    /// always returned).
    #[must_use]
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes.max(1);
        self
    }

    /// The highest change-log id below which every id is final, once the writers in flight now
    /// have ended (see the module docs).
    pub async fn horizon(&self) -> Result<i64, PgError> {
        settled_horizon(&self.pool, |_| {}).await
    }

    /// Reads the rows of `query(upper)` after `after` that are final. With `unbroken` (a read of
    /// every row, not of one partition), it first reads without a bound: rows whose ids follow
    /// the cursor one by one are final, since every id up to the last of them is taken by a
    /// committed row and no transaction still in flight can hold one (its rows would be missing
    /// from the run). That read needs no horizon, which scans `pg_locks`. It returns the rows up
    /// to the first gap. A gap right after the cursor (a writer in flight, a rolled-back or pruned
    /// id) needs the horizon: then, and for partitions, the horizon first, then (in a later
    /// statement, on the same connection) the rows up to it. The highest id known final is
    /// recorded for the poller: a reader that finds nothing up to it has everything up to it.
    async fn read<'q>(
        &self,
        after: Cursor,
        unbroken: bool,
        query: impl Fn(i64) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<SourceItem>, PgError> {
        let wake = &self.wake;
        let optimistic = unbroken
            && wake
                .horizon_first
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_err();
        wake.conn
            .run(&self.pool, async |conn| {
                if optimistic {
                    let mut items = self.fetch_with(conn, query(i64::MAX)).await?;
                    let run = items
                        .iter()
                        .zip(after.id.saturating_add(1)..)
                        .take_while(|(item, id)| item.cursor().id == *id)
                        .count();
                    if run > 0 || items.is_empty() {
                        items.truncate(run);
                        let last = items.last().map_or(after.id, |item| item.cursor().id);
                        wake.seen.fetch_max(last, Ordering::Relaxed);
                        return Ok(items);
                    }
                    wake.horizon_first
                        .store(HORIZON_FIRST_READS, Ordering::Relaxed);
                }
                wake.read_horizons.fetch_add(1, Ordering::Relaxed);
                let (horizon, _) = wake.look(conn, after.id).await?;
                wake.seen.fetch_max(horizon, Ordering::Relaxed);
                if horizon <= after.id {
                    return Ok(Vec::new());
                }
                self.fetch_with(conn, query(horizon)).await
            })
            .await
    }

    /// Reads up to `limit` final rows after `after`, within the byte budget.
    pub async fn fetch_rows(
        &self,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<SourceItem>, PgError> {
        self.read(after, true, |horizon| {
            sqlx::query(FETCH)
                .bind(after.id)
                .bind(horizon)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(self.budget())
        })
        .await
    }

    /// Like [`fetch_rows`](Self::fetch_rows), only the rows of `partition` (of `partitions`).
    pub async fn fetch_partition(
        &self,
        after: Cursor,
        limit: usize,
        partition: u32,
        partitions: u32,
    ) -> Result<Vec<SourceItem>, PgError> {
        if partitions <= 1 {
            return self.fetch_rows(after, limit).await;
        }
        self.read(after, false, |horizon| {
            sqlx::query(FETCH_PARTITION)
                .bind(after.id)
                .bind(horizon)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(i64::from(partitions))
                .bind(i64::from(partition))
                .bind(self.budget())
        })
        .await
    }

    fn budget(&self) -> i64 {
        i64::try_from(self.max_batch_bytes).unwrap_or(i64::MAX)
    }

    /// Streams the rows of `query`, decoding one at a time, and stops before the row that would
    /// take the bytes received past the budget (the first row is always taken). The query's own
    /// budget is on stored sizes, which compression can make smaller than what arrives; this is
    /// the exact bound on what a batch holds.
    async fn fetch_with(
        &self,
        conn: &mut sqlx::PgConnection,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<SourceItem>, PgError> {
        let mut rows = query.fetch(conn);
        let mut items = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await? {
            let size = change_row::wire_size(&row);
            if !items.is_empty() && bytes.saturating_add(size) > self.max_batch_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            items.push(change_row::decode(&row)?);
        }
        Ok(items)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Wakes the reader whenever the horizon moves (new rows are final, or a transaction holding
/// them back ended), while it waits: a reader that is reading asks for the horizon itself with
/// every read, so the poller then stays quiet (under a steady stream it made most of the horizon
/// queries, each a scan of `pg_locks`, for nothing). While the reader waits, the poller looks
/// every [`MIN_POLL`] while the horizon moves; once it stands still, it waits an eighth of the
/// time since it last moved (so a short lull costs a short delay, never a long one), up to the
/// poll interval, so an idle instance costs one cheap query per interval.
async fn poll_loop(pool: PgPool, wake: Arc<Wake>, poll_interval_us: Arc<AtomicU64>) {
    let mut moved = tokio::time::Instant::now();
    let mut last: Option<i64> = wake.poll(&pool).await.ok();
    // The first wake-up makes the reader read from its cursor.
    wake.notify.notify_one();
    let mut wait = MIN_POLL;
    loop {
        let longest = Duration::from_micros(poll_interval_us.load(Ordering::Relaxed)).max(MIN_POLL);
        if wake.waiters.load(Ordering::Acquire) == 0 {
            wake.waiter_arrived.notified().await;
            // A reader that found rows since the last look saw changes flowing: look again soon.
            // One that only timed out and read nothing keeps the idle back-off.
            if wake.fold_seen(&mut last) {
                moved = tokio::time::Instant::now();
            }
            wait = (moved.elapsed() / 8).clamp(MIN_POLL, longest);
        }
        tokio::time::sleep(wait).await;
        if wake.waiters.load(Ordering::Acquire) == 0 {
            // It stopped waiting meanwhile (or the wake-up was an old one).
            continue;
        }
        wake.fold_seen(&mut last);
        wait = match wake.poll(&pool).await {
            Ok(horizon) if last != Some(horizon) => {
                if last.is_some() {
                    wake.notify.notify_one();
                }
                last = Some(horizon);
                moved = tokio::time::Instant::now();
                MIN_POLL
            }
            Ok(_) => (moved.elapsed() / 8).clamp(MIN_POLL, longest),
            Err(e) => {
                // The reader's own read reports the problem and backs off; wake it so it does.
                tracing::debug!(error = %e, "polling the change-log horizon failed");
                wake.notify.notify_one();
                last = None;
                longest
            }
        };
    }
}

impl Wake {
    /// One look of the poller's, counted: the horizon (the highest id known final when no id
    /// was drawn past it; then only the sequence was read).
    async fn poll(&self, pool: &PgPool) -> Result<i64, sqlx::Error> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let (horizon, scanned) = self
            .conn
            .run(pool, async |conn| self.look(conn, 0).await)
            .await?;
        if scanned {
            self.poll_scans.fetch_add(1, Ordering::Relaxed);
        }
        Ok(horizon)
    }

    /// One look at the horizon after the last one (the caller holds `conn`, so looks never
    /// overlap): the horizon now and whether `pg_locks` was scanned. `cursor` is the reader's
    /// (every id up to it was final when the cursor passed it; 0 when unknown).
    async fn look(
        &self,
        conn: &mut sqlx::PgConnection,
        cursor: i64,
    ) -> Result<(i64, bool), sqlx::Error> {
        // Taken out for the query (no std mutex across an await) and put back after it, looked
        // or not: `next` changes nothing when it fails, and what `known` gained here is final.
        // A look dropped mid-query leaves a fresh state, so the next look starts over: that
        // holds back more for a moment, never less.
        let mut last = std::mem::take(
            &mut *self
                .look
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        last.known = last
            .known
            .max(self.seen.load(Ordering::Relaxed))
            .max(cursor);
        let looked = last.next(conn).await;
        let horizon = last.known;
        *self
            .look
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = last;
        Ok((horizon, looked?))
    }

    /// Takes the horizon the reader's reads saw into `last` when it is further: a reader waits
    /// only after a read that found nothing, so it has everything up to it. Returns whether it
    /// was further.
    fn fold_seen(&self, last: &mut Option<i64>) -> bool {
        let seen = self.seen.load(Ordering::Relaxed);
        let further = seen > 0 && last.is_none_or(|l| l < seen);
        if further {
            *last = Some(seen);
        }
        further
    }
}

/// Counts a reader as waiting for as long as it lives (also when its wait is cancelled).
struct Waiting<'a>(&'a Wake);

impl<'a> Waiting<'a> {
    fn new(wake: &'a Wake) -> Self {
        wake.waiters.fetch_add(1, Ordering::AcqRel);
        wake.waiter_arrived.notify_one();
        Self(wake)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl EventSource for PgEventSource {
    async fn fetch(&self, after: Cursor, limit: usize) -> observers_core::Result<Vec<SourceItem>> {
        self.fetch_rows(after, limit)
            .await
            .map_err(ObserverError::from)
    }

    async fn wait_for_changes(&self, timeout: Duration) -> bool {
        let _waiting = Waiting::new(&self.wake);
        let woken = async {
            tokio::select! {
                () = self.wake.notify.notified() => {}
                () = self.written.notified() => {
                    self.wake.write_wakes.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        tokio::time::timeout(timeout, woken).await.is_ok()
    }
}

/// Core's listener loop over the PostgreSQL change log.
pub struct ChangeLogListener {
    inner: Listener,
}

impl ChangeLogListener {
    pub fn new(
        pool: PgPool,
        checkpoints: Arc<dyn CheckpointStore>,
        executor: Arc<ObserverExecutor>,
        config: ListenerConfig,
    ) -> Self {
        let source = Arc::new(
            PgEventSource::new(pool)
                .with_max_batch_bytes(config.max_batch_bytes)
                .with_poll_interval(config.poll_interval),
        );
        Self {
            inner: Listener::new(source, checkpoints, executor, config),
        }
    }

    /// Runs until `shutdown` is true; in-flight events finish and the checkpoint is saved.
    pub async fn run(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> observers_core::Result<ListenerStats> {
        self.inner.run(shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readers and relays of one database share a signal; another database has its own.
    #[tokio::test]
    async fn the_write_signal_is_per_database() {
        let pool = |url: &str| {
            sqlx::postgres::PgPoolOptions::new()
                .connect_lazy(url)
                .unwrap()
        };
        let a = pool("postgres://u@127.0.0.1:5432/shop");
        let a2 = pool("postgres://other@127.0.0.1:5432/shop");
        let b = pool("postgres://u@127.0.0.1:5432/crm");
        let signal = written_signal(&a);
        assert!(Arc::ptr_eq(&signal, &written_signal(&a2)));
        assert!(!Arc::ptr_eq(&signal, &written_signal(&b)));
    }
}
