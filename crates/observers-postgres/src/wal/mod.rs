//! The logical-replication source (`[source] kind = "wal"`): a relay that consumes a slot with
//! PostgreSQL's built-in `pgoutput` plugin and copies each committed transaction's row changes,
//! in commit order, into `observer_change_log`, from where the listeners deliver them exactly as
//! they deliver trigger-captured rows (same cursor, partitions, HA, replay and retention).
//!
//! Guarantees, in order of the steps:
//! - The writer's transaction does nothing extra: no trigger runs, the WAL it writes anyway is
//!   decoded by the server's walsender.
//! - Values become the JSON the trigger's `to_jsonb(NEW)` gives, digit for digit: rendered by
//!   the relay for the common built-in types ([`render`]), else on the server by the column
//!   types' own input functions (`to_jsonb(jsonb_populate_record(NULL::table, text values))`).
//! - One relay transaction writes a run of source transactions AND the end LSN of the last one
//!   into `observer_wal_progress`; only after it commits is that LSN confirmed to the slot. A
//!   crash before the commit re-reads the transactions from the slot; one after it skips what
//!   the progress row says is copied. Nothing is lost or copied twice. When the relay rendered
//!   every change and the progress row is as its own last write left it, the relay transaction
//!   is one statement that checks so under the row lock (else it writes nothing, and the relay
//!   writes again in steps, skipping what the row counts).
//! - One relay transaction is in flight at a time; the stream is read on while it commits, and
//!   what arrives meanwhile goes out in the next one, so transactions are written in order.
//! - A source transaction of more than `MAX_BATCH_ROWS` changes is copied in parts; each part
//!   records the transaction's commit LSN and how many of its changes are copied, and the slot
//!   is confirmed only after the last part. A restart skips what the parts copied.
//! - Only one connection can stream a slot at a time (PostgreSQL refuses a second), and the
//!   progress row is locked by each relay transaction: two instances never both copy.

pub mod direct;
pub mod pgoutput;
pub mod render;
pub mod slot;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::watch;

use crate::error::PgError;
use pgoutput::{Message, Relation, Value};
use render::Render;

/// The default slot and publication name.
pub const DEFAULT_SLOT: &str = "observers";
pub const DEFAULT_PUBLICATION: &str = "observers";

/// The prefix of `pg_logical_emit_message(true, 'observers', '{"tenant_id":..,"user_id":..}')`,
/// the WAL source's stand-in for the session settings the trigger reads.
pub const CONTEXT_MESSAGE_PREFIX: &str = "observers";

/// At most this many changes go into one relay transaction; a bigger source transaction is
/// copied in parts of this size (see [`WalRelay::write`]), so the relay never holds more of it in
/// memory and the listeners deliver its first parts while the rest is decoded.
const MAX_BATCH_ROWS: usize = 5_000;

/// Where the relay connects and what it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    pub slot: String,
    pub publication: String,
}

impl Default for WalSettings {
    fn default() -> Self {
        Self {
            slot: DEFAULT_SLOT.to_owned(),
            publication: DEFAULT_PUBLICATION.to_owned(),
        }
    }
}

/// Checks a slot or publication name (core's rule, shared with config validation).
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    observers_core::config::validate_replication_name(what, name)
}

/// How a captured table maps to events (from `observer_captures`).
#[derive(Debug, Clone)]
struct Capture {
    entity: String,
    id_column: String,
    tenant_column: Option<String>,
}

/// A relation as the stream described it, with what the relay needs to write its rows.
#[derive(Debug)]
struct Rel {
    relation: Relation,
    capture: Option<Capture>,
    /// The insert of a run of this table's changes with the values read into its row type, and
    /// the same keeping the text values (see [`insert_sql`]); built once per Relation message.
    insert_typed: String,
    insert_text: String,
    /// The table's row type, quoted (`schema.name`).
    type_name: String,
    /// How each column's value is written into the row image.
    renders: Vec<Render>,
    /// The relay renders every column as `to_jsonb` does (see [`render`]): the row images are
    /// final, and the server converts nothing. Else they hold the text values (json and jsonb
    /// as JSON) that the server reads into the table's row type.
    exact: bool,
}

impl Rel {
    /// `utf8`: the database's encoding is UTF-8 (see [`Render::JsonNarrow`]).
    fn new(
        relation: Relation,
        capture: Option<Capture>,
        type_name: &str,
        live_columns: i64,
        utf8: bool,
    ) -> Self {
        let exact = Render::all(&relation)
            .filter(|_| usize::try_from(live_columns) == Ok(relation.columns.len()));
        let renders = exact
            .clone()
            .unwrap_or_else(|| Render::for_server(&relation))
            .into_iter()
            .map(|r| r.in_encoding(utf8))
            .collect();
        Self {
            insert_typed: insert_sql(Some(type_name)),
            insert_text: insert_sql(None),
            type_name: type_name.to_owned(),
            exact: exact.is_some(),
            renders,
            relation,
            capture,
        }
    }

    /// Whether a column holds `json` (not `jsonb`): the relay writes its text as it is, which
    /// only a cast to jsonb brings to `to_jsonb`'s form.
    fn holds_json(&self) -> bool {
        self.renders
            .iter()
            .any(|r| matches!(r, Render::Json | Render::JsonNarrow))
    }

    /// A row image, and the `json` columns in it kept as strings (see [`render::row`]).
    fn image(&self, values: &[Value], old: Option<&[Value]>) -> (String, Vec<String>) {
        render::row(&self.relation, &self.renders, values, old)
    }
}

/// The tenant and user of the changes after an `observers` logical message in a transaction.
#[derive(Debug, Default)]
struct Context {
    tenant: Option<String>,
    user: Option<String>,
}

#[derive(Debug)]
struct Change {
    rel: Arc<Rel>,
    operation: &'static str,
    before: Option<String>,
    after: Option<String>,
    /// The `json` columns whose values jsonb cannot hold, kept as strings in the images (each
    /// such change gets a row in `observer_capture_errors`); empty for nearly every change.
    unfit: Vec<String>,
    context: Arc<Context>,
}

#[derive(Debug)]
struct Tx {
    commit_time: DateTime<Utc>,
    context: Arc<Context>,
    /// The changes not written yet; earlier ones went out as parts.
    changes: Vec<Change>,
    /// The position in the transaction's stream of changes of `changes[0]`.
    first: u64,
    /// The commit record's LSN (the Begin message's final LSN): the transaction's identity.
    final_lsn: Lsn,
    /// The end of the commit record, once the Commit message came (zero before).
    end_lsn: Lsn,
}

impl Tx {
    /// The stream position after the changes held.
    fn next(&self) -> u64 {
        self.first + self.changes.len() as u64
    }

    /// The changes held so far, as a part to write; this transaction goes on after them.
    fn take_part(&mut self) -> Tx {
        let part = Tx {
            commit_time: self.commit_time,
            context: self.context.clone(),
            changes: std::mem::take(&mut self.changes),
            first: self.first,
            final_lsn: self.final_lsn,
            end_lsn: self.end_lsn,
        };
        self.first = part.next();
        part
    }
}

/// What the relay holds between writes: the transaction being received, and finished ones not
/// written yet.
#[derive(Default)]
struct Held {
    current: Option<Tx>,
    pending: Vec<Tx>,
    /// The changes in `pending`.
    rows: usize,
}

impl Held {
    fn begin(&mut self, commit_time: DateTime<Utc>, final_lsn: Lsn) {
        self.current = Some(Tx {
            commit_time,
            context: Arc::default(),
            changes: Vec::new(),
            first: 0,
            final_lsn,
            end_lsn: Lsn::from_u64(0),
        });
    }

    fn commit(&mut self, end_lsn: Lsn) {
        if let Some(mut tx) = self.current.take() {
            tx.end_lsn = end_lsn;
            self.rows += tx.changes.len();
            self.pending.push(tx);
        }
    }

    /// The unfinished transaction's changes as a part, once there are enough.
    fn part_due(&mut self) -> Option<Tx> {
        let tx = self.current.as_mut()?;
        (tx.changes.len() >= MAX_BATCH_ROWS).then(|| tx.take_part())
    }

    fn take_pending(&mut self) -> Vec<Tx> {
        self.rows = 0;
        std::mem::take(&mut self.pending)
    }

    fn is_empty(&self) -> bool {
        self.current.is_none() && self.pending.is_empty()
    }
}

/// A relay transaction being written: the end LSN to confirm once it committed.
type Write<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<Lsn>, PgError>> + Send + 'a>>;

/// The write in flight's outcome; never resolves when there is none.
async fn finish(writing: &mut Option<Write<'_>>) -> Result<Option<Lsn>, PgError> {
    match writing {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Confirms to the slot what a committed relay transaction copied.
fn confirm(client: &ReplicationClient, end: Option<Lsn>) {
    if let Some(lsn) = end {
        client.update_applied_lsn(lsn);
    }
}

/// What the progress row says is copied: every transaction ending at or before `done`, and the
/// first `partial_changes` changes of the one that commits at `partial_lsn`.
#[derive(Debug, Clone, Copy)]
struct Progress {
    done: Lsn,
    partial_lsn: Option<Lsn>,
    partial_changes: u64,
}

impl Progress {
    /// The progress after also copying up to the finished transaction ending at `last_end` and,
    /// of the unfinished one committing at `part.0`, its changes before position `part.1`. Never
    /// moves back, and keeps a later transaction's parts that another relay wrote meanwhile.
    fn after(self, last_end: Option<Lsn>, part: Option<(Lsn, u64)>) -> Progress {
        let done = last_end.map_or(self.done, |end| end.max(self.done));
        let (partial_lsn, partial_changes) = match part {
            Some((lsn, next)) if lsn >= done => {
                let before = if self.partial_lsn == Some(lsn) {
                    self.partial_changes
                } else {
                    0
                };
                (Some(lsn), next.max(before))
            }
            _ => match self.partial_lsn {
                // Parts of a later transaction, written by a relay that streamed while this
                // one was paused: kept, or a restart would copy them again.
                Some(lsn) if lsn >= done => (Some(lsn), self.partial_changes),
                _ => (None, 0),
            },
        };
        Progress {
            done,
            partial_lsn,
            partial_changes,
        }
    }

    /// How many of `tx`'s held changes are copied already.
    fn copied(&self, tx: &Tx) -> usize {
        if tx.final_lsn < self.done {
            return tx.changes.len();
        }
        if self.partial_lsn == Some(tx.final_lsn) {
            let n = self.partial_changes.saturating_sub(tx.first);
            return usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(tx.changes.len());
        }
        0
    }
}

/// A session that lasted this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// The relay. `run` streams until shutdown, reconnecting after errors.
pub struct WalRelay {
    pool: PgPool,
    replication: ReplicationConfig,
    settings: WalSettings,
    relayed: Arc<AtomicU64>,
    /// What the progress row says after this relay's last write, when this relay wrote it
    /// (unknown at the start of a session and after a failed write): a write that finds it so
    /// can go out as one statement (see [`WalRelay::write_fast`]).
    expected: std::sync::Mutex<Option<Progress>>,
    /// The connection one-statement writes go out on.
    conn: crate::Kept,
    /// Wakes the waiting listeners of this process on the same database after each write.
    written: Arc<tokio::sync::Notify>,
}

impl WalRelay {
    /// `database_url` is the `postgres://` URL the replication connection uses (its user needs
    /// the REPLICATION attribute); `pool` writes the change log.
    pub fn new(pool: PgPool, database_url: &str, settings: WalSettings) -> Result<Self, PgError> {
        validate_name("slot", &settings.slot).map_err(PgError::Invalid)?;
        validate_name("publication", &settings.publication).map_err(PgError::Invalid)?;
        let replication = replication_config(database_url, &settings)?;
        Ok(Self {
            replication,
            settings,
            relayed: Arc::default(),
            expected: std::sync::Mutex::default(),
            conn: crate::Kept::default(),
            written: crate::source::written_signal(&pool),
            pool,
        })
    }

    /// Changes written into the change log so far (for the metrics).
    pub fn relayed_changes(&self) -> Arc<AtomicU64> {
        self.relayed.clone()
    }

    /// Streams until `shutdown` turns true. Errors are logged and retried with backoff (a slot
    /// streamed by another instance is waited for quietly).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        reconnecting(
            &self.settings.slot,
            "WAL relay",
            shutdown,
            |stop| async move { self.session(stop).await.map(|()| true) },
        )
        .await;
    }

    /// One replication connection, from the progress row's LSN.
    async fn session(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), PgError> {
        slot::ensure_slot(&self.pool, &self.settings.slot).await?;
        let start = self.progress().await?;
        self.set_expected(None);
        // Values print in the walsender as they would in the relay's own sessions, so the
        // relay's rendering (and the server's conversion) reads them as meant.
        let time_zone: String = sqlx::query_scalar("SHOW TimeZone")
            .fetch_one(&self.pool)
            .await?;
        let config = self
            .replication
            .clone()
            .with_start_lsn(start)
            .with_status_interval(Duration::from_millis(500))
            .with_options(render::session_options(&time_zone));
        let mut client = ReplicationClient::connect(config).await.map_err(wire)?;
        tracing::info!(slot = %self.settings.slot, publication = %self.settings.publication,
            from = %start, "WAL relay streaming");

        let mut captures = load_captures(&self.pool).await?;
        let mut rels: HashMap<u32, Arc<Rel>> = HashMap::new();
        let mut held = Held::default();
        // At most one relay transaction in flight: the stream is read on while it writes, and
        // what arrives meanwhile goes out in the next one, in order.
        let mut writing: Option<Write<'_>> = None;
        loop {
            if held.rows >= MAX_BATCH_ROWS {
                // Enough for a write: after the one in flight, before reading more.
                self.write_next(&client, &mut writing, held.take_pending(), None)
                    .await?;
                continue;
            }
            // With changes held and no write running, only what is already there is taken.
            let wait = held.pending.is_empty() || writing.is_some();
            let event = tokio::select! {
                biased;
                done = finish(&mut writing) => {
                    writing = None;
                    confirm(&client, done?);
                    continue;
                }
                event = async {
                    if wait {
                        Some(client.recv().await)
                    } else {
                        tokio::time::timeout(Duration::ZERO, client.recv()).await.ok()
                    }
                } => {
                    let Some(event) = event else {
                        // Nothing more is there yet (and no write runs): write what was gathered.
                        self.write_next(&client, &mut writing, held.take_pending(), None)
                            .await?;
                        continue;
                    };
                    event.map_err(wire)?
                }
                _ = shutdown.changed() => None,
            };
            let Some(event) = event else {
                // Shutdown (or the stream ended): write what is complete, then stop.
                self.finish_writes(&client, writing, held).await?;
                client.stop();
                return Ok(());
            };
            match event {
                ReplicationEvent::Begin {
                    commit_time_micros,
                    final_lsn,
                    ..
                } => held.begin(pg_time(commit_time_micros), final_lsn),
                ReplicationEvent::XLogData { data, .. } => {
                    apply(
                        &self.pool,
                        "WAL relay",
                        &data,
                        &mut rels,
                        &mut captures,
                        held.current.as_mut(),
                    )
                    .await?;
                    if let Some(part) = held.part_due() {
                        // A big source transaction: what came so far goes out as a part, after
                        // the write in flight.
                        self.write_next(&client, &mut writing, held.take_pending(), Some(part))
                            .await?;
                    }
                }
                ReplicationEvent::Message {
                    transactional: true,
                    prefix,
                    content,
                    ..
                } if prefix == CONTEXT_MESSAGE_PREFIX => {
                    if let Some(tx) = held.current.as_mut() {
                        apply_context(tx, &content);
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => held.commit(end_lsn),
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // Everything committed before `wal_end` has been sent; with nothing held
                    // here or being written, confirming it lets the server free WAL that held
                    // no captured change.
                    if held.is_empty() && writing.is_none() && !wal_end.is_zero() {
                        client.update_applied_lsn(wal_end);
                    }
                }
                ReplicationEvent::StoppedAt { .. } => {
                    return self.finish_writes(&client, writing, held).await;
                }
                ReplicationEvent::Message { .. } => {}
            }
        }
    }

    /// Starts the relay transaction of `pending` (and `part`) once the one in flight, if any,
    /// has committed and what it copied is confirmed: writes stay in commit order.
    async fn write_next<'a>(
        &'a self,
        client: &ReplicationClient,
        writing: &mut Option<Write<'a>>,
        pending: Vec<Tx>,
        part: Option<Tx>,
    ) -> Result<(), PgError> {
        if let Some(w) = writing.take() {
            confirm(client, w.await?);
        }
        *writing = Some(self.write_batch(pending, part));
        Ok(())
    }

    /// At the end of a session: the write in flight, then the finished transactions held.
    async fn finish_writes<'a>(
        &'a self,
        client: &ReplicationClient,
        mut writing: Option<Write<'a>>,
        mut held: Held,
    ) -> Result<(), PgError> {
        self.write_next(client, &mut writing, held.take_pending(), None)
            .await?;
        confirm(client, finish(&mut writing).await?);
        Ok(())
    }

    /// The end LSN of the last source transaction copied (creating the row at 0/0).
    async fn progress(&self) -> Result<Lsn, PgError> {
        let lsn: String = sqlx::query_scalar(
            "INSERT INTO observer_wal_progress (slot_name, commit_lsn) VALUES ($1, '0/0')
             ON CONFLICT (slot_name) DO UPDATE SET slot_name = EXCLUDED.slot_name
             RETURNING commit_lsn::text",
        )
        .bind(&self.settings.slot)
        .fetch_one(&self.pool)
        .await?;
        parse_lsn(&lsn)
    }

    /// One relay transaction of `pending` (whole source transactions, in commit order) and, with
    /// `part`, changes of the unfinished transaction gathered so far; resolves to the end LSN of
    /// the last finished transaction written, to confirm to the slot once it committed.
    fn write_batch(&self, pending: Vec<Tx>, part: Option<Tx>) -> Write<'_> {
        Box::pin(async move {
            if pending.is_empty() && part.is_none() {
                return Ok(None);
            }
            self.write_retrying(&pending, part.as_ref()).await?;
            // The listeners of this process read it now, not at their poller's next look.
            self.written.notify_waiters();
            Ok(pending.last().map(|t| t.end_lsn))
        })
    }

    /// The relay transaction of `pending` and `part`: one statement when this relay knows the
    /// progress row and renders every change itself (and none has a value jsonb cannot hold),
    /// else [`WalRelay::write`], again with
    /// `careful` when the server cannot convert the batch.
    async fn write_retrying(&self, pending: &[Tx], part: Option<&Tx>) -> Result<(), PgError> {
        let expected = *self
            .expected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(expected) = expected {
            let rows = unwritten(pending, part, &expected);
            if rows.iter().all(|(c, _)| c.rel.exact && c.unfit.is_empty()) {
                match self.write_fast(&rows, pending, part, expected).await {
                    Ok(true) => {
                        self.relayed.fetch_add(rows.len() as u64, Ordering::Relaxed);
                        return Ok(());
                    }
                    // The progress row is not as this relay left it (another relay wrote):
                    // the full write reads it under its lock and skips what it counts.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "one-statement relay write failed; retrying in steps");
                    }
                }
            }
        }
        self.set_expected(None);
        let written = match self.write(pending, part, false).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e,
                    "the WAL relay could not convert a batch with the tables' row types; \
                     writing it again table by table, keeping what fails as text");
                self.write(pending, part, true).await?
            }
        };
        self.relayed.fetch_add(written, Ordering::Relaxed);
        Ok(())
    }

    fn set_expected(&self, progress: Option<Progress>) {
        *self
            .expected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = progress;
    }

    /// The relay transaction as one statement, for rows the relay rendered itself: it locks the
    /// progress row, and only if it still says `copied` inserts the rows and moves it on (false
    /// when it does not: nothing was written).
    async fn write_fast(
        &self,
        rows: &[Row<'_>],
        pending: &[Tx],
        part: Option<&Tx>,
        copied: Progress,
    ) -> Result<bool, PgError> {
        let next = copied.after(
            pending.last().map(|t| t.end_lsn),
            part.map(|t| (t.final_lsn, t.next())),
        );
        let col = |f: &dyn Fn(&Change) -> Option<&str>| -> Vec<Option<&str>> {
            rows.iter().map(|r| f(r.0)).collect()
        };
        let query = sqlx::query_scalar(FAST_WRITE)
            .bind(&self.settings.slot)
            .bind(copied.done.to_pg_string())
            .bind(copied.partial_lsn.map(Lsn::to_pg_string))
            .bind(i64::try_from(copied.partial_changes).unwrap_or(i64::MAX))
            .bind(next.done.to_pg_string())
            .bind(next.partial_lsn.map(Lsn::to_pg_string))
            .bind(i64::try_from(next.partial_changes).unwrap_or(i64::MAX))
            .bind(col(&|c| c.rel.capture.as_ref().map(|k| k.entity.as_str())))
            .bind(col(&|c| {
                c.rel.capture.as_ref().map(|k| k.id_column.as_str())
            }))
            .bind(col(&|c| {
                c.rel
                    .capture
                    .as_ref()
                    .and_then(|k| k.tenant_column.as_deref())
            }))
            .bind(col(&|c| Some(c.operation)))
            .bind(col(&|c| c.before.as_deref()))
            .bind(col(&|c| c.after.as_deref()))
            .bind(col(&|c| c.context.tenant.as_deref()))
            .bind(col(&|c| c.context.user.as_deref()))
            .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let moved: bool = self
            .conn
            .run(&self.pool, async |conn| query.fetch_one(conn).await)
            .await?;
        self.set_expected(moved.then_some(next));
        Ok(moved)
    }

    /// One relay transaction: the changes of `pending` (finished source transactions) and of
    /// `part` (the unfinished one, when it is copied in parts) that the progress row, read
    /// under its row lock, does not already count; then the progress row. Runs the relay
    /// rendered itself are written as they are. With `careful`, each other table's run is tried
    /// in a savepoint and written with its text values (and a row in
    /// `observer_capture_errors`) when the server cannot read them into the table's current row
    /// type (a table dropped or altered since). Returns the number of changes written.
    async fn write(
        &self,
        pending: &[Tx],
        part: Option<&Tx>,
        careful: bool,
    ) -> Result<u64, PgError> {
        let mut db = self.pool.begin().await?;
        let (done, partial_lsn, partial_changes): (String, Option<String>, i64) = sqlx::query_as(
            "SELECT commit_lsn::text, partial_lsn::text, partial_changes
               FROM observer_wal_progress WHERE slot_name = $1 FOR UPDATE",
        )
        .bind(&self.settings.slot)
        .fetch_one(&mut *db)
        .await?;
        let copied = Progress {
            done: parse_lsn(&done)?,
            partial_lsn: partial_lsn.as_deref().map(parse_lsn).transpose()?,
            partial_changes: u64::try_from(partial_changes).unwrap_or(0),
        };
        let rows = unwritten(pending, part, &copied);
        let mut written = 0u64;
        for run in rows.chunk_by(|a, b| Arc::ptr_eq(&a.0.rel, &b.0.rel)) {
            let rel = &run[0].0.rel;
            let Some(capture) = &rel.capture else {
                continue;
            };
            if careful && !rel.exact {
                sqlx::query("SAVEPOINT relay_run").execute(&mut *db).await?;
                match insert_run(&mut db, rel, capture, run, true).await {
                    Ok(()) => {
                        sqlx::query("RELEASE SAVEPOINT relay_run")
                            .execute(&mut *db)
                            .await?;
                    }
                    Err(e) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT relay_run")
                            .execute(&mut *db)
                            .await?;
                        insert_run(&mut db, rel, capture, run, false).await?;
                        record_kept_as_text(&mut *db, rel, "WAL relay", run.len(), &e).await?;
                    }
                }
            } else {
                // Row images the relay rendered are final; others are read into the row type.
                insert_run(&mut db, rel, capture, run, !rel.exact).await?;
            }
            written += run.len() as u64;
        }
        let next = copied.after(
            pending.last().map(|t| t.end_lsn),
            part.map(|t| (t.final_lsn, t.next())),
        );
        sqlx::query(
            "UPDATE observer_wal_progress
                SET commit_lsn = $2::text::pg_lsn, partial_lsn = $3::text::pg_lsn,
                    partial_changes = $4, updated_at = now()
              WHERE slot_name = $1",
        )
        .bind(&self.settings.slot)
        .bind(next.done.to_pg_string())
        .bind(next.partial_lsn.map(Lsn::to_pg_string))
        .bind(i64::try_from(next.partial_changes).unwrap_or(i64::MAX))
        .execute(&mut *db)
        .await?;
        db.commit().await?;
        self.set_expected(Some(next));
        Ok(written)
    }
}

/// Runs `session` (given `shutdown`) until it returns `Ok(true)` or `shutdown` turns true;
/// `Ok(false)` starts the next session at once; an error is logged (a slot streamed by another
/// consumer is waited for quietly) and the next session starts after a backoff: 0.2 s, doubling
/// to 5 s while sessions keep failing, reset by one that lasted [`HEALTHY_SESSION`].
async fn reconnecting<F, Fut>(
    slot: &str,
    what: &str,
    mut shutdown: watch::Receiver<bool>,
    mut session: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, PgError>>,
{
    const FIRST: Duration = Duration::from_millis(200);
    let mut backoff = FIRST;
    let mut quiet = false;
    while !*shutdown.borrow() {
        let started = tokio::time::Instant::now();
        let result = session(shutdown.clone()).await;
        if started.elapsed() >= HEALTHY_SESSION {
            backoff = FIRST;
        }
        match result {
            Ok(true) => return,
            Ok(false) => {
                backoff = FIRST;
                continue;
            }
            Err(e) => {
                let text = e.to_string();
                if text.contains("is active for PID") {
                    if !quiet {
                        tracing::info!(%slot,
                            "the replication slot is streamed by another instance; waiting for it");
                        quiet = true;
                    }
                } else {
                    quiet = false;
                    tracing::warn!(%slot, error = %text, "the {what} stopped; reconnecting");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Decodes one `pgoutput` message (`who` names the consumer in errors) and applies it: a Relation is remembered (with its capture, read again
/// when the table is new here), a row change is pushed onto `tx`.
async fn apply(
    pool: &PgPool,
    who: &str,
    data: &[u8],
    rels: &mut HashMap<u32, Arc<Rel>>,
    captures: &mut HashMap<(String, String), Capture>,
    tx: Option<&mut Tx>,
) -> Result<(), PgError> {
    let message = pgoutput::decode(data).map_err(|e| PgError::Invalid(format!("{who}: {e}")))?;
    let rel_of = |rels: &HashMap<u32, Arc<Rel>>, id: u32| {
        rels.get(&id).cloned().ok_or_else(|| {
            PgError::Invalid(format!(
                "{who}: a change of relation {id} arrived before its Relation message"
            ))
        })
    };
    let push = |tx: Option<&mut Tx>,
                rel,
                operation,
                before: Option<(String, Vec<String>)>,
                after: Option<(String, Vec<String>)>| {
        if let Some(tx) = tx {
            let context = tx.context.clone();
            let (before, before_unfit) = before.unzip();
            let (after, after_unfit) = after.unzip();
            let mut unfit = before_unfit.unwrap_or_default();
            for column in after_unfit.into_iter().flatten() {
                if !unfit.contains(&column) {
                    unfit.push(column);
                }
            }
            tx.changes.push(Change {
                rel,
                operation,
                before,
                after,
                unfit,
                context,
            });
        }
    };
    match message {
        Message::Relation(relation) => {
            let key = (relation.schema.clone(), relation.name.clone());
            if !captures.contains_key(&key) {
                *captures = load_captures(pool).await?;
            }
            let capture = captures.get(&key).cloned();
            if capture.is_none() {
                tracing::warn!(table = %format!("{}.{}", key.0, key.1),
                    "the publication streams a table with no wal capture; its changes are skipped");
            }
            // The row type's name, and how many columns the table has now: one the stream
            // does not send (a generated column) is in `to_jsonb`'s output, so such a table
            // keeps the server's conversion.
            let (type_name, live_columns, utf8): (String, i64, bool) = sqlx::query_as(
                "SELECT format('%I.%I', $1, $2),
                        (SELECT count(*) FROM pg_catalog.pg_attribute
                          WHERE attrelid = pg_catalog.to_regclass(format('%I.%I', $1, $2))
                            AND attnum > 0 AND NOT attisdropped),
                        pg_catalog.current_setting('server_encoding') = 'UTF8'",
            )
            .bind(&relation.schema)
            .bind(&relation.name)
            .fetch_one(pool)
            .await?;
            rels.insert(
                relation.id,
                Arc::new(Rel::new(relation, capture, &type_name, live_columns, utf8)),
            );
        }
        Message::Insert { relation, new } => {
            let rel = rel_of(rels, relation)?;
            let after = Some(rel.image(&new, None));
            push(tx, rel, "insert", None, after);
        }
        Message::Update { relation, old, new } => {
            let rel = rel_of(rels, relation)?;
            let before = old
                .as_deref()
                .filter(|_| rel.relation.replica_identity == b'f')
                .map(|o| rel.image(o, None));
            let after = Some(rel.image(&new, old.as_deref()));
            push(tx, rel, "update", before, after);
        }
        Message::Delete { relation, old } => {
            let rel = rel_of(rels, relation)?;
            let before = Some(rel.image(&old, None));
            push(tx, rel, "delete", before, None);
        }
        Message::Truncate { relations } => {
            if let Some(tx) = tx {
                for id in relations {
                    let rel = rel_of(rels, id)?;
                    push(Some(&mut *tx), rel, "truncate", None, None);
                }
            }
        }
        Message::Other(_) => {}
    }
    Ok(())
}

/// A change and its transaction's commit time.
type Row<'a> = (&'a Change, DateTime<Utc>);

/// The changes of captured tables in `pending` and `part` that `copied` does not count, in order.
fn unwritten<'a>(pending: &'a [Tx], part: Option<&'a Tx>, copied: &Progress) -> Vec<Row<'a>> {
    pending
        .iter()
        .chain(part)
        .flat_map(|t| {
            t.changes[copied.copied(t)..]
                .iter()
                .map(move |c| (c, t.commit_time))
        })
        .filter(|(c, _)| c.rel.capture.is_some())
        .collect()
}

/// A relay transaction in one statement (rows rendered by the relay, so only cast to jsonb):
/// the progress row is locked and must still say `$2..$4`; then the rows go into the change log
/// in order (ids follow `ORDER BY x.n`) and the progress row says `$5..$7` (a data-modifying
/// `WITH` runs whether or not it is read). True when it did.
const FAST_WRITE: &str = "
WITH p AS (
    SELECT FROM observer_wal_progress
     WHERE slot_name = $1 AND commit_lsn = $2::text::pg_lsn
       AND partial_lsn IS NOT DISTINCT FROM $3::text::pg_lsn AND partial_changes = $4
       FOR UPDATE),
moved AS (
    UPDATE observer_wal_progress
       SET commit_lsn = $5::text::pg_lsn, partial_lsn = $6::text::pg_lsn,
           partial_changes = $7, updated_at = now()
     WHERE slot_name = $1 AND EXISTS (SELECT FROM p)
 RETURNING 1),
copied AS (
    INSERT INTO observer_change_log
         (entity_type, entity_id, operation, tenant_id, user_id, before, after, created_at)
    SELECT x.entity, coalesce(coalesce(x.a, x.b) ->> x.id_column, ''), x.op,
           coalesce(coalesce(x.a, x.b) ->> x.tenant_column, x.tenant), x.usr, x.b, x.a, x.at
      FROM (SELECT u.n, u.entity, u.id_column, u.tenant_column, u.op, u.tenant, u.usr, u.at,
                   u.b::jsonb AS b, u.a::jsonb AS a
              FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                          $13::text[], $14::text[], $15::text[], $16::timestamptz[])
                   WITH ORDINALITY AS u(entity, id_column, tenant_column, op, b, a, tenant, usr, at, n)
             WHERE EXISTS (SELECT FROM p)) x
     ORDER BY x.n
 RETURNING 1)
SELECT EXISTS (SELECT FROM moved)";

/// The insert of a run of changes to one table, in order (ids follow `ORDER BY x.n`). With the
/// table's quoted row type, the server reads the values into it and renders them with
/// `to_jsonb`; without, the text values are kept.
fn insert_sql(type_name: Option<&str>) -> String {
    let convert = |col: &str| image_sql(type_name, col);
    format!(
        "INSERT INTO observer_change_log
             (entity_type, entity_id, operation, tenant_id, user_id, before, after, created_at)
         SELECT $1, coalesce(coalesce(x.a, x.b) ->> $2, ''), x.op,
                coalesce(coalesce(x.a, x.b) ->> $3, x.tenant), x.usr, x.b, x.a, x.at
           FROM (SELECT u.n, u.op, u.tenant, u.usr, u.at, {} AS b, {} AS a
                   FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                               $9::timestamptz[])
                        WITH ORDINALITY AS u(op, b, a, tenant, usr, at, n)) x
          ORDER BY x.n",
        convert("b"),
        convert("a"),
    )
}

/// The row image `u.{col}` (or NULL) as the change log stores it: with the table's row type,
/// its text values read into it by the columns' own input functions and rendered by `to_jsonb`;
/// without, cast to jsonb as it is (which also gives the `json` values in it jsonb's form:
/// keys sorted and deduplicated, numbers as numeric prints them).
fn image_sql(type_name: Option<&str>, col: &str) -> String {
    match type_name {
        Some(t) => format!(
            "CASE WHEN u.{col} IS NULL THEN NULL \
                  ELSE to_jsonb(jsonb_populate_record(NULL::{t}, u.{col}::jsonb)) END"
        ),
        None => format!("u.{col}::jsonb"),
    }
}

/// One statement for a run of changes to one table; the row images are bound, not copied. When a
/// change in the run has `json` values kept as strings, the statement returns the rows' ids and
/// each such change gets its row in `observer_capture_errors` (see [`record_unfit`]).
async fn insert_run(
    db: &mut sqlx::PgConnection,
    rel: &Rel,
    capture: &Capture,
    run: &[Row<'_>],
    typed: bool,
) -> Result<(), sqlx::Error> {
    let sql = if typed {
        &rel.insert_typed
    } else {
        &rel.insert_text
    };
    let col = |f: &dyn Fn(&Change) -> Option<&str>| -> Vec<Option<&str>> {
        run.iter().map(|r| f(r.0)).collect()
    };
    let returning;
    let sql = if run.iter().any(|r| !r.0.unfit.is_empty()) {
        returning = format!("{sql} RETURNING id");
        &returning
    } else {
        sql
    };
    let mut ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
        .bind(&capture.entity)
        .bind(&capture.id_column)
        .bind(capture.tenant_column.as_deref())
        .bind(col(&|c| Some(c.operation)))
        .bind(col(&|c| c.before.as_deref()))
        .bind(col(&|c| c.after.as_deref()))
        .bind(col(&|c| c.context.tenant.as_deref()))
        .bind(col(&|c| c.context.user.as_deref()))
        .bind(run.iter().map(|r| r.1).collect::<Vec<_>>())
        .fetch_all(&mut *db)
        .await?;
    if ids.is_empty() {
        return Ok(());
    }
    // Ids are drawn in the run's order.
    ids.sort_unstable();
    let unfit = run
        .iter()
        .zip(ids)
        .filter(|(r, _)| !r.0.unfit.is_empty())
        .map(|(r, id)| (id, r.0));
    record_unfit(db, rel, "WAL relay", unfit).await
}

/// A row in `observer_capture_errors` for each of `unfit`'s changes, which have `json` values
/// kept as strings, naming the change (`change_id`: its change-log row, or with direct delivery
/// its event id) and the columns; `who` is the WAL consumer that kept them.
async fn record_unfit<'c, 'a>(
    db: impl sqlx::PgExecutor<'c>,
    rel: &Rel,
    who: &str,
    unfit: impl Iterator<Item = (i64, &'a Change)> + Send,
) -> Result<(), sqlx::Error> {
    let (ids, errors): (Vec<i64>, Vec<String>) = unfit
        .map(|(id, change)| {
            let columns = change
                .unfit
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>();
            let error = format!(
                "{who} kept json column(s) {} of this {} as JSON strings of their text: \
                 jsonb cannot hold their values (an escaped NUL, or a number beyond \
                 numeric's range)",
                columns.join(", "),
                change.operation,
            );
            (id, error)
        })
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO observer_capture_errors (table_schema, table_name, entity_type, change_id, error)
         SELECT $1, $2, $3, e.id, e.error FROM unnest($4::int8[], $5::text[]) AS e(id, error)",
    )
    .bind(&rel.relation.schema)
    .bind(&rel.relation.name)
    .bind(rel.capture.as_ref().map_or("", |c| c.entity.as_str()))
    .bind(ids)
    .bind(errors)
    .execute(db)
    .await?;
    Ok(())
}

/// A row in `observer_capture_errors` saying `who` kept `n` changes of `rel` as text: their
/// values did not read into the table's row type (`error`; the table was altered or dropped
/// since).
async fn record_kept_as_text<'c>(
    db: impl sqlx::PgExecutor<'c>,
    rel: &Rel,
    who: &str,
    n: usize,
    error: &(dyn std::fmt::Display + Sync),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO observer_capture_errors (table_schema, table_name, entity_type, error)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&rel.relation.schema)
    .bind(&rel.relation.name)
    .bind(rel.capture.as_ref().map_or("", |c| c.entity.as_str()))
    .bind(format!(
        "{who} kept {n} change(s) as text: the values do not read into the table's row type \
         now: {error}"
    ))
    .execute(db)
    .await?;
    Ok(())
}

/// `{"tenant_id": "...", "user_id": "..."}` from a transactional `observers` message: applies to
/// the changes that follow it in its transaction.
fn apply_context(tx: &mut Tx, content: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Message {
        tenant_id: Option<String>,
        user_id: Option<String>,
    }
    match serde_json::from_slice::<Message>(content) {
        Ok(c) => {
            tx.context = Arc::new(Context {
                tenant: c.tenant_id.filter(|t| !t.is_empty()),
                user: c.user_id.filter(|u| !u.is_empty()),
            });
        }
        Err(e) => tracing::warn!(error = %e,
            "an `observers` logical message is not {{\"tenant_id\":..,\"user_id\":..}}; ignored"),
    }
}

async fn load_captures(pool: &PgPool) -> Result<HashMap<(String, String), Capture>, PgError> {
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_schema, table_name, entity_type, id_column, tenant_column
           FROM observer_captures WHERE kind = 'wal'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(schema, table, entity, id_column, tenant_column)| {
            (
                (schema, table),
                Capture {
                    entity,
                    id_column,
                    tenant_column,
                },
            )
        })
        .collect())
}

/// Microseconds since 2000-01-01 UTC (PostgreSQL's epoch).
fn pg_time(micros: i64) -> DateTime<Utc> {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_UNIX_MICROS)).unwrap_or_default()
}

fn parse_lsn(text: &str) -> Result<Lsn, PgError> {
    Lsn::parse(text).map_err(|e| PgError::Invalid(format!("bad LSN {text:?}: {e}")))
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(wire)`
fn wire(e: pgwire_replication::PgWireError) -> PgError {
    PgError::Connect {
        message: observers_core::redact::text(&format!("replication connection: {e}")),
    }
}

/// The replication connection's settings from a `postgres://user:password@host:port/db` URL.
pub fn replication_config(url: &str, settings: &WalSettings) -> Result<ReplicationConfig, PgError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        PgError::Invalid(format!(
            "the WAL source needs a postgres:// URL ({e}): {}",
            observers_core::redact::url(url)
        ))
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(PgError::Invalid(format!(
            "the WAL source needs a postgres:// URL, not {}://",
            parsed.scheme()
        )));
    }
    // Userinfo and path are percent-encoded (a `+` is a plus, not a space).
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut host = parsed.host_str().unwrap_or("").to_owned();
    let mut port = parsed.port().unwrap_or(5432);
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "host" => host = v.into_owned(),
            "port" => port = v.parse().unwrap_or(port),
            "sslmode" if !matches!(v.as_ref(), "disable" | "allow" | "prefer") => {
                return Err(PgError::Invalid(format!(
                    "the WAL source connects without TLS; sslmode={v} is not supported (use a \
                     local or private network, or kind = \"trigger\")"
                )));
            }
            _ => {}
        }
    }
    if host.is_empty() {
        "localhost".clone_into(&mut host);
    }
    let user = match decode(parsed.username()) {
        u if u.is_empty() => "postgres".to_owned(),
        u => u,
    };
    let password = parsed.password().map(decode).unwrap_or_default();
    let database = match decode(parsed.path().trim_start_matches('/')) {
        d if d.is_empty() => user.clone(),
        d => d,
    };
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        settings.slot.clone(),
        settings.publication.clone(),
    )
    .with_port(port)
    .with_application_name("observers-wal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("slot", "observers_1").is_ok());
        assert!(validate_name("slot", "Observers").is_err());
        assert!(validate_name("slot", "a b").is_err());
        assert!(validate_name("slot", "").is_err());
        assert!(validate_name("slot", &"a".repeat(64)).is_err());
    }

    #[test]
    fn urls_become_replication_settings() {
        let s = WalSettings::default();
        let c = replication_config("postgres://us%20er:p%40s+s@db:5433/my%2Bapp", &s).unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str(), c.database.as_str()),
            ("us er", "p@s+s", "my+app")
        );
        assert_eq!((c.host.as_str(), c.port), ("db", 5433));
        let c = replication_config("postgres:///app?host=/run/postgresql&port=6000", &s).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("/run/postgresql", 6000, "postgres")
        );
        let e = replication_config("postgres://u@db/app?sslmode=require", &s).unwrap_err();
        assert!(e.to_string().contains("sslmode=require"), "{e}");
        assert!(replication_config("mysql://db/app", &s).is_err());
        assert!(replication_config("not a url", &s).is_err());
    }

    #[test]
    fn rows_become_text_objects_with_json_columns_as_json() {
        let rel = Relation {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: b'f',
            columns: vec![
                pgoutput::Column {
                    name: "id".into(),
                    type_oid: 20,
                    key: true,
                },
                pgoutput::Column {
                    name: "doc".into(),
                    type_oid: 3802,
                    key: false,
                },
                pgoutput::Column {
                    name: "big".into(),
                    type_oid: 25,
                    key: false,
                },
                pgoutput::Column {
                    name: "gone".into(),
                    type_oid: 25,
                    key: false,
                },
            ],
        };
        let old = [
            Value::Text("1".into()),
            Value::Null,
            Value::Text("toasted".into()),
            Value::Null,
        ];
        let new = [
            Value::Text("1".into()),
            Value::Text(r#"{"n": 12345678901234567.89}"#.into()),
            Value::Unchanged,
            Value::Null,
        ];
        let renders = Render::for_server(&rel);
        let json: serde_json::Value =
            serde_json::from_str(&render::row(&rel, &renders, &new, Some(&old)).0).unwrap();
        let expected: serde_json::Value = serde_json::from_str(
            r#"{"id":"1","doc":{"n":12345678901234567.89},"big":"toasted","gone":null}"#,
        )
        .unwrap();
        assert_eq!(json, expected);
        assert_eq!(json["doc"]["n"].to_string(), "12345678901234567.89");
        let without_old = render::row(&rel, &renders, &new, None).0;
        assert!(without_old.contains(r#""big":null"#), "{without_old}");
    }

    #[test]
    fn progress_moves_forward_and_keeps_later_parts() {
        let lsn = Lsn::from_u64;
        let start = Progress {
            done: lsn(100),
            partial_lsn: None,
            partial_changes: 0,
        };
        // A part of the transaction committing at 300, after finishing one ending at 200.
        let p = start.after(Some(lsn(200)), Some((lsn(300), 5_000)));
        assert_eq!(
            (p.done, p.partial_lsn, p.partial_changes),
            (lsn(200), Some(lsn(300)), 5_000)
        );
        // The next part.
        let p = p.after(None, Some((lsn(300), 10_000)));
        assert_eq!(
            (p.done, p.partial_lsn, p.partial_changes),
            (lsn(200), Some(lsn(300)), 10_000)
        );
        // A restarted relay re-reading the first part never moves the count back.
        let q = p.after(None, Some((lsn(300), 5_000)));
        assert_eq!(q.partial_changes, 10_000);
        // A paused relay writing older, finished transactions keeps the later parts.
        let q = p.after(Some(lsn(150)), None);
        assert_eq!(
            (q.done, q.partial_lsn, q.partial_changes),
            (lsn(200), Some(lsn(300)), 10_000)
        );
        // Finishing the transaction clears them.
        let q = p.after(Some(lsn(350)), None);
        assert_eq!(
            (q.done, q.partial_lsn, q.partial_changes),
            (lsn(350), None, 0)
        );
    }

    /// A big transaction leaves in parts: each part carries the stream positions it covers,
    /// the transaction goes on after it, and at its commit only what came after the last part
    /// is held; what a part wrote counts as copied.
    #[test]
    fn parts_split_a_big_transaction_and_the_rest_follows_at_commit() {
        let lsn = Lsn::from_u64;
        let relation = Relation {
            id: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: b'f',
            columns: Vec::new(),
        };
        let rel = Arc::new(Rel::new(relation, None, "public.t", 0, true));
        let change = || Change {
            rel: rel.clone(),
            operation: "insert",
            before: None,
            after: Some("{}".into()),
            unfit: Vec::new(),
            context: Arc::default(),
        };
        let mut held = Held::default();
        held.begin(pg_time(0), lsn(300));
        let tx = held.current.as_mut().unwrap();
        tx.changes.extend((0..MAX_BATCH_ROWS - 1).map(|_| change()));
        assert!(held.part_due().is_none(), "not yet");
        held.current.as_mut().unwrap().changes.push(change());
        let part = held.part_due().expect("a part at MAX_BATCH_ROWS");
        assert_eq!((part.first, part.next()), (0, MAX_BATCH_ROWS as u64));
        assert_eq!(part.final_lsn, lsn(300));
        let tx = held.current.as_mut().unwrap();
        assert_eq!((tx.first, tx.changes.len()), (MAX_BATCH_ROWS as u64, 0));
        tx.changes.extend((0..7).map(|_| change()));
        held.commit(lsn(310));
        assert!(held.current.is_none());
        assert_eq!(held.rows, 7);
        let pending = held.take_pending();
        assert_eq!((held.rows, held.is_empty()), (0, true));
        assert_eq!(
            (pending[0].first, pending[0].next(), pending[0].end_lsn),
            (MAX_BATCH_ROWS as u64, MAX_BATCH_ROWS as u64 + 7, lsn(310))
        );
        // After the part was written, the progress row counts it: the rest is all new.
        let written = Progress {
            done: lsn(200),
            partial_lsn: None,
            partial_changes: 0,
        }
        .after(None, Some((part.final_lsn, part.next())));
        assert_eq!(written.copied(&part), MAX_BATCH_ROWS);
        assert_eq!(written.copied(&pending[0]), 0);
    }

    #[test]
    fn postgres_time_epoch() {
        assert_eq!(pg_time(0).to_rfc3339(), "2000-01-01T00:00:00+00:00");
    }
}
