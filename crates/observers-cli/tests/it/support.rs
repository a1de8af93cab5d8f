//! Shared pieces of the end-to-end tests: a fresh database per test, a real local webhook
//! receiver, `observers run` as a child process, and waiting on conditions with deadlines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use sqlx::{Connection, Executor, PgConnection, PgPool};

static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own, dropped at the end of the test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    /// The server's admin URL (the database is dropped through it).
    server: String,
}

impl TestDb {
    pub async fn new(tag: &str) -> Self {
        Self::new_on(&server_url(), tag).await
    }

    /// A database on the server with `wal_level = logical` (`OBSERVERS_WAL_DATABASE_URL`, set by
    /// `cargo xtask test`), or `None` after printing SKIPPED.
    pub async fn on_logical(tag: &str) -> Option<Self> {
        match std::env::var("OBSERVERS_WAL_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(Self::new_on(&url, tag).await),
            _ => {
                eprintln!(
                    "SKIPPED: OBSERVERS_WAL_DATABASE_URL is not set (cargo xtask test starts a \
                     PostgreSQL with wal_level = logical and sets it)"
                );
                None
            }
        }
    }

    async fn new_on(server: &str, tag: &str) -> Self {
        let name = format!(
            "obs_e2e_{tag}_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = PgConnection::connect(server)
            .await
            .expect("PostgreSQL must be reachable (DATABASE_URL)");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await
            .unwrap();
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let mut url = url::Url::parse(server).unwrap();
        url.set_path(&format!("/{name}"));
        let url = url.to_string();
        let pool = PgPool::connect(&url).await.unwrap();
        Self {
            name,
            url,
            pool,
            server: server.to_owned(),
        }
    }

    pub async fn exec(&self, sql: &str) {
        self.pool
            .execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = self.server.clone();
        // Best effort, outside the test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&server).await {
                    // A database with a replication slot cannot be dropped.
                    let _ = sqlx::query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                          WHERE database = $1 AND NOT active",
                    )
                    .bind(&name)
                    .execute(&mut admin)
                    .await;
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub body: serde_json::Value,
    pub webhook_id: String,
}

#[derive(Default)]
struct Inner {
    deliveries: Mutex<Vec<Delivery>>,
    failing: AtomicBool,
    attempts: AtomicUsize,
}

/// A webhook endpoint on 127.0.0.1 recording every successful delivery; `fail(true)` makes it
/// answer 503.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    inner: Arc<Inner>,
}

async fn hook(
    State(inner): State<Arc<Inner>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    inner.attempts.fetch_add(1, Ordering::SeqCst);
    if inner.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    inner.deliveries.lock().unwrap().push(Delivery {
        path: format!("/{path}"),
        body,
        webhook_id,
    });
    StatusCode::OK
}

impl Receiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/{*path}", post(hook))
            .with_state(inner.clone());
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", socket.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
        Self { base, inner }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.deliveries.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.inner.deliveries.lock().unwrap().len()
    }

    pub fn attempts(&self) -> usize {
        self.inner.attempts.load(Ordering::SeqCst)
    }

    pub fn fail(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// Deliveries per entity id, in arrival order.
    pub fn by_entity(&self, path: &str) -> HashMap<String, Vec<Delivery>> {
        let mut map: HashMap<String, Vec<Delivery>> = HashMap::new();
        for d in self.deliveries().into_iter().filter(|d| d.path == path) {
            map.entry(d.body["entity_id"].as_str().unwrap_or("").to_owned())
                .or_default()
                .push(d);
        }
        map
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a config file for `observers run` and returns its path (kept in a temp dir).
pub fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("observers.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `observers run`, killed if the test ends (or panics) without stopping it.
pub struct Run(pub Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Run {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Run {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// `observers run --config PATH` as a child process; its log goes to `log`.
pub fn spawn_run(config: &std::path::Path, log: &std::path::Path) -> Run {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Run)
        .unwrap()
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGSTOP, then waits until every thread of the child has stopped: `kill` returns once the
/// signal is queued, and a thread can still run (finish a request, write a checkpoint) for a
/// moment after, which a test that pauses a process to hold its work in flight cannot have.
pub async fn pause(child: &Child) {
    signal(child, "STOP");
    let tasks = format!("/proc/{}/task", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states: Vec<char> = std::fs::read_dir(&tasks)
            .map(|dir| {
                dir.filter_map(|t| {
                    let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                    stat.rsplit(')').next()?.trim().chars().next()
                })
                .collect()
            })
            .unwrap_or_default();
        if !states.is_empty() && states.iter().all(|s| matches!(s, 'T' | 't')) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{tasks} did not stop: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for a child to exit and returns its exit code.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client for the ops server (the workspace's reqwest leaves the TLS provider to us).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The JSON a command printed; it must have succeeded.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `observers ARGS` against `db` (its URL as `DATABASE_URL`); the output, whatever the exit code.
pub fn cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("OBSERVERS_CONFIG")
        .output()
        .unwrap()
}

/// `observers capture enable --table TABLE --entity ENTITY --id-column COLUMN`, which must succeed.
pub fn capture_with(db: &TestDb, table: &str, entity: &str, id_column: &str) {
    let out = cli(
        db,
        &[
            "capture",
            "enable",
            "--table",
            table,
            "--entity",
            entity,
            "--id-column",
            id_column,
        ],
    );
    assert!(
        out.status.success(),
        "capture enable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`capture_with`] on the `id` column.
pub fn capture(db: &TestDb, table: &str, entity: &str) {
    capture_with(db, table, entity, "id");
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
