//! The PostgreSQL pipeline benchmark behind `cargo xtask bench`: every figure is measured next
//! to a baseline from the same run on the same database (pgbench's single-row insert rate, a
//! raw UPSERT), so results are ratios, not absolute claims.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use observers_core::actions::{Action, ActionFactory, ActionResult, Invocation};
use observers_core::config::{ActionConfig, WebhookConfig};
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::retry::RetryPolicy;
use observers_core::stores::checkpoint::CheckpointStore;
use observers_core::{Cursor, EventKind, ObserverExecutor, ObserverSet};
use observers_postgres::wal::direct::{WalDirect, WalDirectListener};
use observers_postgres::{ChangeLogListener, PgPool, PostgresCheckpointStore};
use sqlx::{Connection, Executor};
use tokio::sync::watch;

const DB: &str = "observers_bench";

fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn db_url() -> String {
    let mut u = url::Url::parse(&server_url()).unwrap();
    u.set_path(&format!("/{DB}"));
    u.to_string()
}

async fn fresh_db() -> PgPool {
    let mut admin = sqlx::PgConnection::connect(&server_url()).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {DB} WITH (FORCE)"
        )))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DB}")))
        .await
        .unwrap();
    let pool = observers_postgres::connect(&db_url(), 8).await.unwrap();
    observers_postgres::migrate(&pool).await.unwrap();
    pool.execute("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total numeric NOT NULL, status text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        .await
        .unwrap();
    pool
}

/// A copy of `orders` named `table`, captured by trigger as entity `Order`.
async fn trigger_captured_copy(pool: &PgPool, table: &str) {
    pool.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (LIKE orders INCLUDING ALL)"
    )))
    .await
    .unwrap();
    let spec = observers_postgres::capture::CaptureSpec::new(table, "Order");
    observers_postgres::capture::enable(pool, &spec)
        .await
        .unwrap();
}

async fn capture(pool: &PgPool) {
    let spec = observers_postgres::capture::CaptureSpec::new("orders", "Order");
    observers_postgres::capture::enable(pool, &spec)
        .await
        .unwrap();
}

/// pgbench, `clients` clients, single-row inserts into `table`: transactions per second.
fn pgbench_insert_tps(table: &str, clients: u32, seconds: u32) -> f64 {
    let script = std::env::temp_dir().join(format!("observers_bench_insert_{table}.sql"));
    std::fs::write(
        &script,
        format!("INSERT INTO {table} (total, status) VALUES (random() * 200, 'paid');\n"),
    )
    .unwrap();
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
            script.to_str().unwrap(),
            &db_url(),
        ])
        .output()
        .expect("pgbench (apt-get install postgresql-client) is needed for the writer baseline");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| {
            panic!(
                "pgbench output without tps: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The writer baselines, each a copy of `orders`: no capture; the least a capture trigger can do
/// (plpgsql inserting `to_jsonb(NEW)` into an indexed log, no NOTIFY); and the trigger Observers
/// shipped before (row images, the changed-column diff, a `(txid, id)` index and a statement
/// NOTIFY), on logs of their own. `orders` itself gets today's capture.
const WRITER_BASELINES: &str = r"
CREATE TABLE orders_none (LIKE orders INCLUDING ALL);
CREATE TABLE orders_min (LIKE orders INCLUDING ALL);
CREATE TABLE orders_old (LIKE orders INCLUDING ALL);
CREATE TABLE bench_min_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_type text NOT NULL, entity_id text NOT NULL, operation text NOT NULL,
    before jsonb, after jsonb, created_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION bench_min_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_min_log (entity_type, entity_id, operation, before, after)
    VALUES (TG_ARGV[0], NEW.id::text, lower(TG_OP), NULL, to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER c AFTER INSERT ON orders_min FOR EACH ROW EXECUTE FUNCTION bench_min_capture('Order');
CREATE TABLE bench_old_log (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(), entity_type text NOT NULL,
    entity_id text NOT NULL, operation text NOT NULL, tenant_id text, user_id text,
    before jsonb, after jsonb, changed text[], created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON bench_old_log (txid, id);
CREATE FUNCTION bench_old_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_old_log', ''); RETURN NULL; END $$;
CREATE TRIGGER n AFTER INSERT ON bench_old_log FOR EACH STATEMENT EXECUTE FUNCTION bench_old_notify();
CREATE FUNCTION bench_old_capture() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    old_row jsonb; new_row jsonb; cur_row jsonb; changed text[];
BEGIN
    IF TG_OP = 'INSERT' THEN new_row := to_jsonb(NEW); cur_row := new_row;
    ELSIF TG_OP = 'UPDATE' THEN
        old_row := to_jsonb(OLD); new_row := to_jsonb(NEW); cur_row := new_row;
        SELECT coalesce(array_agg(n.key ORDER BY n.key), '{}') INTO changed
          FROM jsonb_each(new_row) AS n WHERE n.value IS DISTINCT FROM old_row -> n.key;
    ELSE old_row := to_jsonb(OLD); cur_row := old_row;
    END IF;
    INSERT INTO bench_old_log (entity_type, entity_id, operation, tenant_id, user_id, before, after, changed)
    VALUES (TG_ARGV[0], cur_row ->> TG_ARGV[1], lower(TG_OP),
            NULLIF(current_setting('observers.tenant_id', true), ''),
            NULLIF(current_setting('observers.user_id', true), ''), old_row, new_row, changed);
    RETURN NULL;
END $$;
CREATE TRIGGER c AFTER INSERT OR UPDATE OR DELETE ON orders_old
    FOR EACH ROW EXECUTE FUNCTION bench_old_capture('Order', 'id');
";

/// Rounds of pgbench per writer table: on 2 shared cores one 6 s round moves by several points
/// against the next, so the median of five, not three, is reported.
const WRITER_ROUNDS: usize = 5;

/// The median over rounds of `a`'s rate against `b`'s in the same round, and each round's ratio.
fn paired_ratio(a: &[f64], b: &[f64]) -> (f64, String) {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    (median(&ratios), each.join(", "))
}

/// The median of an odd number of rounds.
fn median(rounds: &[f64]) -> f64 {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Writer rates (8 clients, single-row inserts) with no capture, the minimal trigger, the old
/// trigger and today's, in alternating rounds so drift on a shared machine hits all alike; the
/// median round of each. Returns today's rate.
async fn writer_rates(pool: &PgPool, wal: bool) -> f64 {
    pool.execute(WRITER_BASELINES).await.unwrap();
    capture(pool).await;
    // Each compared pair runs back to back in a round (the minimal trigger and today's; the bare
    // consumer and direct delivery), so a pair's ratio sees the same moment of the machine.
    let mut tables = vec!["orders_none", "orders_min", "orders", "orders_old"];
    if wal {
        // A trigger-captured copy that stays so after the run (the WAL part below moves
        // `orders` to the WAL source): `cargo xtask bench --capture` counts its instructions.
        trigger_captured_copy(pool, "orders_trigger").await;
        pool.execute(WAL_BASELINES).await.unwrap();
        // A slot cannot be created in a transaction that wrote (the batch above is one).
        pool.execute("SELECT pg_create_logical_replication_slot('bench_bare', 'pgoutput')")
            .await
            .unwrap();
        wal_capture(pool, "orders_wal", "OrderWal").await;
        tables.extend(["orders_floor", "orders_pub", "orders_direct", "orders_wal"]);
    }
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); tables.len()];
    let mut cpu: Vec<Cpu> = vec![Cpu::default(); tables.len()];
    for _ in 0..WRITER_ROUNDS {
        for (i, t) in tables.iter().enumerate() {
            if wal {
                settle(pool).await;
            }
            // Each logical consumer streams during its own rounds only, from the current WAL
            // position (the slot is advanced past the other rounds' WAL outside the timing).
            let consumer = match *t {
                "orders_pub" => Some(Consumer::bare()),
                "orders_floor" => Some(Consumer::floor().await),
                "orders_wal" => Some(Consumer::wal(pool).await),
                "orders_direct" => Some(Consumer::direct(pool)),
                _ => None,
            };
            let before = Cpu::now();
            // pgbench runs off the runtime's threads, which the relay and listener need.
            // The direct consumer's rounds write the WAL-captured table too, the client's alone
            // the bare consumer's.
            let table = match *t {
                "orders_direct" => "orders_wal",
                "orders_floor" => "orders_pub",
                t => t,
            }
            .to_owned();
            let tps = tokio::task::spawn_blocking(move || pgbench_insert_tps(&table, 8, 6))
                .await
                .unwrap();
            cpu[i].add(&Cpu::now(), &before);
            rounds[i].push(tps);
            if let Some(c) = consumer {
                c.stop().await;
            }
        }
    }
    let [none, min, new, old] = [0, 1, 2, 3].map(|i| median(&rounds[i]));
    println!(
        "writer: pgbench 8 clients, single-row inserts, median of {WRITER_ROUNDS} alternating rounds of 6 s"
    );
    println!("  no capture            {none:>8.0} tx/s");
    println!(
        "  minimal trigger       {min:>8.0} tx/s  {:.2}x uncaptured",
        min / none
    );
    println!(
        "  previous trigger      {old:>8.0} tx/s  {:.2}x uncaptured",
        old / none
    );
    let (paired, each) = paired_ratio(&rounds[2], &rounds[1]);
    println!(
        "  capture (today)       {new:>8.0} tx/s  {:.2}x uncaptured, {:.2}x the previous; {paired:.3}x the minimal trigger (median of the rounds' ratios: {each})\n",
        new / none,
        new / old
    );
    if wal {
        let (floor, bare, direct, source) = (
            median(&rounds[4]),
            median(&rounds[5]),
            median(&rounds[6]),
            median(&rounds[7]),
        );
        println!(
            "  bare pgoutput consumer {bare:>7.0} tx/s  {:.2}x uncaptured (pg_recvlogical on a publication)",
            bare / none
        );
        let (paired, each) = paired_ratio(&rounds[4], &rounds[5]);
        println!(
            "  replication client    {floor:>8.0} tx/s  {paired:.3}x the bare pgoutput consumer (median of the rounds' ratios: {each}; pgwire-replication on the same publication, every event dropped: what direct delivery's client costs before it does anything)",
        );
        println!(
            "  WAL source            {source:>8.0} tx/s  {:.2}x uncaptured, {:.2}x the bare pgoutput consumer (relay and listener running)",
            source / none,
            source / bare
        );
        let (paired, each) = paired_ratio(&rounds[6], &rounds[5]);
        println!(
            "  WAL direct delivery   {direct:>8.0} tx/s  {:.2}x uncaptured, {paired:.3}x the bare pgoutput consumer (median of the rounds' ratios: {each}; wal_delivery = \"direct\")",
            direct / none
        );
        println!(
            "  CPU during the rounds (share of one core, /proc): bare consumer {}; replication client {}; WAL source {}; direct delivery {}\n",
            cpu[5].report("pg_recvlogical"),
            cpu[4].report("client"),
            cpu[7].report("relay + listener"),
            cpu[6].report("stream + listener")
        );
    }
    new
}

/// CPU time (clock ticks, from `/proc`) of the processes a logical consumer adds: walsenders,
/// the consumer (pg_recvlogical, or this process: the relay and the listener), and this
/// process's server backends (pgbench's are not counted: they end with their round, and one still
/// exiting at the second sample started after the first).
/// Clock ticks are 1/100 s (Linux's `USER_HZ`).
#[derive(Debug, Clone, Default)]
struct Cpu {
    /// Ticks per pid, by group: walsender, consumer, backend.
    ticks: std::collections::HashMap<(u8, u32), u64>,
    /// Summed differences over the rounds, by group, and the seconds they cover.
    total: [u64; 3],
    seconds: f64,
    at: Option<Instant>,
}

impl Cpu {
    fn now() -> Self {
        let me = std::process::id();
        let mut ticks = std::collections::HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let (Ok(stat), Ok(cmd)) = (
                std::fs::read_to_string(entry.path().join("stat")),
                std::fs::read_to_string(entry.path().join("cmdline")),
            ) else {
                continue;
            };
            let cmd = cmd.replace('\0', " ");
            let group = if cmd.contains("walsender") {
                0
            } else if pid == me || cmd.contains("pg_recvlogical") {
                1
            } else if cmd.starts_with("postgres: ") && cmd.contains(DB) {
                2
            } else {
                continue;
            };
            // utime and stime: fields 14 and 15, counted after the parenthesized name.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 2..]
                .split(' ')
                .collect();
            let t = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            ticks.insert((group, pid), t(11) + t(12));
        }
        Self {
            ticks,
            at: Some(Instant::now()),
            ..Self::default()
        }
    }

    /// Adds what the processes alive at the second sample used since the first (all of it for
    /// one that started in between, as the consumer's walsender does, except a backend).
    fn add(&mut self, after: &Cpu, before: &Cpu) {
        for (key, t) in &after.ticks {
            let b = match before.ticks.get(key) {
                Some(b) => *b,
                // A backend that started during the round is pgbench's, still exiting.
                None if key.0 == 2 => continue,
                None => 0,
            };
            self.total[usize::from(key.0)] += t.saturating_sub(b);
        }
        if let (Some(a), Some(b)) = (after.at, before.at) {
            self.seconds += (a - b).as_secs_f64();
        }
    }

    /// The share of one core (in %) each group used: walsender, consumer, backends.
    fn shares(&self) -> [f64; 3] {
        self.total
            .map(|t| t as f64 / 100.0 / self.seconds.max(f64::MIN_POSITIVE) * 100.0)
    }

    fn report(&self, consumer: &str) -> String {
        let share = |g: usize| self.shares()[g];
        format!(
            "walsender {:.0}%, {consumer} {:.0}%, its server backends {:.0}%",
            share(0),
            share(1),
            share(2)
        )
    }
}

/// The bare logical consumer's table and publication, and the WAL source's table.
const WAL_BASELINES: &str = r"
CREATE TABLE orders_pub (LIKE orders INCLUDING ALL);
CREATE TABLE orders_wal (LIKE orders INCLUDING ALL);
CREATE PUBLICATION bench_bare FOR TABLE orders_pub;
";

/// Captures `table` through the WAL source's default publication and slot.
async fn wal_capture(pool: &PgPool, table: &str, entity: &str) {
    let kind = observers_postgres::capture::CaptureKind::Wal {
        publication: "observers".into(),
        slot: "observers".into(),
    };
    let spec = observers_postgres::capture::CaptureSpec::new(table, entity);
    observers_postgres::capture::enable_as(pool, &spec, &kind)
        .await
        .unwrap();
}

/// Moves the default slot's decoding start (its `restart_lsn`) to the current position before a
/// drain, as a consumer that streams all along keeps it: a slot moves its restart point only
/// past a running-transactions record it has decoded, so after the short-lived consumers of the
/// rounds before, a new consumer would first decode hundreds of MB of earlier WAL. A checkpoint
/// writes such a record; advancing the slot decodes it.
async fn decode_from_here(pool: &PgPool) {
    pool.execute("CHECKPOINT").await.unwrap();
    advance(pool, "observers").await;
}

/// Before every writer round of the WAL comparison: both slots' decoding start moved to the
/// current position (see [`decode_from_here`]), so no consumer first decodes the WAL of the
/// rounds before inside its own timing. `pg_replication_slot_advance` moves the decoding start
/// only to the last running-transactions record it passes, which PostgreSQL writes every 15 s
/// and at a checkpoint: without the checkpoint, a consumer started with up to 15 s of other
/// rounds' WAL to decode first, a cost that depended on where that record fell. Every round
/// gets the checkpoint, so each pays alike for the full-page images that follow one.
async fn settle(pool: &PgPool) {
    pool.execute("CHECKPOINT").await.unwrap();
    advance(pool, "bench_bare").await;
    advance(pool, "observers").await;
}

/// Moves `slot` to the current WAL position (outside any timing). The consumer of the round
/// before may still hold the slot for a moment after it stopped (its walsender exits after the
/// connection closes): that refusal (55006, object in use) is retried for up to 30 s.
async fn advance(pool: &PgPool, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())")
            .bind(slot)
            .execute(pool)
            .await
        {
            Ok(_) => return,
            Err(e)
                if Instant::now() < deadline
                    && e.as_database_error()
                        .and_then(sqlx::error::DatabaseError::code)
                        .as_deref()
                        == Some("55006") =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("advancing slot {slot}: {e}"),
        }
    }
}

/// A logical consumer running during a writer round: `pg_recvlogical` writing to /dev/null, or
/// the WAL source (relay and a listener with a no-op action), as `observers run` has them.
enum Consumer {
    Bare(std::process::Child),
    Wal {
        stop: watch::Sender<bool>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    },
}

impl Consumer {
    /// Direct delivery (`wal_delivery = "direct"`) with a no-op action, from where [`settle`]
    /// left the slot.
    fn direct(pool: &PgPool) -> Self {
        let listener = direct_noop(pool, "wal-direct-writer", Arc::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            listener.run(rx).await.unwrap();
        });
        Self::Wal {
            stop,
            tasks: vec![task],
        }
    }
}

impl Consumer {
    /// The replication client direct delivery uses (pgwire-replication), on the bare
    /// consumer's slot and publication, dropping every event: the client's own cost. It starts
    /// where [`settle`] left the slot (a start of 0/0 is the slot's confirmed position).
    async fn floor() -> Self {
        let settings = observers_postgres::wal::WalSettings {
            slot: "bench_bare".into(),
            publication: "bench_bare".into(),
        };
        let config = observers_postgres::wal::replication_config(&db_url(), &settings).unwrap();
        let mut client = pgwire_replication::ReplicationClient::connect(config)
            .await
            .unwrap();
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = rx.changed() => break,
                    event = client.recv() => if event.unwrap().is_none() { break },
                }
            }
            client.stop();
        });
        Self::Wal {
            stop,
            tasks: vec![task],
        }
    }

    /// `pg_recvlogical`, from where [`settle`] left the slot.
    fn bare() -> Self {
        let child = Command::new("pg_recvlogical")
            .args([
                "-d",
                &db_url(),
                "--slot",
                "bench_bare",
                "--start",
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=bench_bare",
                "-f",
                "/dev/null",
            ])
            .spawn()
            .expect("pg_recvlogical (postgresql-client) is the bare pgoutput consumer");
        Self::Bare(child)
    }

    async fn wal(pool: &PgPool) -> Self {
        // The relay starts where [`settle`] left the slot.
        let relay = relay(pool);
        let (stop, rx) = watch::channel(false);
        let relay_rx = rx.clone();
        let relay_task = tokio::spawn(async move { relay.run(relay_rx).await });
        let listener = noop_listener(pool, "wal-writer", Arc::default());
        let start = last_cursor(pool).await;
        PostgresCheckpointStore::new(pool.clone())
            .save("wal-writer", start, 0)
            .await
            .unwrap();
        let listener_task = tokio::spawn(async move {
            listener.run(rx).await.unwrap();
        });
        Self::Wal {
            stop,
            tasks: vec![relay_task, listener_task],
        }
    }

    async fn stop(self) {
        match self {
            Consumer::Bare(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Consumer::Wal { stop, tasks } => {
                stop.send(true).unwrap();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        }
    }
}

/// A listener that runs every event through a no-op action (counted in `count`).
fn noop_listener(pool: &PgPool, id: &str, count: Arc<AtomicUsize>) -> ChangeLogListener {
    let slot = noop_slot(count);
    listener(pool, id, "*", slot)
}

/// A listener running every change of `entity` through `slot`.
fn listener(pool: &PgPool, id: &str, entity: &str, slot: ActionSlot) -> ChangeLogListener {
    let observer =
        CompiledObserver::new("bench", entity, EventKind::ALL.to_vec()).with_action(slot);
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(10));
    let executor = Arc::new(
        ObserverExecutor::builder(set)
            .max_concurrent_actions(128)
            .build(),
    );
    let checkpoints = Arc::new(PostgresCheckpointStore::new(pool.clone()));
    ChangeLogListener::new(pool.clone(), checkpoints, executor, listener_config(id))
}

struct Noop(Arc<AtomicUsize>);

#[async_trait]
impl Action for Noop {
    fn type_name(&self) -> &'static str {
        "noop"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(ActionResult::default())
    }
}

fn listener_config(id: &str) -> observers_core::listener::ListenerConfig {
    observers_core::listener::ListenerConfig {
        listener_id: id.into(),
        batch_size: 1000,
        poll_interval: Duration::from_millis(200),
        max_in_flight: 64,
        ..Default::default()
    }
}

/// Runs a listener over the current backlog until its checkpoint reaches `end`; rows/s.
async fn drain(pool: &PgPool, id: &str, slot: ActionSlot, rows: usize, end: Cursor) -> f64 {
    let listener = listener(pool, id, "Order", slot);
    let checkpoints = PostgresCheckpointStore::new(pool.clone());
    let (tx, rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(async move { listener.run(rx).await });
    loop {
        if checkpoints
            .load(id)
            .await
            .unwrap()
            .is_some_and(|c| c.cursor >= end)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    rows as f64 / elapsed.as_secs_f64()
}

async fn last_cursor(pool: &PgPool) -> Cursor {
    let id: i64 = sqlx::query_scalar("SELECT max(id) FROM observer_change_log")
        .fetch_one(pool)
        .await
        .unwrap();
    Cursor::new(id)
}

type Arrivals = Arc<Mutex<Vec<(i64, Instant)>>>;

async fn receiver() -> (String, Arrivals) {
    async fn hook(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
        let now = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(id) = v["data"]["id"].as_i64() {
            arrivals.lock().unwrap().push((id, now));
        }
        "ok"
    }
    let arrivals: Arrivals = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(arrivals.clone());
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", socket.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    (url, arrivals)
}

fn webhook_slot(url: &str) -> ActionSlot {
    let config: WebhookConfig = toml::from_str(&format!("url = \"{url}\"")).unwrap();
    let factory = ActionFactory::new(observers_core::actions::OutboundPolicy::default()).unwrap();
    let action = factory.build(&ActionConfig::Webhook(config)).unwrap();
    ActionSlot::new(action, "webhook")
}

/// Raw loopback HTTP rate with the same client settings and concurrency: the webhook baseline.
async fn raw_http_rate(url: &str, requests: usize) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, next, url) = (client.clone(), next.clone(), url.to_owned());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    client
                        .post(&url)
                        .body("{\"data\":{}}")
                        .send()
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    requests as f64 / started.elapsed().as_secs_f64()
}

async fn latency_at(
    pool: &PgPool,
    url: &str,
    arrivals: &Arrivals,
    rate: u32,
    seconds: u32,
    direct: bool,
) -> (f64, f64, f64) {
    arrivals.lock().unwrap().clear();
    let observer = CompiledObserver::new("latency", "Order", vec![EventKind::Insert])
        .with_action(webhook_slot(url));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(10));
    let executor = Arc::new(ObserverExecutor::builder(set).build());
    let mut cfg = listener_config("latency");
    cfg.poll_interval = Duration::from_secs(1);
    let (tx, rx) = watch::channel(false);
    let task = if direct {
        let listener = WalDirectListener::new(direct_consumer(pool, "latency"), executor, &cfg);
        tokio::spawn(async move { listener.run(rx).await })
    } else {
        let start = last_cursor(pool).await;
        let checkpoints = Arc::new(PostgresCheckpointStore::new(pool.clone()));
        checkpoints.save("latency", start, 0).await.unwrap();
        let listener = ChangeLogListener::new(pool.clone(), checkpoints, executor, cfg);
        tokio::spawn(async move { listener.run(rx).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let commits: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let writers = 4;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (pool, commits) = (pool.clone(), commits.clone());
            tokio::spawn(async move {
                let begin = Instant::now();
                let mut k = w;
                while k < total {
                    let due = begin + interval * k;
                    tokio::time::sleep_until(due.into()).await;
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO orders (total, status) VALUES (150, 'paid') RETURNING id",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    commits.lock().unwrap().push((id, Instant::now()));
                    k += writers;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    let commits = commits.lock().unwrap().clone();
    let arrived: std::collections::HashMap<i64, Instant> =
        arrivals.lock().unwrap().iter().copied().collect();
    let mut lat: Vec<f64> = commits
        .iter()
        .filter_map(|(id, at)| {
            arrived
                .get(id)
                .map(|r| r.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    (pct(0.5), pct(0.99), lat.len() as f64 / commits.len() as f64)
}

/// What a listener with nothing to deliver costs over `seconds` (after it settled): the share
/// of one core used by this process and by its server backends, from `/proc`, against the
/// same with no listener running.
async fn idle_cost(pool: &PgPool, seconds: u64) -> ([f64; 3], [f64; 3]) {
    let measure = || async {
        let before = Cpu::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let mut cpu = Cpu::default();
        cpu.add(&Cpu::now(), &before);
        cpu.shares()
    };
    let without = measure().await;
    let start = last_cursor(pool).await;
    let checkpoints = PostgresCheckpointStore::new(pool.clone());
    checkpoints.save("idle", start, 0).await.unwrap();
    let listener = noop_listener(pool, "idle", Arc::default());
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move { listener.run(rx).await });
    // Past the first reads, and past the poller's tight polls after the last change it saw.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with = measure().await;
    tx.send(true).unwrap();
    task.await.unwrap().unwrap();
    (without, with)
}

async fn checkpoint_rates(pool: &PgPool, seconds: u64) -> (f64, f64) {
    let store = PostgresCheckpointStore::new(pool.clone());
    let run = Duration::from_secs(seconds);
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < run {
        n += 1;
        store
            .save("cp-bench", Cursor::new(i64::from(n)), 1)
            .await
            .unwrap();
    }
    let ours = f64::from(n) / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < run {
        n += 1;
        sqlx::query(
            "INSERT INTO observer_checkpoints (listener_id, cursor_id) VALUES ('raw', $1) \
             ON CONFLICT (listener_id) DO UPDATE SET cursor_id = EXCLUDED.cursor_id, updated_at = now()",
        )
        .bind(i64::from(n))
        .execute(pool)
        .await
        .unwrap();
    }
    (ours, f64::from(n) / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let pool = fresh_db().await;
    println!(
        "# pipeline benchmark ({rows} rows, {} cores)\n",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    let wal = std::env::var_os("BENCH_CAPTURE").is_some();
    let captured_tps = writer_rates(&pool, wal).await;

    pool.execute("TRUNCATE observer_change_log; TRUNCATE observer_checkpoints")
        .await
        .unwrap();
    backlog(&pool, "orders", rows).await;
    let end = last_cursor(&pool).await;
    let count = Arc::new(AtomicUsize::new(0));
    let noop = drain(&pool, "drain-noop", noop_slot(count.clone()), rows, end).await;
    assert_eq!(count.load(Ordering::Relaxed), rows);
    println!(
        "backlog drain, no-op action: {noop:.0} events/s = {:.2}x the captured writer",
        noop / captured_tps
    );

    let (url, arrivals) = receiver().await;
    let http = drain(&pool, "drain-webhook", webhook_slot(&url), rows, end).await;
    let raw_http = raw_http_rate(&url, 20_000).await;
    println!(
        "backlog drain, webhook to loopback: {http:.0} events/s = {:.2}x the captured writer; raw loopback HTTP {raw_http:.0} req/s ({:.2}x of it)",
        http / captured_tps,
        http / raw_http
    );

    let (p50, p99, delivered) = latency_at(&pool, &url, &arrivals, 1000, 10, false).await;
    println!(
        "commit-to-webhook latency at 1,000 changes/s: p50 {p50:.1} ms, p99 {p99:.1} ms ({:.1}% delivered)",
        delivered * 100.0
    );

    let (without, with) = idle_cost(&pool, 10).await;
    println!(
        "idle listener (nothing to deliver, poll_interval 200 ms), 10 s: this process {:.1}% of a core, its server backends {:.1}% (without a listener: {:.1}%, {:.1}%)",
        with[1], with[2], without[1], without[2]
    );

    if wal {
        wal_source(&pool, rows, &url, &arrivals, noop, p99).await;
        pool.close().await;
        return;
    }

    let (ours, raw) = checkpoint_rates(&pool, 3).await;
    println!(
        "checkpoint saves: {ours:.0}/s vs raw UPSERT {raw:.0}/s ({:.2}x)",
        ours / raw
    );
    pool.close().await;
}

/// The same backlog and latency figures with `orders` captured through the WAL: the relay
/// copies the slot's stream into the change log while the listener drains it.
async fn wal_source(
    pool: &PgPool,
    rows: usize,
    url: &str,
    arrivals: &Arrivals,
    trigger_drain: f64,
    trigger_p99: f64,
) {
    // A trigger-captured table of the same entity, for the trigger source's drain rounds below
    // (`orders` moves to the WAL source now).
    trigger_captured_copy(pool, "orders_drain").await;
    wal_capture(pool, "orders", "Order").await;
    decode_from_here(pool).await;
    pool.execute("TRUNCATE observer_change_log; TRUNCATE observer_checkpoints")
        .await
        .unwrap();
    backlog(pool, "orders", rows).await;
    // The relay streams through the drain and the latency run; the drain's listener stops after.
    let relay = relay(pool);
    let (stop_relay, relay_rx) = watch::channel(false);
    let started = Instant::now();
    let relay_task = tokio::spawn(async move { relay.run(relay_rx).await });
    let count = Arc::new(AtomicUsize::new(0));
    let listener = noop_listener(pool, "drain-wal", count.clone());
    let (stop_listener, listener_rx) = watch::channel(false);
    let listener_task = tokio::spawn(async move { listener.run(listener_rx).await });
    let drain = counted(&count, rows, started).await;
    stop_listener.send(true).unwrap();
    listener_task.await.unwrap().unwrap();
    println!(
        "WAL source backlog drain (relay + listener), no-op action: {drain:.0} events/s = {:.2}x the trigger source's",
        drain / trigger_drain
    );

    let (p50, p99, delivered) = latency_at(pool, url, arrivals, 1000, 10, false).await;
    println!(
        "WAL source commit-to-webhook latency at 1,000 changes/s: p50 {p50:.1} ms, p99 {p99:.1} ms ({:.1}% delivered; trigger p99 {trigger_p99:.1} ms)",
        delivered * 100.0
    );
    stop_relay.send(true).unwrap();
    relay_task.await.unwrap();

    // Direct delivery against the trigger source: one drain each is at the mercy of what else
    // the 2 cores do in that second (single pairs spread 0.87-1.46x), so they take turns, each
    // on a backlog of its own written by one insert of the same size, and the median of the
    // rounds' ratios is compared.
    let mut triggers = Vec::with_capacity(DRAIN_ROUNDS);
    let mut directs = Vec::with_capacity(DRAIN_ROUNDS);
    for round in 0..DRAIN_ROUNDS {
        triggers.push(trigger_round(pool, round, rows).await);
        directs.push(direct_round(pool, round, rows).await);
    }
    let (paired, each) = paired_ratio(&directs, &triggers);
    let (direct_drain, trigger_drain) = (median(&directs), median(&triggers));
    println!(
        "WAL direct delivery backlog drain, no-op action, {DRAIN_ROUNDS} rounds alternating with the trigger source's: median {direct_drain:.0} events/s (the trigger source's {trigger_drain:.0}), {paired:.3}x the trigger source's (median of the rounds' ratios: {each}), {:.2}x the relay's",
        direct_drain / drain
    );
    let (p50, p99, delivered) = latency_at(pool, url, arrivals, 1000, 10, true).await;
    println!(
        "WAL direct delivery commit-to-webhook latency at 1,000 changes/s: p50 {p50:.1} ms, p99 {p99:.1} ms ({:.1}% delivered; trigger p99 {trigger_p99:.1} ms)",
        delivered * 100.0
    );
}

/// A backlog for a drain: one insert of `rows` orders into `table`.
async fn backlog(pool: &PgPool, table: &str, rows: usize) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (total, status) SELECT random() * 200, 'paid' FROM generate_series(1, $1)"
    )))
    .bind(i64::try_from(rows).unwrap())
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until `count` reaches `rows`; rows/s since `started`.
async fn counted(count: &AtomicUsize, rows: usize, started: Instant) -> f64 {
    while count.load(Ordering::Relaxed) < rows {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

/// A no-op action counting what it runs in `count`.
fn noop_slot(count: Arc<AtomicUsize>) -> ActionSlot {
    ActionSlot::new(Arc::new(Noop(count)), "noop")
}

/// Drain rounds per source when direct delivery is compared with the trigger source.
const DRAIN_ROUNDS: usize = 5;

/// The trigger source's drain of a backlog its trigger wrote into an emptied change log (one
/// insert of `rows` rows, as for the first drain), by a listener that starts at the beginning.
async fn trigger_round(pool: &PgPool, round: usize, rows: usize) -> f64 {
    pool.execute("TRUNCATE observer_change_log; TRUNCATE observer_checkpoints")
        .await
        .unwrap();
    backlog(pool, "orders_drain", rows).await;
    let end = last_cursor(pool).await;
    let count = Arc::new(AtomicUsize::new(0));
    let slot = noop_slot(count.clone());
    let rate = drain(pool, &format!("drain-trigger-{round}"), slot, rows, end).await;
    assert_eq!(count.load(Ordering::Relaxed), rows);
    rate
}

/// Direct delivery's drain of a backlog written while nothing streams the slot, by a consumer
/// that starts after what was streamed before.
async fn direct_round(pool: &PgPool, round: usize, rows: usize) -> f64 {
    decode_from_here(pool).await;
    backlog(pool, "orders", rows).await;
    let count = Arc::new(AtomicUsize::new(0));
    let listener = direct_noop(pool, &format!("drain-direct-{round}"), count.clone());
    let (stop, rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(async move { listener.run(rx).await });
    let rate = counted(&count, rows, started).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(count.load(Ordering::Relaxed), rows);
    rate
}

/// A direct consumer of the default slot (`wal_delivery = "direct"`), checkpointed as
/// `{id}:wal`.
fn direct_consumer(pool: &PgPool, id: &str) -> WalDirect {
    WalDirect::new(
        pool.clone(),
        &db_url(),
        observers_postgres::wal::WalSettings::default(),
        id,
        None,
    )
    .unwrap()
}

/// A direct consumer that runs every event through a no-op action (counted in `count`).
fn direct_noop(pool: &PgPool, id: &str, count: Arc<AtomicUsize>) -> WalDirectListener {
    let observer =
        CompiledObserver::new("bench", "*", EventKind::ALL.to_vec()).with_action(noop_slot(count));
    let set = ObserverSet::new(vec![observer], RetryPolicy::none(), Duration::from_secs(10));
    let executor = Arc::new(
        ObserverExecutor::builder(set)
            .max_concurrent_actions(128)
            .build(),
    );
    WalDirectListener::new(direct_consumer(pool, id), executor, &listener_config(id))
}

/// The WAL source's relay on the default slot and publication.
fn relay(pool: &PgPool) -> observers_postgres::wal::WalRelay {
    observers_postgres::wal::WalRelay::new(
        pool.clone(),
        &db_url(),
        observers_postgres::wal::WalSettings::default(),
    )
    .unwrap()
}
