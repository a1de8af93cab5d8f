//! HA end to end: several `observers run` processes on one database, each posting to its own
//! path of one webhook receiver (so deliveries can be told apart by instance). SIGKILL and
//! SIGSTOP/SIGCONT of the lease holder, and six partitions over three instances.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::support::{Run, TestDb, pause, signal, spawn_run, wait_exit};

const LONG: Duration = Duration::from_secs(60);
const TTL_SECS: u64 = 2;
const ENTITIES: usize = 24;
const VERSIONS: i64 = 8;

#[derive(Debug, Clone)]
pub(crate) struct Hit {
    instance: String,
    pub(crate) entity_id: String,
    version: i64,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    hits: Mutex<Vec<Hit>>,
    /// Requests from this instance wait for `release` before being answered.
    hold: Mutex<Option<String>>,
    release: Notify,
}

/// A webhook receiver recording, per request, which instance sent it (the URL path).
#[derive(Clone)]
pub(crate) struct Hooks {
    base: String,
    inner: Arc<Inner>,
}

async fn hook(
    State(inner): State<Arc<Inner>>,
    axum::extract::Path(instance): axum::extract::Path<String>,
    body: Bytes,
) -> StatusCode {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let hit = Hit {
        instance: instance.clone(),
        entity_id: body["entity_id"].as_str().unwrap_or("").to_owned(),
        version: body["data"]["version"].as_i64().unwrap_or(-1),
        at: Instant::now(),
    };
    let held = inner.hold.lock().unwrap().as_deref() == Some(instance.as_str());
    let released = inner.release.notified();
    inner.hits.lock().unwrap().push(hit);
    if held {
        released.await;
    }
    StatusCode::OK
}

impl Hooks {
    async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/ha/{instance}", post(hook))
            .with_state(inner.clone());
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", socket.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
        Self { base, inner }
    }

    fn hits(&self) -> Vec<Hit> {
        self.inner.hits.lock().unwrap().clone()
    }

    pub(crate) fn by(&self, instance: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.instance == instance)
            .collect()
    }

    fn delivered(&self, entity: &str, version: i64) -> bool {
        self.hits()
            .iter()
            .any(|h| h.entity_id == entity && h.version == version)
    }

    pub(crate) fn hold(&self, instance: Option<&str>) {
        *self.inner.hold.lock().unwrap() = instance.map(str::to_owned);
        if instance.is_none() {
            self.inner.release.notify_waiters();
        }
    }
}

/// One HA group at a time on the shared server: each runs several `observers run` processes with
/// pools of their own (up to 20 connections each), and a paused holder keeps its connections.
/// Two groups side by side could take the server's last connection slots from each other and
/// starve the instance a test waits on.
static ONE_GROUP_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) struct Group {
    pub(crate) db: TestDb,
    pub(crate) hooks: Hooks,
    dir: tempfile::TempDir,
    partitions: u32,
    /// `[source] kind = "wal"` (on the logical server), with a slot named after the database.
    wal: bool,
    /// Held for the group's life (see [`ONE_GROUP_AT_A_TIME`]); the last field, so it is
    /// released after the database is dropped. Tests declare the group before the instances
    /// they spawn, so those are stopped before it too.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Group {
    pub(crate) async fn new(tag: &str, partitions: u32) -> Self {
        let turn = ONE_GROUP_AT_A_TIME.lock().await;
        Self::start(turn, TestDb::new(tag).await, partitions, false).await
    }

    /// The same group on the WAL source; `None` (SKIPPED) without a logical server.
    pub(crate) async fn new_wal(tag: &str, partitions: u32) -> Option<Self> {
        let turn = ONE_GROUP_AT_A_TIME.lock().await;
        let db = TestDb::on_logical(tag).await?;
        Some(Self::start(turn, db, partitions, true).await)
    }

    /// `items` in `db`, captured with the group's config (the kind it names).
    async fn start(
        turn: tokio::sync::MutexGuard<'static, ()>,
        db: TestDb,
        partitions: u32,
        wal: bool,
    ) -> Self {
        db.exec("CREATE TABLE items (id text PRIMARY KEY, version int NOT NULL)")
            .await;
        let g = Self {
            db,
            hooks: Hooks::start().await,
            dir: tempfile::tempdir().unwrap(),
            partitions,
            wal,
            _turn: turn,
        };
        let out = g.cli(
            &["capture", "enable", "--table", "items", "--entity", "Item"],
            "a",
        );
        let kind = if wal { "kind wal" } else { "by trigger" };
        assert!(out.contains(kind), "{out}");
        g
    }

    fn config(&self, instance: &str) -> PathBuf {
        let text = format!(
            r#"
[source]
database_url = "{url}"
listener_id = "ha"
batch_size = 20
poll_interval = "100ms"
partitions = {partitions}
{wal}
[executor]
action_timeout = "60s"

[retry]
max_attempts = 1

[dedup]
enabled = false

[ha]
enabled = true
group = "test"
instance_id = "{instance}"
lease_ttl = "{TTL_SECS}s"
renew_interval = "300ms"

[[observers]]
name = "items"
entity = "Item"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/ha/{instance}"
"#,
            url = self.db.url,
            partitions = self.partitions,
            base = self.hooks.base,
            wal = if self.wal {
                format!(
                    "kind = \"wal\"\nslot = \"{0}\"\npublication = \"{0}_pub\"\n",
                    self.db.name
                )
            } else {
                String::new()
            },
        );
        let path = self.dir.path().join(format!("{instance}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(crate) fn spawn(&self, instance: &str) -> Run {
        spawn_run(&self.config(instance), &self.log(instance))
    }

    /// Runs `observers ARGS --config <instance's config>`; returns its standard output.
    fn cli(&self, args: &[&str], instance: &str) -> String {
        let config = self.config(instance);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_observers"))
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .env_remove("OBSERVERS_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "observers {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn log(&self, instance: &str) -> PathBuf {
        self.dir.path().join(format!("{instance}.log"))
    }

    fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub(crate) async fn write(&self, id: &str, version: i64) {
        sqlx::query(
            "INSERT INTO items (id, version) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
        )
        .bind(id)
        .bind(i32::try_from(version).unwrap())
        .execute(self.pool())
        .await
        .unwrap();
    }

    /// Versions `versions` of every entity `e0`..: each version of all entities before the next.
    pub(crate) async fn write_versions(&self, versions: std::ops::RangeInclusive<i64>) {
        for v in versions {
            for e in 0..ENTITIES {
                self.write(&format!("e{e}"), v).await;
            }
        }
    }

    /// Partition → holder, for live partition leases.
    pub(crate) async fn holders(&self) -> BTreeMap<u32, String> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, holder FROM observer_leases \
             WHERE name LIKE 'observers/test/ha/partition/%' AND holder IS NOT NULL \
               AND expires_at > now()",
        )
        .fetch_all(self.pool())
        .await
        .unwrap_or_default();
        rows.into_iter()
            .filter_map(|(n, h)| Some((n.rsplit('/').next()?.parse().ok()?, h)))
            .collect()
    }

    async fn checkpoint(&self, name: &str) -> Option<(i64, Option<i64>, Option<String>)> {
        sqlx::query_as(
            "SELECT cursor_id, lease_epoch, updated_by FROM observer_checkpoints \
             WHERE listener_id = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .unwrap()
    }
}

/// Samples a checkpoint until finished, failing if it ever moves backwards.
struct CheckpointWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u32>,
}

impl CheckpointWatch {
    fn start(pool: PgPool, name: &'static str) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut last = 0i64;
            let mut samples = 0u32;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let row: Option<i64> = sqlx::query_scalar(
                    "SELECT cursor_id FROM observer_checkpoints \
                     WHERE listener_id = $1",
                )
                .bind(name)
                .fetch_optional(&pool)
                .await
                .unwrap();
                if let Some(c) = row {
                    assert!(c >= last, "checkpoint moved backwards: {last:?} → {c:?}");
                    last = c;
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples
        });
        Self { stop, task }
    }

    /// Stops sampling; returns how many samples saw a checkpoint.
    async fn finish(self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

pub(crate) async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_fails_over_within_two_lease_periods_and_loses_nothing() {
    let g = Group::new("ha_kill", 1).await;
    let mut a = g.spawn("a");
    until("a holds the partition", async || {
        g.holders().await.get(&0).map(String::as_str) == Some("a")
    })
    .await;
    let mut b = g.spawn("b");
    until("b registered", async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM observer_listeners WHERE instance_id = 'b')",
        )
        .fetch_one(g.pool())
        .await
        .unwrap()
    })
    .await;
    for i in 0..10 {
        g.write(&format!("k{i}"), 1).await;
    }
    until("a delivers the first ten", async || {
        g.hooks.by("a").len() >= 10
    })
    .await;
    assert!(g.hooks.by("b").is_empty(), "the standby delivers nothing");

    let (last_renewal, epoch_a): (f64, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM renewed_at)::float8, epoch FROM observer_leases \
         WHERE name = 'observers/test/ha/partition/0'",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    signal(&a, "KILL");
    a.wait().unwrap();
    g.write("next", 1).await;
    until("b delivers the next change", async || {
        g.hooks.by("b").iter().any(|h| h.entity_id == "next")
    })
    .await;
    // Measured on the database clock, from the dead holder's last renewal to the takeover.
    let (acquired, epoch_b): (f64, i64) = sqlx::query_as(
        "SELECT extract(epoch FROM acquired_at)::float8, epoch FROM observer_leases \
         WHERE name = 'observers/test/ha/partition/0'",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    let takeover = acquired - last_renewal;
    assert!(epoch_b > epoch_a);
    #[allow(clippy::cast_precision_loss)]
    let two_periods = (2 * TTL_SECS) as f64;
    assert!(
        takeover <= two_periods,
        "takeover {takeover:.2}s after the last renewal, more than two lease periods"
    );
    for i in 0..10 {
        assert!(g.hooks.delivered(&format!("k{i}"), 1), "k{i} lost");
    }
    signal(&b, "TERM");
    assert_eq!(wait_exit(&mut b, Duration::from_secs(10)).await, Some(0));
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM observer_leases WHERE holder = 'b' AND expires_at > now()",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    assert_eq!(left, 0, "b released its leases on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_is_fenced_and_steps_down() {
    let g = Group::new("ha_pause", 1).await;
    let a = g.spawn("a");
    until("a holds the partition", async || {
        g.holders().await.get(&0).map(String::as_str) == Some("a")
    })
    .await;
    let mut b = g.spawn("b");
    for i in 0..5 {
        g.write(&format!("k{i}"), 1).await;
    }
    until("a delivers the first five", async || {
        g.hooks.by("a").len() >= 5
    })
    .await;

    // Watch the checkpoint for the rest of the test: it must never move backwards.
    let watch = CheckpointWatch::start(g.pool().clone(), "ha");

    // a is paused in the middle of a delivery: the receiver has its request for `x`.
    g.hooks.hold(Some("a"));
    g.write("x", 1).await;
    until("a's request for x", async || {
        g.hooks.by("a").iter().any(|h| h.entity_id == "x")
    })
    .await;
    pause(&a).await;
    g.hooks.hold(None);
    let a_before = g.hooks.by("a").len();
    until("b takes the partition over", async || {
        g.holders().await.get(&0).map(String::as_str) == Some("b")
    })
    .await;
    for i in 0..3 {
        g.write(&format!("y{i}"), 1).await;
    }
    until("b delivers x and the new changes", async || {
        let b = g.hooks.by("b");
        ["x", "y0", "y1", "y2"]
            .iter()
            .all(|e| b.iter().any(|h| h.entity_id == *e))
    })
    .await;
    until("b's checkpoint covers y2", async || {
        g.checkpoint("ha")
            .await
            .is_some_and(|c| c.2.as_deref() == Some("b"))
    })
    .await;

    let woke = Instant::now();
    signal(&a, "CONT");
    // a wakes with its in-flight delivery finishing and its renewal overdue. Whichever runs
    // first decides how a learns it lost the partition: its checkpoint write is fenced, or its
    // renewal is refused and its listener stops before it writes. Both are the lease's fence.
    until(
        "a reports its fenced checkpoint write or its lost lease",
        async || {
            let log = log_text(&g.log("a"));
            log.contains("not saved: lease") || log.contains("partition lease lost")
        },
    )
    .await;
    until("a stepped down", async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM observer_listeners WHERE instance_id = 'a' \
               AND partitions = '{}' AND last_heartbeat > now() - interval '1 second')",
        )
        .fetch_one(g.pool())
        .await
        .unwrap()
    })
    .await;
    g.write("z", 1).await;
    until("b delivers z", async || {
        g.hooks.by("b").iter().any(|h| h.entity_id == "z")
    })
    .await;
    let after_wake: Vec<Hit> = g
        .hooks
        .by("a")
        .into_iter()
        .filter(|h| h.at >= woke)
        .collect();
    assert!(
        after_wake.is_empty(),
        "a delivered after waking: {after_wake:?}"
    );
    assert_eq!(g.hooks.by("a").len(), a_before);
    let cp = g.checkpoint("ha").await.unwrap();
    let epoch_b: i64 = sqlx::query_scalar(
        "SELECT epoch FROM observer_leases WHERE name = 'observers/test/ha/partition/0'",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    assert_eq!(cp.1, Some(epoch_b), "the checkpoint is b's");
    assert!(watch.finish().await > 0);
    signal(&b, "TERM");
    assert_eq!(wait_exit(&mut b, Duration::from_secs(10)).await, Some(0));
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_six_partitions_and_survive_a_kill() {
    let g = Group::new("ha_parts", 6).await;
    let mut runs: HashMap<&str, Run> = ["a", "b", "c"]
        .into_iter()
        .map(|i| (i, g.spawn(i)))
        .collect();
    let balanced = async |ids: &[&str]| {
        let h = g.holders().await;
        let counts: Vec<usize> = ids
            .iter()
            .map(|i| h.values().filter(|x| x == i).count())
            .collect();
        h.len() == 6
            && h.values().all(|x| ids.contains(&x.as_str()))
            && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
    };
    until("six partitions held, balanced over three", async || {
        balanced(&["a", "b", "c"]).await
    })
    .await;

    g.write_versions(1..=VERSIONS / 2).await;
    until("every instance delivers", async || {
        ["a", "b", "c"].iter().all(|i| !g.hooks.by(i).is_empty())
    })
    .await;
    let c_had: Vec<u32> = g
        .holders()
        .await
        .into_iter()
        .filter(|(_, h)| h == "c")
        .map(|(p, _)| p)
        .collect();
    let mut c = runs.remove("c").unwrap();
    signal(&c, "KILL");
    c.wait().unwrap();
    g.write_versions(VERSIONS / 2 + 1..=VERSIONS).await;
    until("c's partitions move to a and b", async || {
        balanced(&["a", "b"]).await
    })
    .await;
    let moved = g.holders().await;
    assert!(c_had.iter().all(|p| moved[p] != "c"));
    until("every version of every entity delivered", async || {
        (0..ENTITIES).all(|e| (1..=VERSIONS).all(|v| g.hooks.delivered(&format!("e{e}"), v)))
    })
    .await;

    assert_entity_order(&g.hooks.hits());
    check_status(&g);
    runs.insert("d", join_and_rebalance(&g).await);

    for (_, mut run) in runs {
        signal(&run, "TERM");
        assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));
    }
    // Every partition has its own cursor, and prune keeps what any of them has not passed.
    let cursors: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM observer_checkpoints WHERE listener_id LIKE 'ha#p%'",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    assert_eq!(cursors, 6);
    g.write("unread", 1).await;
    let unread_before = unread_rows(g.pool()).await;
    assert!(unread_before >= 1);
    g.cli(&["changelog", "prune"], "a");
    assert_eq!(
        unread_rows(g.pool()).await,
        unread_before,
        "prune kept unread rows"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM observer_change_log")
        .fetch_one(g.pool())
        .await
        .unwrap();
    assert!(
        total < i64::try_from(ENTITIES).unwrap() * VERSIONS,
        "prune deleted read rows"
    );
}

/// The WAL source under HA with partitions: three instances share six partitions, the leader
/// (the one running the relay) is killed with SIGKILL mid-stream; the survivors take its
/// partitions, one of them starts the relay from the progress row, and every version of every
/// entity is delivered, in order per entity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_source_partitions_survive_a_kill_of_the_relaying_leader() {
    let Some(g) = Group::new_wal("ha_wal", 6).await else {
        return;
    };
    let mut runs: HashMap<&str, Run> = ["a", "b", "c"]
        .into_iter()
        .map(|i| (i, g.spawn(i)))
        .collect();
    until("six partitions held by three", async || {
        let h = g.holders().await;
        h.len() == 6 && ["a", "b", "c"].iter().all(|i| h.values().any(|x| x == i))
    })
    .await;
    g.write_versions(1..=VERSIONS / 2).await;
    until("every instance delivers", async || {
        ["a", "b", "c"].iter().all(|i| !g.hooks.by(i).is_empty())
    })
    .await;
    let leader: String = sqlx::query_scalar(
        "SELECT instance_id FROM observer_listeners WHERE group_name = 'test' AND is_leader",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    let relaying = |i: &str| log_text(&g.log(i)).contains("starting the WAL relay");
    assert!(relaying(&leader), "the leader {leader} runs the relay");
    let mut killed = runs.remove(leader.as_str()).unwrap();
    signal(&killed, "KILL");
    killed.wait().unwrap();
    g.write_versions(VERSIONS / 2 + 1..=VERSIONS).await;
    until("another instance takes over the relay", async || {
        runs.keys().any(|i| relaying(i))
    })
    .await;
    until("every version of every entity delivered", async || {
        (0..ENTITIES).all(|e| (1..=VERSIONS).all(|v| g.hooks.delivered(&format!("e{e}"), v)))
    })
    .await;
    assert_entity_order(&g.hooks.hits());
    for (_, mut run) in runs {
        signal(&run, "TERM");
        assert_eq!(wait_exit(&mut run, Duration::from_secs(15)).await, Some(0));
    }
}

/// A fourth instance joins: partitions are rebalanced over three again, it takes its share and
/// delivers the next changes.
async fn join_and_rebalance(g: &Group) -> Run {
    let d = g.spawn("d");
    until("six partitions balanced over a, b and d", async || {
        let h = g.holders().await;
        let count = |i: &str| h.values().filter(|x| *x == i).count();
        h.len() == 6 && ["a", "b", "d"].iter().all(|i| count(i) == 2)
    })
    .await;
    for e in 0..ENTITIES {
        g.write(&format!("e{e}"), VERSIONS + 1).await;
    }
    until("the changes after the join delivered", async || {
        (0..ENTITIES).all(|e| g.hooks.delivered(&format!("e{e}"), VERSIONS + 1))
    })
    .await;
    let by_d = g.hooks.by("d");
    assert!(!by_d.is_empty(), "d delivers its partitions' changes");
    assert!(by_d.iter().all(|h| h.version == VERSIONS + 1), "{by_d:?}");
    d
}

/// Per entity: each instance delivered in increasing order, and the first deliveries of the
/// versions came in order.
fn assert_entity_order(hits: &[Hit]) {
    for e in 0..ENTITIES {
        let id = format!("e{e}");
        let mine: Vec<&Hit> = hits.iter().filter(|h| h.entity_id == id).collect();
        for inst in ["a", "b", "c"] {
            let seq: Vec<i64> = mine
                .iter()
                .filter(|h| h.instance == inst)
                .map(|h| h.version)
                .collect();
            assert!(
                seq.windows(2).all(|w| w[0] < w[1]),
                "{id} via {inst}: {seq:?}"
            );
        }
        let mut firsts = Vec::new();
        for h in &mine {
            if !firsts.contains(&h.version) {
                firsts.push(h.version);
            }
        }
        assert_eq!(firsts, (1..=VERSIONS).collect::<Vec<_>>(), "{id}");
    }
}

/// `observers ha status` shows the leader, the six leases with epochs and the lag per partition.
fn check_status(g: &Group) {
    let status = g.cli(&["ha", "status", "--format", "json"], "a");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(["a", "b"].contains(&status["leader"]["holder"].as_str().unwrap()));
    assert_eq!(status["leases"].as_array().unwrap().len(), 6, "{status}");
    assert_eq!(status["lag"].as_array().unwrap().len(), 6, "{status}");
    assert!(status["leases"][0]["epoch"].as_i64().unwrap() >= 1);
    let text = g.cli(&["ha", "status"], "a");
    assert!(
        text.contains("leader: ") && text.contains("ha#p5"),
        "{text}"
    );
}

/// Change-log rows some partition has not passed yet.
async fn unread_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM observer_change_log l JOIN observer_checkpoints c \
           ON c.listener_id = 'ha#p' || ((hashtextextended(l.entity_id, 0) & 9223372036854775807) % 6) \
         WHERE l.id > c.cursor_id",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The ops server of an HA instance: `/ready` checks its group membership and `/status` carries
/// the group (leader, instances, leases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_server_reports_group_membership() {
    let g = Group::new("ha_ops", 2).await;
    let port = crate::support::free_port();
    let config = g.config("a");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    g.write("m", 1).await;
    let mut a = spawn_run(&config, &g.log("a"));
    let base = format!("http://127.0.0.1:{port}");
    let http = crate::support::http_client();
    let mut ready = serde_json::Value::Null;
    until("/ready reports a as a live member", async || {
        let Ok(r) = http.get(format!("{base}/ready")).send().await else {
            return false;
        };
        let ok = r.status() == 200;
        ready = r.json().await.unwrap_or_default();
        ok && ready["checks"]["lease"]["ok"] == true
    })
    .await;
    assert_eq!(ready["checks"]["lease"]["detail"]["instance"], "a");
    until("a holds both partitions", async || {
        g.holders().await.len() == 2
    })
    .await;
    let status: serde_json::Value = http
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let group = &status["group"];
    assert_eq!(group["group"], "test", "{status}");
    assert_eq!(group["leader"]["holder"], "a", "{status}");
    assert_eq!(group["instances"][0]["instance_id"], "a", "{status}");
    assert_eq!(
        group["leases"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    // Partitioned, backlog and lag are per partition cursor (the leader's report); the
    // consumer name itself has no cursor and must not count the whole change log (`m`, written
    // before a started) as its backlog.
    until("a delivers m", async || {
        g.hooks.by("a").iter().any(|h| h.entity_id == "m")
    })
    .await;
    let mut text = String::new();
    until("per-partition lag in /metrics", async || {
        let Ok(r) = http.get(format!("{base}/metrics")).send().await else {
            return false;
        };
        text = r.text().await.unwrap_or_default();
        text.contains("observer_source_backlog{listener=\"ha\"}")
            && (0..2).all(|p| {
                text.contains(&format!(
                    "observer_checkpoint_lag_seconds{{listener=\"ha#p{p}\"}}"
                ))
            })
    })
    .await;
    let consumer_backlog: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("observer_source_backlog{listener=\"ha\"}"))
        .collect();
    assert!(
        consumer_backlog.iter().all(|l| l.ends_with(" 0")),
        "{consumer_backlog:?}"
    );
    signal(&a, "TERM");
    assert_eq!(wait_exit(&mut a, LONG).await, Some(0));
}

/// Whether partition `p` of `n` has read every change-log row of its entities.
async fn caught_up(pool: &PgPool, p: u32, n: u32) -> bool {
    sqlx::query_scalar(
        "SELECT NOT EXISTS ( \
           SELECT 1 FROM observer_change_log l \
           LEFT JOIN observer_checkpoints c ON c.listener_id = $1 \
           WHERE (hashtextextended(l.entity_id, 0) & 9223372036854775807) % $2 = $3 \
             AND (c.listener_id IS NULL \
                  OR l.id > c.cursor_id))",
    )
    .bind(format!("ha#p{p}"))
    .bind(i64::from(n))
    .bind(i64::from(p))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Two instances share `from` partitions; b's deliveries hang, so at the SIGKILL of both its
/// partitions lag far behind a's (which have read everything). More versions are written while
/// the group is down, then a alone restarts with `to` partitions: entities move between
/// partitions, and every written version must still be delivered at least once.
async fn repartition_delivers_every_event(tag: &str, from: u32, to: u32) {
    let mut g = Group::new(tag, from).await;
    let mut a = g.spawn("a");
    until("a holds every partition", async || {
        g.holders().await.len() == usize::try_from(from).unwrap()
    })
    .await;
    let mut b = g.spawn("b");
    let half = from / 2;
    until(
        "a keeps the lower half, b takes the upper half",
        async || {
            let h = g.holders().await;
            (0..from)
                .all(|p| h.get(&p).map(String::as_str) == Some(if p < half { "a" } else { "b" }))
        },
    )
    .await;
    g.hooks.hold(Some("b"));
    for e in 0..ENTITIES {
        g.write(&format!("e{e}"), 1).await;
    }
    until("a's partitions read everything", async || {
        for p in 0..half {
            if !caught_up(g.pool(), p, from).await {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        !caught_up(g.pool(), from - 1, from).await,
        "b's partitions lag behind"
    );
    signal(&a, "KILL");
    signal(&b, "KILL");
    a.wait().unwrap();
    b.wait().unwrap();
    g.hooks.hold(None);
    for e in 0..ENTITIES {
        g.write(&format!("e{e}"), 2).await;
    }
    g.partitions = to;
    let mut a = g.spawn("a");
    until(
        "every written version delivered after the repartition",
        async || (0..ENTITIES).all(|e| (1..=2).all(|v| g.hooks.delivered(&format!("e{e}"), v))),
    )
    .await;
    // The old layout's checkpoints are gone, the handover is on record.
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT listener_id FROM observer_checkpoints WHERE listener_id LIKE 'ha%' \
         ORDER BY listener_id",
    )
    .fetch_all(g.pool())
    .await
    .unwrap();
    let expected: Vec<String> = (0..to).map(|p| format!("ha#p{p}")).collect();
    assert_eq!(names, expected);
    let moves: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM observer_checkpoints_history WHERE reason LIKE '%partitions%'",
    )
    .fetch_one(g.pool())
    .await
    .unwrap();
    assert!(moves >= i64::from(from.max(to)), "{moves} moves recorded");
    signal(&a, "TERM");
    assert_eq!(wait_exit(&mut a, Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_to_two_partitions_skips_nothing() {
    repartition_delivers_every_event("ha_rep_down", 4, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_to_four_partitions_skips_nothing() {
    repartition_delivers_every_event("ha_rep_up", 2, 4).await;
}

/// `[metrics]` on `port` and a fast `[retention]` of resolved DLQ items, added to an instance's
/// config; returns the path.
fn with_retention(g: &Group, instance: &str, port: u16) -> PathBuf {
    let config = g.config(instance);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[retention]\ndlq_resolved = \"1h\"\ninterval = \"50ms\"\nbatch = 1\n"
        ),
    )
    .unwrap();
    config
}

/// The `/metrics` of the instance on `port`.
async fn scrape_port(port: u16) -> observers_metrics::Scrape {
    let text = crate::support::http_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    observers_metrics::Scrape::parse(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_applies_retention() {
    let g = Group::new("ha_retention", 1).await;
    let (pa, pb) = (crate::support::free_port(), crate::support::free_port());
    let config_a = with_retention(&g, "a", pa);
    let _a = spawn_run(&config_a, &g.log("a"));
    until("a leads", async || g.holders().await.len() == 1).await;
    let config_b = with_retention(&g, "b", pb);
    let _b = spawn_run(&config_b, &g.log("b"));
    until("b is a live member", async || {
        let r = crate::support::http_client()
            .get(format!("http://127.0.0.1:{pb}/ready"))
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    g.db.exec(
        "INSERT INTO observer_dlq_items (event_id, entity_type, entity_id, event, observer, action_index, action_type, error_code, error, status, created_at)
         SELECT i, 'Item', i::text, '{}', 'o', 0, 'webhook', 'E', 'e', 'resolved', now() - interval '2 days'
           FROM generate_series(1, 6) i",
    )
    .await;
    until("the old resolved items are gone", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM observer_dlq_items")
            .fetch_one(g.pool())
            .await
            .unwrap()
            == 0
    })
    .await;
    let deleted = |s: &observers_metrics::Scrape| {
        s.sum(
            "observer_retention_deleted_total",
            &[("table", "dlq_resolved")],
        )
    };
    until("a counted all six", async || {
        deleted(&scrape_port(pa).await) >= 6.0
    })
    .await;
    // Every pass sets the oldest-row gauge of each table, deletions or not: b, a member for all
    // that time, has run none.
    let b = scrape_port(pb).await;
    assert!(
        b.select("observer_retention_oldest_row_age_seconds", &[])
            .next()
            .is_none(),
        "b is not the leader and runs no retention pass: {b:?}"
    );
    assert!(deleted(&b).abs() < f64::EPSILON);
}
