//! Hostile input and brief database trouble against `observers run`: every event's outcome is
//! recorded before it is acknowledged, whatever the endpoint answers or the database refuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;

use crate::support::{TestDb, capture, cli, spawn_run, wait_until, write_config};

const LONG: Duration = Duration::from_secs(60);

/// An endpoint that answers every request with `status` and `body`, counting requests.
struct Hostile {
    base: String,
    hits: Arc<AtomicUsize>,
}

impl Hostile {
    async fn start(status: StatusCode, body: &'static [u8]) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    (status, body)
                }
            }),
        );
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", socket.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
        Self { base, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A config with dedup on (its default), one webhook to `base`, quick retries.
fn config(db: &TestDb, base: &str) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "hardening"
batch_size = 50
poll_interval = "100ms"

[retry]
max_attempts = 2
initial_backoff = "10ms"
max_backoff = "50ms"

[[observers]]
name = "orders"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/orders"
"#,
        url = db.url,
    )
}

fn dlq_items(db: &TestDb) -> Vec<serde_json::Value> {
    let out = cli(db, &["dlq", "list", "--format", "json"]);
    assert!(
        out.status.success(),
        "dlq list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match v {
        serde_json::Value::Array(items) => items,
        other => other["items"].as_array().cloned().unwrap_or_default(),
    }
}

async fn setup(tag: &str) -> TestDb {
    let db = TestDb::new(tag).await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    db
}

/// A `400` whose body holds a NUL byte: PostgreSQL rejects `\0` in text, so a DLQ write of the
/// raw error text fails. Every event must still end in the DLQ (with a storable error text), and
/// none may be acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_body_with_a_nul_byte_still_reaches_the_dlq() {
    let db = setup("nulbody").await;
    let hostile = Hostile::start(StatusCode::BAD_REQUEST, b"bad\0request \xff\xfe").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &hostile.base));
    let _run = spawn_run(&path, &dir.path().join("run.log"));
    for i in 1..=5 {
        db.exec(&format!("INSERT INTO orders VALUES ({i}, {i})"))
            .await;
    }
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while items.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 5 events reached the DLQ; log:\n{}",
            items.len(),
            std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        items = dlq_items(&db);
    }
    for item in &items {
        let error = item.get("error").and_then(|v| v.as_str()).unwrap();
        assert!(error.contains("400"), "{error}");
        assert!(!error.contains('\0'), "{error:?}");
    }
}

/// The DLQ table is unavailable for a while as an endpoint fails: the events are not
/// acknowledged meanwhile, and once the table is back every one of them is dead-lettered (the
/// same process re-reads them and must not take its own stale claims for duplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_outage_delays_but_never_loses_failed_events() {
    let db = setup("dlqoutage").await;
    let hostile = Hostile::start(StatusCode::BAD_REQUEST, b"rejected").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &hostile.base));
    let _run = spawn_run(&path, &dir.path().join("run.log"));
    // Wait for the listener to be up (the schema is in place), then take the DLQ away.
    db.exec("INSERT INTO orders VALUES (0, 0)").await;
    let deadline = tokio::time::Instant::now() + LONG;
    while dlq_items(&db).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "listener never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.exec("ALTER TABLE observer_dlq_items RENAME TO observer_dlq_away")
        .await;
    let before = hostile.hits();
    for i in 1..=5 {
        db.exec(&format!("INSERT INTO orders VALUES ({i}, {i})"))
            .await;
    }
    // Each event is tried, fails, and its DLQ write fails; let it be re-read a few times.
    wait_until("the failing events to be tried repeatedly", LONG, || {
        hostile.hits() >= before + 15
    })
    .await;
    db.exec("ALTER TABLE observer_dlq_away RENAME TO observer_dlq_items")
        .await;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let ids: std::collections::BTreeSet<String> = dlq_items(&db)
            .iter()
            .filter_map(|i| {
                i.pointer("/event/entity_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .collect();
        if (0..=5).all(|i| ids.contains(&i.to_string())) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events lost: the DLQ holds only {ids:?}; log:\n{}",
            std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An endpoint where some paths are gone (410) and the others accept, recording what it got.
#[derive(Clone, Default)]
struct Resources {
    gone: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    got: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Resources {
    async fn start(&self) -> String {
        let me = self.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            post(
                move |axum::extract::Path(path): axum::extract::Path<String>| {
                    let me = me.clone();
                    async move {
                        let path = format!("/{path}");
                        if me.gone.lock().unwrap().contains(&path) {
                            return StatusCode::GONE;
                        }
                        me.got.lock().unwrap().push(path);
                        StatusCode::OK
                    }
                },
            ),
        );
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", socket.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
        base
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

/// One `410` from `/orders/1` disables that URL only: other orders keep being delivered, later
/// changes of order 1 go to the DLQ (not skipped), `status` and `actions list` show the URL,
/// and `actions enable --url` makes the running instance deliver to it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_only_the_url_that_answered_it() {
    let db = setup("gone").await;
    let resources = Resources::default();
    resources.gone.lock().unwrap().insert("/orders/1".into());
    let base = resources.start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&db, &base).replace("/hooks/orders", "/orders/{{ entity_id }}");
    let path = write_config(&dir, &text);
    let _run = spawn_run(&path, &dir.path().join("run.log"));

    db.exec("INSERT INTO orders VALUES (1, 10)").await;
    wait_until("order 1 to be dead-lettered", LONG, || {
        !dlq_items(&db).is_empty()
    })
    .await;
    db.exec("INSERT INTO orders VALUES (2, 20)").await;
    db.exec("UPDATE orders SET total = 11 WHERE id = 1").await;
    db.exec("INSERT INTO orders VALUES (3, 30)").await;
    wait_until("orders 2 and 3 to be delivered", LONG, || {
        resources.got() == ["/orders/2", "/orders/3"]
    })
    .await;
    wait_until("the update of order 1 to be dead-lettered", LONG, || {
        dlq_items(&db).len() == 2
    })
    .await;
    let target = format!("{base}/orders/1");
    let status = cli(&db, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains(&target), "{status}");
    let listed: serde_json::Value =
        serde_json::from_slice(&cli(&db, &["actions", "list", "--format", "json"]).stdout).unwrap();
    assert_eq!(listed[0]["target"], target.as_str());

    resources.gone.lock().unwrap().clear();
    let enable = cli(&db, &["actions", "enable", "--url", &target]);
    assert!(
        enable.status.success(),
        "{}",
        String::from_utf8_lossy(&enable.stderr)
    );
    db.exec("UPDATE orders SET total = 12 WHERE id = 1").await;
    wait_until("order 1 to be delivered again", LONG, || {
        resources.got().contains(&"/orders/1".to_owned())
    })
    .await;
    let unknown = cli(&db, &["actions", "enable", "--url", &target]);
    assert_eq!(unknown.status.code(), Some(2), "no longer disabled");
}
