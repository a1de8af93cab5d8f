//! Broker actions end to end: `observers run` publishing captured changes to NATS JetStream and
//! RabbitMQ, inline and queued, through SIGKILLs of `run` and restarts of a private broker
//! (a nats-server or rabbitmq-server this test starts on free ports), and failures that reach
//! the DLQ. The shared brokers are the local ones (`NATS_URL`, `AMQP_URL` override them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::support::{TestDb, capture, cli, free_port, signal, spawn_run, wait_exit, write_config};

const LONG: Duration = Duration::from_secs(90);

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "obs-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Polls an async condition until it holds, failing the test after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_port(port: u16, what: &str) {
    eventually(what, LONG, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// The run's config: two actions per change (inline and queued), fast retries that outlast a
/// broker restart, and a breaker that probes again soon.
fn config(db: &TestDb, actions: &str) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "brokers"
batch_size = 20
poll_interval = "200ms"

[retry]
max_attempts = 60
initial_backoff = "50ms"
max_backoff = "500ms"

[breaker]
open_duration = "200ms"
max_open_duration = "1s"

[queue]
workers = 2
poll_interval = "200ms"
heartbeat_interval = "300ms"
stale_after = "2s"
initial_backoff = "100ms"
max_backoff = "1s"
max_attempts = 60

[dedup]
enabled = false

[[observers]]
name = "orders"
entity = "Order"
{actions}
"#,
        url = db.url
    )
}

async fn orders_db(tag: &str) -> TestDb {
    let db = TestDb::new(tag).await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, n int)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    db
}

/// Writes `entities` orders, then updates each `updates` times, paced so that kills and
/// restarts land mid-stream: `entities * (updates + 1)` changes.
fn writer(db: &TestDb, entities: i64, updates: i32) -> tokio::task::JoinHandle<()> {
    let pool = db.pool.clone();
    tokio::spawn(async move {
        for i in 0..entities {
            sqlx::query("INSERT INTO orders (id, n) VALUES ($1, 0)")
                .bind(i)
                .execute(&pool)
                .await
                .unwrap();
        }
        for step in 1..=updates {
            for i in 0..entities {
                sqlx::query("UPDATE orders SET n = $2 WHERE id = $1")
                    .bind(i)
                    .bind(step)
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The idempotency keys `{id}:orders:{action}` of changes `1..=changes`.
fn expected_keys(changes: i64, action: usize) -> BTreeSet<String> {
    (1..=changes)
        .map(|id| format!("{id}:orders:{action}"))
        .collect()
}

// ---------------------------------------------------------------- NATS

async fn jetstream_at(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .expect("NATS with JetStream must be reachable (NATS_URL)");
    jetstream::new(client)
}

async fn create_stream(js: &jetstream::Context, prefix: &str) -> jetstream::stream::Stream {
    js.create_stream(jetstream::stream::Config {
        name: prefix.replace('-', "_").to_uppercase(),
        subjects: vec![format!("{prefix}.>")],
        max_age: Duration::from_secs(900),
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Every stored message's `Nats-Msg-Id` per subject's second token (`inline`, `queued`), with
/// how often each id is stored.
async fn stored(stream: &mut jetstream::stream::Stream) -> BTreeMap<String, Vec<String>> {
    let count = stream.info().await.unwrap().state.last_sequence;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for seq in 1..=count {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let kind = msg.subject.split('.').nth(1).unwrap_or("").to_owned();
        let id = msg
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.entry(kind).or_default().push(id);
    }
    out
}

async fn stored_count(stream: &mut jetstream::stream::Stream) -> u64 {
    stream.info().await.map_or(0, |i| i.state.messages)
}

async fn wait_stored(stream: &jetstream::stream::Stream, at_least: u64, what: &str) {
    eventually(what, LONG, || {
        let mut s = stream.clone();
        async move { stored_count(&mut s).await >= at_least }
    })
    .await;
}

fn nats_actions(url: &str, prefix: &str) -> String {
    format!(
        r#"
  [[observers.actions]]
  type = "nats"
  url = "{url}"
  subject = "{prefix}.inline.{{{{ event_type }}}}"

  [[observers.actions]]
  type = "nats"
  url = "{url}"
  subject = "{prefix}.queued.{{{{ event_type }}}}"
  mode = "queued"
"#
    )
}

/// Each key stored exactly once, for both actions.
fn assert_exactly_once(by_kind: &BTreeMap<String, Vec<String>>, changes: i64) {
    for (kind, action) in [("inline", 0), ("queued", 1)] {
        let ids = by_kind.get(kind).cloned().unwrap_or_default();
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(
            unique,
            expected_keys(changes, action),
            "{kind}: every change stored"
        );
        assert_eq!(ids.len(), unique.len(), "{kind}: no change stored twice");
    }
}

/// kill -9 of `observers run` while changes stream in: the stream holds every change of both
/// actions exactly once, whatever was re-sent after the kills (Nats-Msg-Id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_exactly_once_through_sigkills_inline_and_queued() {
    let db = orders_db("nats_kill").await;
    let prefix = unique("e2e");
    let js = jetstream_at(&nats_url()).await;
    let mut stream = create_stream(&js, &prefix).await;
    // Every publish, duplicates included, as a plain subscriber sees them.
    let mut raw = async_nats::connect(nats_url())
        .await
        .unwrap()
        .subscribe(format!("{prefix}.>"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &nats_actions(&nats_url(), &prefix)));
    let log = dir.path().join("run.log");
    let (entities, updates) = (10, 14);
    let changes = entities * i64::from(updates + 1);
    let writing = writer(&db, entities, updates);
    for k in 0..3 {
        let mut run = spawn_run(&path, &log);
        let target = stored_count(&mut stream).await + 30;
        eventually("progress before the kill", LONG, || {
            let s = stream.clone();
            let done = writing.is_finished();
            async move {
                let mut s = s;
                done || stored_count(&mut s).await >= target
            }
        })
        .await;
        signal(&run, "KILL");
        wait_exit(&mut run, Duration::from_secs(10)).await;
        eprintln!("kill {k}: {} stored", stored_count(&mut stream).await);
    }
    writing.await.unwrap();
    let mut run = spawn_run(&path, &log);
    let want = u64::try_from(changes * 2).unwrap();
    wait_stored(&stream, want, "every change stored by both actions").await;
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    assert_exactly_once(&stored(&mut stream).await, changes);
    let mut published = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), raw.next()).await {
        published += 1;
    }
    eprintln!(
        "{published} publishes for {want} stored messages: {} re-sends dropped by the stream",
        published - want
    );
    assert!(published >= want);
}

/// A nats-server of the test's own (JetStream on a temp dir, a free port).
struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl NatsServer {
    async fn start(dir: &Path) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: dir.join("jetstream"),
            log: dir.join("nats-server.log"),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server must be on PATH (apt-get install nats-server)");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server to listen").await;
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGTERM (JetStream flushes and stops), then the same store and port again.
    async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            wait_exit(&mut child, Duration::from_secs(30)).await;
        }
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The broker restarts twice while changes stream in: every change of both actions is stored
/// exactly once (the attempts in between fail, are retried, and the connection comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarts_mid_stream_lose_nothing() {
    let db = orders_db("nats_restart").await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(dir.path()).await;
    let prefix = unique("restart");
    let mut stream = create_stream(&jetstream_at(&server.url()).await, &prefix).await;
    let path = write_config(&dir, &config(&db, &nats_actions(&server.url(), &prefix)));
    let log = dir.path().join("run.log");
    let mut run = spawn_run(&path, &log);
    let (entities, updates) = (10, 14);
    let changes = entities * i64::from(updates + 1);
    let writing = writer(&db, entities, updates);
    for round in 1..=2 {
        wait_stored(&stream, 60 * round, "progress before the restart").await;
        server.restart().await;
        eprintln!("restart {round} done");
        // The test's own handle reconnects as the run's does.
        stream = jetstream_at(&server.url())
            .await
            .get_stream(prefix.replace('-', "_").to_uppercase())
            .await
            .unwrap();
    }
    writing.await.unwrap();
    let want = u64::try_from(changes * 2).unwrap();
    wait_stored(&stream, want, "every change stored after the restarts").await;
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
    assert_exactly_once(&stored(&mut stream).await, changes);
    let dlq = cli(&db, &["dlq", "list", "--format", "json"]);
    let items: serde_json::Value = serde_json::from_slice(&dlq.stdout).unwrap();
    assert_eq!(
        items.as_array().map_or(0, Vec::len),
        0,
        "nothing dead-lettered: {items}"
    );
}

// ---------------------------------------------------------------- RabbitMQ

/// A direct exchange with durable queues `{name}.inline` and `{name}.queued`, bound by those
/// names. The connection is returned to be kept while the channel is used.
async fn exchange_and_queues(url: &str, name: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be reachable (AMQP_URL)");
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for kind in ["inline", "queued"] {
        let queue = format!("{name}.{kind}");
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongUInt(900_000));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                name.into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    (conn, channel)
}

fn rabbit_actions(url: &str, name: &str) -> String {
    format!(
        r#"
  [[observers.actions]]
  type = "rabbitmq"
  url = "{url}"
  exchange = "{name}"
  routing_key = "{name}.inline"

  [[observers.actions]]
  type = "rabbitmq"
  url = "{url}"
  exchange = "{name}"
  routing_key = "{name}.queued"
  mode = "queued"
"#
    )
}

/// Drains both queues into `seen` (message ids per queue kind, with repeats).
async fn drain(
    channel: &lapin::Channel,
    name: &str,
    seen: &mut BTreeMap<&'static str, Vec<String>>,
) {
    for kind in ["inline", "queued"] {
        let queue = format!("{name}.{kind}");
        while let Ok(Some(m)) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            let id = m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            seen.entry(kind).or_default().push(id);
        }
    }
}

/// The last lines of a log, for a failure message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn all_present(seen: &BTreeMap<&'static str, Vec<String>>, changes: i64) -> bool {
    [("inline", 0), ("queued", 1)].iter().all(|(kind, action)| {
        let got: BTreeSet<String> = seen.get(kind).into_iter().flatten().cloned().collect();
        expected_keys(changes, *action).is_subset(&got)
    })
}

fn report(seen: &BTreeMap<&'static str, Vec<String>>, changes: i64) {
    for (kind, ids) in seen {
        let unique: BTreeSet<&String> = ids.iter().collect();
        eprintln!(
            "{kind}: {} messages, {} distinct ids, {changes} changes",
            ids.len(),
            unique.len()
        );
    }
}

/// kill -9 of `observers run` while changes stream in: every change of both actions reaches
/// its queue at least once, each with its idempotency key as message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_at_least_once_through_sigkills_inline_and_queued() {
    let db = orders_db("amqp_kill").await;
    let name = unique("e2e");
    let (_conn, channel) = exchange_and_queues(&amqp_url(), &name).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rabbit_actions(&amqp_url(), &name)));
    let log = dir.path().join("run.log");
    let (entities, updates) = (10, 14);
    let changes = entities * i64::from(updates + 1);
    let writing = writer(&db, entities, updates);
    let mut seen = BTreeMap::new();
    for k in 0..3 {
        let mut run = spawn_run(&path, &log);
        let target = seen.values().map(Vec::len).sum::<usize>() + 30;
        let deadline = Instant::now() + LONG;
        while seen.values().map(Vec::len).sum::<usize>() < target && !writing.is_finished() {
            assert!(Instant::now() < deadline, "no progress before kill {k}");
            drain(&channel, &name, &mut seen).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        signal(&run, "KILL");
        wait_exit(&mut run, Duration::from_secs(10)).await;
    }
    writing.await.unwrap();
    let mut run = spawn_run(&path, &log);
    let deadline = Instant::now() + LONG;
    while !all_present(&seen, changes) {
        assert!(
            Instant::now() < deadline,
            "not every change arrived: {seen:?}"
        );
        drain(&channel, &name, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
    drain(&channel, &name, &mut seen).await;
    report(&seen, changes);
    for (kind, ids) in &seen {
        let valid: BTreeSet<String> = expected_keys(changes, usize::from(*kind == "queued"));
        assert!(
            ids.iter().all(|id| valid.contains(id)),
            "{kind}: every message carries its change's idempotency key"
        );
    }
}

/// The broker's own start script: Debian's `/usr/sbin/rabbitmq-server` switches to the
/// `rabbitmq` user and drops the environment that gives this instance its own node and ports.
fn rabbitmq_server() -> String {
    std::env::var("OBSERVERS_RABBITMQ_SERVER")
        .unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmq-server".into())
}

/// A rabbitmq-server of the test's own: its own node name, ports, database and logs.
struct RabbitServer {
    child: Option<Child>,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
}

impl RabbitServer {
    async fn start(dir: &Path) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dist_port: free_port(),
            dir: dir.join("rabbitmq"),
        };
        std::fs::create_dir_all(&server.dir).unwrap();
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let d = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("server.log"))
            .unwrap();
        let child = Command::new(rabbitmq_server())
            .env("RABBITMQ_NODENAME", format!("obs{}@localhost", self.port))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("HOME", d)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rabbitmq-server is needed (apt-get install rabbitmq-server)");
        self.child = Some(child);
        // The port opens before the broker accepts logins: wait for a connection.
        let url = self.url();
        eventually("rabbitmq-server to accept connections", LONG, || {
            let url = url.clone();
            async move {
                // A broker still starting can take the connection and never answer: each try
                // gets 5 s (lapin's connect has no deadline of its own).
                tokio::time::timeout(
                    Duration::from_secs(5),
                    Connection::connect(&url, ConnectionProperties::default()),
                )
                .await
                .is_ok_and(|c| c.is_ok())
            }
        })
        .await;
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the broker (SIGTERM to the Erlang VM, whose pid the broker wrote), then starts it
    /// again on the same database and port.
    async fn restart(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap();
        let pid = pid.trim().to_owned();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        eventually("rabbitmq-server to stop", LONG, || {
            let alive = Command::new("kill")
                .args(["-0", &pid])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            async move { !alive }
        })
        .await;
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.spawn().await;
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Event ids of the pending DLQ items of one action.
fn dead_lettered(db: &TestDb, action: usize) -> BTreeSet<i64> {
    let out = cli(
        db,
        &["dlq", "list", "--limit", "100000", "--format", "json"],
    );
    let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    items
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["action_index"] == action && i["status"] == "pending")
        .filter_map(|i| i["event"]["id"].as_i64())
        .collect()
}

/// The broker restarts (about ten seconds down) while changes stream in. The queued action's
/// jobs retry until it is back: every change arrives. The inline action retries until the
/// endpoint's breaker opens, then dead-letters: every change arrives or is in the DLQ, and
/// `dlq retry --all` delivers the rest. Persistent messages in the durable queues survive the
/// restart; the run makes a new connection and channels by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_mid_stream_loses_nothing() {
    let db = orders_db("amqp_restart").await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = RabbitServer::start(dir.path()).await;
    let name = unique("restart");
    let (conn, channel) = exchange_and_queues(&server.url(), &name).await;
    let path = write_config(&dir, &config(&db, &rabbit_actions(&server.url(), &name)));
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    let (entities, updates) = (10, 14);
    let changes = entities * i64::from(updates + 1);
    let writing = writer(&db, entities, updates);
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + LONG;
    while seen.values().map(Vec::len).sum::<usize>() < 40 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        drain(&channel, &name, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((channel, conn));
    server.restart().await;
    let conn = tokio::time::timeout(
        LONG,
        Connection::connect(&server.url(), ConnectionProperties::default()),
    )
    .await
    .expect("connecting to the restarted broker")
    .unwrap();
    let channel = conn.create_channel().await.unwrap();
    writing.await.unwrap();
    let inline_accounted = |seen: &BTreeMap<&'static str, Vec<String>>| {
        let delivered: BTreeSet<String> =
            seen.get("inline").into_iter().flatten().cloned().collect();
        let parked = dead_lettered(&db, 0);
        (1..=changes)
            .all(|id| parked.contains(&id) || delivered.contains(&format!("{id}:orders:0")))
    };
    let queued_all = |seen: &BTreeMap<&'static str, Vec<String>>| {
        let got: BTreeSet<String> = seen.get("queued").into_iter().flatten().cloned().collect();
        expected_keys(changes, 1).is_subset(&got)
    };
    let deadline = Instant::now() + LONG;
    while !(queued_all(&seen) && inline_accounted(&seen)) {
        if Instant::now() > deadline {
            report(&seen, changes);
            let out = cli(
                &db,
                &["dlq", "list", "--limit", "100000", "--format", "json"],
            );
            panic!(
                "changes neither delivered nor dead-lettered after the restart ({} parked); dlq list: {} {}; run log:\n{}",
                dead_lettered(&db, 0).len(),
                String::from_utf8_lossy(&out.stdout)
                    .chars()
                    .take(600)
                    .collect::<String>(),
                String::from_utf8_lossy(&out.stderr),
                log_tail(&dir.path().join("run.log"))
            );
        }
        drain(&channel, &name, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
    let parked = dead_lettered(&db, 0);
    eprintln!(
        "{} inline changes dead-lettered during the restart",
        parked.len()
    );
    if !parked.is_empty() {
        let out = cli(
            &db,
            &["dlq", "retry", "--all", "--config", path.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "dlq retry: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + LONG;
    while !all_present(&seen, changes) {
        assert!(
            Instant::now() < deadline,
            "dlq retry did not deliver the rest"
        );
        drain(&channel, &name, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report(&seen, changes);
}

/// A subject no stream captures and a message no queue takes: both are retried, then
/// dead-lettered with their codes, and `dlq list` shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_failures_reach_the_dlq() {
    let db = orders_db("brokers_dlq").await;
    let name = unique("dlq");
    let (_conn, _channel) = exchange_and_queues(&amqp_url(), &name).await;
    let actions = format!(
        r#"
  [[observers.actions]]
  type = "nats"
  url = "{nats}"
  subject = "{name}.nostream"

  [[observers.actions]]
  type = "rabbitmq"
  url = "{amqp}"
  exchange = "{name}"
  routing_key = "nobody.listens"
"#,
        nats = nats_url(),
        amqp = amqp_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let text = config(&db, &actions).replace("max_attempts = 60", "max_attempts = 2");
    let path = write_config(&dir, &text);
    let mut run = spawn_run(&path, &dir.path().join("run.log"));
    db.exec("INSERT INTO orders (id, n) VALUES (1, 1), (2, 2)")
        .await;
    let codes = || {
        let out = cli(&db, &["dlq", "list", "--format", "json"]);
        let items: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut codes: Vec<String> = items
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["error_code"].as_str().map(str::to_owned))
            .collect();
        codes.sort();
        codes
    };
    eventually("four DLQ items", LONG, || {
        let n = codes().len();
        async move { n >= 4 }
    })
    .await;
    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
    assert_eq!(
        codes(),
        [
            "OBS-AMQP-UNROUTABLE",
            "OBS-AMQP-UNROUTABLE",
            "OBS-NATS-NO-STREAM",
            "OBS-NATS-NO-STREAM"
        ]
    );
}
