//! Direct delivery from the replication stream (`[source] kind = "wal"`, `wal_delivery =
//! "direct"`): the events of the slot's committed transactions go straight to the listener,
//! without the relay's copy into `observer_change_log` and the listener's read of it. The
//! database then does what it does for any logical-replication consumer and nothing more: the
//! walsender decodes the WAL, and a checkpoint row is written per saved batch.
//!
//! Guarantees:
//! - **Commit order, no skip.** `pgoutput` sends each transaction whole, after it committed, in
//!   commit order; its changes become events in that order.
//! - **The cursor is the commit LSN.** A save writes, in one statement, the end LSN of the last
//!   transaction every one of whose events is done and the id of its last event; only after it
//!   committed is that LSN confirmed to the slot. A restart (after a SIGKILL too) streams from
//!   the saved LSN, skipping any transaction that ends at or before it, so nothing saved is
//!   delivered again and nothing unsaved is lost.
//! - **Stable ids.** Events are numbered in stream order from the saved id: the captured changes
//!   after the saved LSN are the same after a restart, so a redelivered event gets the id it had,
//!   and its actions the same idempotency keys. The ids are above [`DIRECT_ID_BASE`] (2^62), a
//!   range the change log's ids never reach, so they never share an idempotency key with a
//!   change-log event of the same database.
//! - **Bounded memory.** At most [`MAX_BUFFERED`] events wait for the listener; past that the
//!   stream is not read (the server waits; the client keeps answering its keep-alives).
//! - **One consumer.** PostgreSQL streams a slot to one connection at a time.
//!
//! A re-read (the listener asks again after its cursor because an outcome could not be
//! recorded) restarts the stream from the saved LSN: the events come again with their ids.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::Cursor;
use observers_core::error::Result as CoreResult;
use observers_core::executor::ObserverExecutor;
use observers_core::listener::{Listener, ListenerConfig, ListenerStats};
use observers_core::stores::checkpoint::{Checkpoint, CheckpointStore};
use observers_core::stores::source::{EventSource, SourceItem};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::{Notify, watch};

use super::{
    CONTEXT_MESSAGE_PREFIX, Capture, Change, Rel, Tx, WalSettings, apply, apply_context, image_sql,
    load_captures, parse_lsn, pg_time, reconnecting, record_kept_as_text, record_unfit, render,
    replication_config, slot, validate_name, wire,
};
use crate::PostgresCheckpointStore;
use crate::change_row;
use crate::error::PgError;

/// Direct delivery's event ids start above this (2^62).
pub const DIRECT_ID_BASE: i64 = 1 << 62;

/// Events waiting for the listener, at most.
pub const MAX_BUFFERED: usize = 20_000;

/// How often the client reports the confirmed LSN to the server.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// At most one checkpoint write per this long; the rest wait for it (see [`Saving`]).
pub const SAVE_EVERY: Duration = Duration::from_millis(100);

/// Changes of a transaction converted and handed on together (a bigger transaction goes in
/// several steps, each as soon as it is converted).
const CONVERT_EVERY: usize = 1_000;

/// Events of the stream taken one after another while more are waiting, at most, before the
/// session looks again at shutdown, saves and room.
const TAKE_RUN: u64 = 1_000;

/// Events handed on and not yet announced to the listener, at most (the rest of a busy stream
/// is announced when nothing more is waiting).
const ANNOUNCE_EVERY: usize = 1_000;

/// The checkpoint id of the direct consumer of `listener_id`.
fn consumer_id(listener_id: &str) -> String {
    format!("{listener_id}:wal")
}

/// What a save wrote: the id of the last event of the last transaction done, and that
/// transaction's end LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Saved {
    id: i64,
    lsn: Lsn,
}

/// The events between the stream and the listener.
#[derive(Default)]
struct Buffer {
    items: VecDeque<SourceItem>,
    /// Per transaction whose events are all in `items` (or handed out): the id of its last event
    /// (of the one before, when it had none) and its end LSN. Dropped once saved.
    bounds: VecDeque<Saved>,
    /// The last save, or what the checkpoint row said at the start (`None`: not loaded yet).
    saved: Option<Saved>,
    /// The highest id handed to the listener since the stream (re)started.
    handed: Option<i64>,
    /// The listener asked again for events it was handed: the stream restarts from `saved`.
    rewind: bool,
}

/// Saves not written yet: the listener saves after every batch, the database gets at most one
/// write per [`SAVE_EVERY`] (a crash redelivers at most that much more).
#[derive(Default)]
struct Saving {
    /// The events processed since the last write (the checkpoint's running count).
    carried: u64,
    /// The last cursor the listener saved, not written yet.
    pending: Option<Cursor>,
    last_write: Option<tokio::time::Instant>,
    /// A write was refused (HA: the leader lease is lost): every later save fails with it.
    fenced: Option<String>,
}

struct Shared {
    buffer: std::sync::Mutex<Buffer>,
    /// Events were pushed (one waiter: the listener).
    arrived: Notify,
    /// Events were taken, or a rewind asked for (one waiter: the stream).
    taken: Notify,
    /// The end LSN of the last save, for the stream to confirm to the slot.
    confirm: watch::Sender<Lsn>,
    /// One save at a time, and what is waiting to be written.
    saving: tokio::sync::Mutex<Saving>,
}

impl Shared {
    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The stream, the event source the listener reads and the checkpoint store it saves to.
pub struct WalDirect {
    pool: PgPool,
    replication: ReplicationConfig,
    settings: WalSettings,
    consumer: String,
    checkpoints: PostgresCheckpointStore,
    shared: Arc<Shared>,
    streamed: Arc<AtomicU64>,
    /// Under HA: the group's leader lease and this instance's id; saves need the lease held.
    fence: Option<(String, String)>,
}

impl WalDirect {
    /// `database_url` is the replication connection's (its user needs the REPLICATION
    /// attribute); `listener_id` names the consumer (its checkpoint is [`consumer_id`]).
    pub fn new(
        pool: PgPool,
        database_url: &str,
        settings: WalSettings,
        listener_id: &str,
        instance: Option<String>,
    ) -> Result<Self, PgError> {
        validate_name("slot", &settings.slot).map_err(PgError::Invalid)?;
        validate_name("publication", &settings.publication).map_err(PgError::Invalid)?;
        let replication = replication_config(database_url, &settings)?;
        let mut checkpoints = PostgresCheckpointStore::new(pool.clone());
        if let Some(instance) = instance {
            checkpoints = checkpoints.with_instance(instance);
        }
        Ok(Self {
            replication,
            settings,
            consumer: consumer_id(listener_id),
            checkpoints,
            shared: Arc::new(Shared {
                buffer: std::sync::Mutex::default(),
                arrived: Notify::new(),
                taken: Notify::new(),
                confirm: watch::Sender::new(Lsn::ZERO),
                saving: tokio::sync::Mutex::default(),
            }),
            streamed: Arc::default(),
            fence: None,
            pool,
        })
    }

    /// Saves succeed only while `holder` holds the lease `lease` (HA: the group's leader lease),
    /// by the database clock; a refused save stops the listener with `ObserverError::Fenced`.
    #[must_use]
    pub fn with_fence(mut self, lease: impl Into<String>, holder: impl Into<String>) -> Self {
        self.fence = Some((lease.into(), holder.into()));
        self
    }

    /// Counts the changes taken from the stream in `counter` (shared by successive consumers
    /// of one process, for the metrics).
    #[must_use]
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.streamed = counter;
        self
    }

    /// The event source the listener reads and the checkpoint store it saves to (under
    /// [`WalDirect::consumer`]), for a listener of one's own; [`WalDirect::run`] must stream
    /// meanwhile.
    pub fn parts(self: &Arc<Self>) -> (Arc<dyn EventSource>, Arc<dyn CheckpointStore>) {
        (
            Arc::new(DirectSource(self.clone())),
            Arc::new(DirectCheckpoints(self.clone())),
        )
    }

    /// Streams until `shutdown` turns true, reconnecting after errors (and restarting from the
    /// last save when the listener re-reads).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        reconnecting(&self.settings.slot, "WAL stream", shutdown, |stop| {
            self.session(stop)
        })
        .await;
    }

    /// Where a session starts: the last save (read from the checkpoint row the first time), or
    /// further on where the relay of the same slot copied into the change log (what it copied
    /// the change-log listener delivers). Also skips the first changes of a transaction the
    /// relay copied in part.
    async fn start(&self) -> Result<(Saved, Option<(Lsn, u64)>), PgError> {
        let StartRow {
            id,
            lsn,
            relay_done,
            partial_lsn,
            partial_changes,
        } = sqlx::query_as(
            "SELECT c.cursor_id AS id, c.wal_lsn::text AS lsn, p.commit_lsn::text AS relay_done,
                    p.partial_lsn::text AS partial_lsn, p.partial_changes
               FROM (SELECT) AS one
               LEFT JOIN observer_checkpoints c ON c.listener_id = $1
               LEFT JOIN observer_wal_progress p ON p.slot_name = $2",
        )
        .bind(&self.consumer)
        .bind(&self.settings.slot)
        .fetch_one(&self.pool)
        .await?;
        let remembered = self.shared.buffer().saved;
        let saved = match remembered {
            Some(s) => s,
            None => Saved {
                id: id.unwrap_or(DIRECT_ID_BASE).max(DIRECT_ID_BASE),
                lsn: lsn
                    .as_deref()
                    .map(parse_lsn)
                    .transpose()?
                    .unwrap_or(Lsn::ZERO),
            },
        };
        let relay_done = relay_done
            .as_deref()
            .map(parse_lsn)
            .transpose()?
            .unwrap_or(Lsn::ZERO);
        let start = Saved {
            id: saved.id,
            lsn: saved.lsn.max(relay_done),
        };
        let partial = match partial_lsn.as_deref().map(parse_lsn).transpose()? {
            Some(p) if p >= start.lsn => {
                Some((p, u64::try_from(partial_changes.unwrap_or(0)).unwrap_or(0)))
            }
            _ => None,
        };
        let mut buffer = self.shared.buffer();
        *buffer = Buffer {
            saved: Some(start),
            ..Buffer::default()
        };
        Ok((start, partial))
    }

    /// One replication connection. `Ok(true)`: shutdown; `Ok(false)`: restart from the last
    /// save (a rewind).
    async fn session(&self, mut shutdown: watch::Receiver<bool>) -> Result<bool, PgError> {
        slot::ensure_slot(&self.pool, &self.settings.slot).await?;
        let (start, partial) = self.start().await?;
        let time_zone: String = sqlx::query_scalar("SHOW TimeZone")
            .fetch_one(&self.pool)
            .await?;
        let config = self
            .replication
            .clone()
            .with_start_lsn(start.lsn)
            .with_status_interval(STATUS_INTERVAL)
            .with_options(render::session_options(&time_zone));
        let mut client = ReplicationClient::connect(config).await.map_err(wire)?;
        tracing::info!(slot = %self.settings.slot, publication = %self.settings.publication,
            from = %start.lsn, "WAL stream delivering directly");
        // When a saved LSN was last handed to the client (it reports it to the server at most
        // once per status interval).
        let mut confirmed_at: Option<tokio::time::Instant> = None;
        let mut confirmed = self.shared.confirm.subscribe();
        confirmed.mark_changed();

        let mut stream = Stream {
            captures: load_captures(&self.pool).await?,
            rels: HashMap::new(),
            next: start.id,
            tx: None,
            xid: 0,
            skip: 0,
            position: 0,
            partial,
            done: start.lsn,
            unannounced: 0,
        };
        // Events taken from the client, against the events its worker has queued: the same
        // count means nothing more is waiting.
        let metrics = client.metrics();
        let mut received: u64 = 0;
        loop {
            let Some(room) = self.room() else {
                client.stop();
                return Ok(false);
            };
            let event = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    // The last save (a clean stop writes one just before) reaches the server
                    // before the stream ends, so a restart does not stream it again.
                    if confirmed.has_changed().unwrap_or(false) {
                        client.update_applied_lsn(*confirmed.borrow_and_update());
                        confirmed_at = Some(tokio::time::Instant::now());
                    }
                    if let Some(at) = confirmed_at {
                        tokio::time::sleep_until(at + STATUS_INTERVAL + Duration::from_millis(50)).await;
                    }
                    client.stop();
                    return Ok(true);
                }
                _ = confirmed.changed() => {
                    let lsn = *confirmed.borrow_and_update();
                    if !lsn.is_zero() {
                        client.update_applied_lsn(lsn);
                        confirmed_at = Some(tokio::time::Instant::now());
                    }
                    continue;
                }
                // Events taken (room again), or a rewind asked for.
                () = self.shared.taken.notified() => continue,
                event = client.recv(), if room => event.map_err(wire)?,
            };
            // This event, then those already waiting (up to `TAKE_RUN`), without a select
            // each: the worker has queued more than was taken, so `recv` returns at once.
            let mut event = event;
            let run_end = received + TAKE_RUN;
            loop {
                let Some(e) = event else {
                    return Err(PgError::Invalid(
                        "the server ended the replication stream".into(),
                    ));
                };
                received += 1;
                if self.on_event(e, &mut stream, &client).await? {
                    return Ok(true);
                }
                let waiting = metrics.events_forwarded() > received;
                if stream.unannounced > 0 && (!waiting || stream.unannounced >= ANNOUNCE_EVERY) {
                    stream.unannounced = 0;
                    self.shared.arrived.notify_one();
                }
                if !waiting || received >= run_end || self.room() != Some(true) {
                    break;
                }
                event = client.recv().await.map_err(wire)?;
            }
        }
    }

    /// Whether the buffer takes more events; `None` when a rewind is asked for.
    fn room(&self) -> Option<bool> {
        let buffer = self.shared.buffer();
        (!buffer.rewind).then(|| buffer.items.len() < MAX_BUFFERED)
    }

    /// Handles one event of the stream; true when the stream stopped.
    async fn on_event(
        &self,
        event: ReplicationEvent,
        stream: &mut Stream,
        client: &ReplicationClient,
    ) -> Result<bool, PgError> {
        match event {
            ReplicationEvent::Begin {
                commit_time_micros,
                final_lsn,
                xid,
            } => stream.begin(pg_time(commit_time_micros), final_lsn, xid),
            ReplicationEvent::XLogData { data, .. } => {
                apply(
                    &self.pool,
                    "WAL stream",
                    &data,
                    &mut stream.rels,
                    &mut stream.captures,
                    stream.tx.as_mut(),
                )
                .await?;
                if stream
                    .tx
                    .as_ref()
                    .is_some_and(|t| t.changes.len() >= CONVERT_EVERY)
                {
                    self.hand_on(stream, None).await?;
                }
            }
            ReplicationEvent::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == CONTEXT_MESSAGE_PREFIX => {
                if let Some(tx) = stream.tx.as_mut() {
                    apply_context(tx, &content);
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.hand_on(stream, Some(end_lsn)).await?;
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Everything committed before `wal_end` has been sent. With no transaction
                // open here and every event pushed saved, confirming it lets the server free
                // WAL that held no captured change (nothing after the save is numbered yet).
                let idle = stream.tx.is_none() && {
                    let buffer = self.shared.buffer();
                    buffer.bounds.is_empty() && buffer.saved.is_some_and(|s| s.id >= stream.next)
                };
                if idle && !wal_end.is_zero() && wal_end > stream.done {
                    client.update_applied_lsn(wal_end);
                }
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(true),
            ReplicationEvent::Message { .. } => {}
        }
        Ok(false)
    }

    /// Converts the changes of the open transaction gathered so far into events and pushes
    /// them; with `end`, the transaction committed there and its bound is pushed too.
    async fn hand_on(&self, stream: &mut Stream, end: Option<Lsn>) -> Result<(), PgError> {
        let Some(tx) = stream.tx.as_mut() else {
            return Ok(());
        };
        let changes = std::mem::take(&mut tx.changes);
        let commit_time = tx.commit_time;
        let skipped = tx.final_lsn < stream.done;
        let mut kept = Vec::with_capacity(changes.len());
        for change in changes {
            let position = stream.position;
            stream.position += 1;
            if skipped || position < stream.skip || change.rel.capture.is_none() {
                continue;
            }
            kept.push(change);
        }
        let items = self.convert(kept, stream, commit_time).await?;
        let pushed = items.len() as u64;
        {
            let mut buffer = self.shared.buffer();
            buffer.items.extend(items);
            if let Some(end) = end.filter(|_| !skipped) {
                // The last event numbered (pushed above, or before).
                let id = stream.next;
                let saved = buffer.saved.map_or(i64::MIN, |s| s.id);
                match buffer.bounds.back_mut() {
                    // No event since the last bound: it covers this transaction too.
                    Some(last) if last.id == id => last.lsn = end,
                    // Every event saved and none since: the keep-alives confirm past it.
                    None if saved >= id => {}
                    _ => buffer.bounds.push_back(Saved { id, lsn: end }),
                }
            }
        }
        if end.is_some() {
            stream.tx = None;
        }
        self.streamed.fetch_add(pushed, Ordering::Relaxed);
        // Announced to the listener by the session loop, once nothing more is waiting.
        stream.unannounced += usize::try_from(pushed).unwrap_or(usize::MAX);
        Ok(())
    }

    /// The events of `changes` (captured, in order), numbered on from `stream.next`; the row
    /// images move into the events. Tables the relay does not render itself are read into their
    /// row types on the server (a run per table); when that fails (a table altered since), their
    /// text values are kept and the problem recorded in `observer_capture_errors`.
    async fn convert(
        &self,
        changes: Vec<Change>,
        stream: &mut Stream,
        commit_time: DateTime<Utc>,
    ) -> Result<Vec<SourceItem>, PgError> {
        let mut items = Vec::with_capacity(changes.len());
        let mut changes = changes.into_iter().peekable();
        while let Some(first) = changes.next() {
            let rel = first.rel.clone();
            let mut run = vec![first];
            while let Some(c) = changes.next_if(|c| Arc::ptr_eq(&c.rel, &rel)) {
                run.push(c);
            }
            let first_id = stream.next + 1;
            let ids = first_id..;
            stream.next = ids
                .clone()
                .zip(&run)
                .last()
                .map_or(stream.next, |(id, _)| id);
            let unfit = ids.clone().zip(&run).filter(|(_, c)| !c.unfit.is_empty());
            record_unfit(&self.pool, &rel, "WAL stream", unfit).await?;
            // What the relay's insert does on the server, so that the images are `to_jsonb`'s.
            if !rel.exact {
                self.server_images(&rel, &mut run, Some(&rel.type_name))
                    .await?;
            } else if rel.holds_json() {
                self.server_images(&rel, &mut run, None).await?;
            }
            let Some(capture) = &rel.capture else {
                continue;
            };
            for (id, change) in ids.zip(run) {
                items.push(change_row::decode_stream(change_row::StreamChange {
                    id,
                    txid: i64::from(stream.xid),
                    entity_type: &capture.entity,
                    id_column: &capture.id_column,
                    tenant_column: capture.tenant_column.as_deref(),
                    operation: change.operation,
                    tenant: change.context.tenant.as_deref(),
                    user: change.context.user.as_deref(),
                    before: change.before,
                    after: change.after,
                    created_at: commit_time,
                }));
            }
        }
        Ok(items)
    }

    /// Replaces the row images of a run of one table's changes with what the change log would
    /// store (see [`image_sql`]: with `type_name`, `to_jsonb` of the table's row type), or
    /// keeps their text values when the server cannot read them.
    async fn server_images(
        &self,
        rel: &Rel,
        run: &mut [Change],
        type_name: Option<&str>,
    ) -> Result<(), PgError> {
        let sql = format!(
            "SELECT ({})::text, ({})::text
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(b, a, n)
              ORDER BY u.n",
            image_sql(type_name, "b"),
            image_sql(type_name, "a"),
        );
        let before: Vec<Option<&str>> = run.iter().map(|c| c.before.as_deref()).collect();
        let after: Vec<Option<&str>> = run.iter().map(|c| c.after.as_deref()).collect();
        let converted = sqlx::query_as::<_, (Option<String>, Option<String>)>(AssertSqlSafe(sql))
            .bind(&before)
            .bind(&after)
            .fetch_all(&self.pool)
            .await;
        match converted {
            Ok(images) => {
                for (change, (before, after)) in run.iter_mut().zip(images) {
                    change.before = before;
                    change.after = after;
                }
                Ok(())
            }
            Err(e @ sqlx::Error::Database(_)) => {
                record_kept_as_text(&self.pool, rel, "WAL stream", run.len(), &e).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Saves `cursor` (the last event the listener completed, with every one before it): the
    /// last transaction all of whose events are done, in one statement with its end LSN (and
    /// the slot's relay progress row, so a relay started later does not copy it again); then
    /// confirms that LSN to the slot.
    async fn save(&self, cursor: Cursor, processed: u64) -> Result<(), PgError> {
        let mut saving = self.shared.saving.lock().await;
        if let Some(fenced) = &saving.fenced {
            return Err(PgError::Fenced(fenced.clone()));
        }
        saving.carried += processed;
        saving.pending = Some(saving.pending.map_or(cursor, |c| c.max(cursor)));
        if saving.last_write.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            // Written by the next save after the interval, or by [`WalDirect::flush`].
            return Ok(());
        }
        self.write(&mut saving).await
    }

    /// Writes the save waiting, if any (a listener's last save, or one an idle stream holds).
    pub async fn flush(&self) -> Result<(), PgError> {
        let mut saving = self.shared.saving.lock().await;
        if let Some(fenced) = &saving.fenced {
            return Err(PgError::Fenced(fenced.clone()));
        }
        if saving.pending.is_none() {
            return Ok(());
        }
        self.write(&mut saving).await
    }

    /// Writes `saving.pending`: the last transaction all of whose events are done at or before
    /// it, in one statement with its end LSN; then confirms that LSN to the slot.
    async fn write(&self, saving: &mut Saving) -> Result<(), PgError> {
        let Some(cursor) = saving.pending.take() else {
            return Ok(());
        };
        let result = self.write_done(saving, cursor).await;
        if result.is_err() && saving.fenced.is_none() {
            // Not written: the next save or flush tries again.
            saving.pending = Some(saving.pending.map_or(cursor, |c| c.max(cursor)));
        }
        result
    }

    async fn write_done(&self, saving: &mut Saving, cursor: Cursor) -> Result<(), PgError> {
        let done = {
            let buffer = self.shared.buffer();
            buffer
                .bounds
                .iter()
                .take_while(|b| b.id <= cursor.id)
                .last()
                .copied()
        };
        let Some(done) = done else {
            return Ok(());
        };
        let carried = saving.carried;
        let count = i64::try_from(carried).unwrap_or(i64::MAX);
        let (sql, lease, holder) = match &self.fence {
            Some((lease, holder)) => (SAVE_FENCED, Some(lease.as_str()), Some(holder.as_str())),
            None => (SAVE, None, None),
        };
        let saved: bool = sqlx::query_scalar(sql)
            .bind(&self.consumer)
            .bind(done.id)
            .bind(done.lsn.to_pg_string())
            .bind(count)
            .bind(i32::try_from(carried).unwrap_or(i32::MAX))
            .bind(self.checkpoints.instance())
            .bind(&self.settings.slot)
            .bind(lease)
            .bind(holder)
            .fetch_one(&self.pool)
            .await?;
        if !saved {
            let error = format!(
                "checkpoint of `{}` not saved: this instance ({}) no longer holds the group's \
                 leader lease `{}`; stopping the WAL stream",
                self.consumer,
                holder.unwrap_or(""),
                lease.unwrap_or("")
            );
            saving.fenced = Some(error.clone());
            return Err(PgError::Fenced(error));
        }
        saving.carried = 0;
        saving.last_write = Some(tokio::time::Instant::now());
        {
            let mut buffer = self.shared.buffer();
            while buffer
                .bounds
                .front()
                .is_some_and(|b| b.id <= done.id && b.lsn <= done.lsn)
            {
                buffer.bounds.pop_front();
            }
            buffer.saved = Some(done);
        }
        self.shared.confirm.send_replace(done.lsn);
        Ok(())
    }
}

/// What a session starts from (see [`WalDirect::start`]).
#[derive(sqlx::FromRow)]
struct StartRow {
    id: Option<i64>,
    lsn: Option<String>,
    relay_done: Option<String>,
    partial_lsn: Option<String>,
    partial_changes: Option<i64>,
}

/// The position in the stream of a session.
struct Stream {
    captures: HashMap<(String, String), Capture>,
    rels: HashMap<u32, Arc<Rel>>,
    /// The id of the last event numbered.
    next: i64,
    tx: Option<Tx>,
    xid: u32,
    /// The open transaction's changes to skip (the relay copied them).
    skip: u64,
    /// The position in the open transaction of its next change.
    position: u64,
    /// A transaction the relay copied the first changes of.
    partial: Option<(Lsn, u64)>,
    /// Transactions ending at or before this were delivered.
    done: Lsn,
    /// Events pushed since the listener was last told.
    unannounced: usize,
}

impl Stream {
    fn begin(&mut self, commit_time: DateTime<Utc>, final_lsn: Lsn, xid: u32) {
        self.tx = Some(Tx {
            commit_time,
            context: Arc::default(),
            changes: Vec::new(),
            first: 0,
            final_lsn,
            end_lsn: Lsn::ZERO,
        });
        self.xid = xid;
        self.position = 0;
        self.skip = match self.partial {
            Some((lsn, n)) if lsn == final_lsn => n,
            _ => 0,
        };
    }
}

/// The direct consumer's save: its checkpoint row (id and LSN together), and the relay
/// progress row of the slot moved on to the same LSN; both only when `lease` has a row (the
/// statement's first common table expression). True when it saved.
macro_rules! save_sql {
    ($lease:literal) => {
        concat!(
            "WITH lease AS (",
            $lease,
            "),
relay AS (
    UPDATE observer_wal_progress
       SET commit_lsn = $3::text::pg_lsn, partial_lsn = NULL, partial_changes = 0,
           updated_at = now()
     WHERE slot_name = $7 AND commit_lsn < $3::text::pg_lsn AND EXISTS (SELECT FROM lease)
 RETURNING 1),
saved AS (
    INSERT INTO observer_checkpoints AS c
           (listener_id, cursor_id, wal_lsn, last_processed_id, last_processed_at, event_count,
            batch_size, consecutive_errors, last_error, updated_by, lease_epoch, updated_at)
    SELECT $1, $2, $3::text::pg_lsn, $2, now(), $4, $5, 0, NULL, $6, NULL, now()
     WHERE EXISTS (SELECT FROM lease)
    ON CONFLICT (listener_id) DO UPDATE SET
           cursor_id = EXCLUDED.cursor_id,
           wal_lsn = EXCLUDED.wal_lsn,
           last_processed_id = EXCLUDED.cursor_id,
           last_processed_at = now(),
           event_count = c.event_count + EXCLUDED.event_count,
           batch_size = EXCLUDED.batch_size,
           consecutive_errors = 0,
           last_error = NULL,
           updated_by = EXCLUDED.updated_by,
           lease_epoch = NULL,
           updated_at = now()
    RETURNING 1)
SELECT EXISTS (SELECT FROM saved)"
        )
    };
}

/// A save with no fence (`$8` and `$9` are NULL).
const SAVE: &str = save_sql!("SELECT WHERE $8::text IS NULL AND $9::text IS NULL");

/// A save under HA: only while the instance `$9` holds the group's leader lease `$8` by the
/// database clock (`FOR SHARE` keeps a takeover from committing between the check and the
/// write).
const SAVE_FENCED: &str = save_sql!(
    "SELECT FROM observer_leases WHERE name = $8 AND holder = $9 AND expires_at > now() FOR SHARE"
);

/// The listener's view of the stream.
struct DirectSource(Arc<WalDirect>);

#[async_trait]
impl EventSource for DirectSource {
    async fn fetch(&self, after: Cursor, limit: usize) -> CoreResult<Vec<SourceItem>> {
        let shared = &self.0.shared;
        let (items, full) = {
            let mut buffer = shared.buffer();
            if buffer.handed.is_some_and(|h| after.id < h) {
                // Events handed out are asked for again: they come again from the stream.
                buffer.rewind = true;
                buffer.handed = None;
                buffer.items.clear();
                drop(buffer);
                shared.taken.notify_one();
                return Ok(Vec::new());
            }
            // The stream waits for room only when the buffer is full; it is woken only then.
            let full = buffer.items.len() >= MAX_BUFFERED;
            while buffer.items.front().is_some_and(|i| i.cursor() <= after) {
                buffer.items.pop_front();
            }
            let n = limit.min(buffer.items.len());
            let items: Vec<SourceItem> = buffer.items.drain(..n).collect();
            if let Some(last) = items.last() {
                buffer.handed = Some(last.cursor().id);
            }
            (items, full)
        };
        if full {
            shared.taken.notify_one();
        }
        Ok(items)
    }

    async fn wait_for_changes(&self, timeout: Duration) -> bool {
        let shared = &self.0.shared;
        if !shared.buffer().items.is_empty() {
            return true;
        }
        tokio::time::timeout(timeout, shared.arrived.notified())
            .await
            .is_ok()
    }
}

/// The checkpoints of the direct consumer: saves go through [`WalDirect::save`], the rest to
/// the change log's store (same table).
struct DirectCheckpoints(Arc<WalDirect>);

#[async_trait]
impl CheckpointStore for DirectCheckpoints {
    async fn load(&self, listener_id: &str) -> CoreResult<Option<Checkpoint>> {
        self.0.checkpoints.load(listener_id).await
    }

    async fn save(&self, listener_id: &str, cursor: Cursor, processed: u64) -> CoreResult<()> {
        if listener_id != self.0.consumer {
            return Err(PgError::Invalid(format!(
                "the WAL stream's checkpoint store saves only `{}`, not `{listener_id}`",
                self.0.consumer
            ))
            .into());
        }
        self.0.save(cursor, processed).await.map_err(Into::into)
    }

    async fn compare_and_swap(
        &self,
        listener_id: &str,
        expected: Option<Cursor>,
        new: Cursor,
    ) -> CoreResult<bool> {
        self.0
            .checkpoints
            .compare_and_swap(listener_id, expected, new)
            .await
    }

    async fn record_save_error(&self, listener_id: &str, error: &str) -> CoreResult<()> {
        self.0
            .checkpoints
            .record_save_error(listener_id, error)
            .await
    }

    async fn delete(&self, listener_id: &str) -> CoreResult<bool> {
        self.0.checkpoints.delete(listener_id).await
    }

    async fn list(&self) -> CoreResult<Vec<Checkpoint>> {
        self.0.checkpoints.list().await
    }
}

/// Core's listener over the stream: runs the stream and the listener together.
pub struct WalDirectListener {
    direct: Arc<WalDirect>,
    inner: Listener,
}

impl WalDirectListener {
    /// `config.listener_id` is replaced by the direct consumer's id ([`consumer_id`]).
    pub fn new(
        direct: WalDirect,
        executor: Arc<ObserverExecutor>,
        config: &ListenerConfig,
    ) -> Self {
        let direct = Arc::new(direct);
        let config = ListenerConfig {
            listener_id: direct.consumer.clone(),
            ..config.clone()
        };
        let (source, checkpoints) = direct.parts();
        let inner = Listener::new(source, checkpoints, executor, config);
        Self { direct, inner }
    }

    /// Runs until `shutdown`: events in flight finish and the checkpoint is saved (and
    /// confirmed to the slot), then the stream stops.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> CoreResult<ListenerStats> {
        let (stream_stop, stream_rx) = watch::channel(false);
        let direct = self.direct.clone();
        let mut flusher_stop = stream_rx.clone();
        let stream = tokio::spawn(async move { direct.run(stream_rx).await });
        // Writes a save the listener left waiting (see [`SAVE_EVERY`]) once it is due.
        let direct = self.direct.clone();
        let flusher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SAVE_EVERY) => {}
                    // Stopped, or the listener's task is gone (aborted).
                    _ = flusher_stop.changed() => break,
                }
                if let Err(e) = direct.flush().await {
                    tracing::warn!(error = %e, "writing the WAL stream's checkpoint failed");
                }
            }
        });
        let mut result = self.inner.run(shutdown).await;
        if result.is_ok() {
            // The listener's last save may be waiting.
            if let Err(e) = self.direct.flush().await {
                result = Err(e.into());
            }
        }
        let _ = stream_stop.send(true);
        let _ = stream.await;
        let _ = flusher.await;
        result
    }
}
