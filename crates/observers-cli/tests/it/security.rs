//! Security properties of `observers run` that only a whole process shows: the environment's
//! proxy settings are ignored unless `[outbound] proxy` says otherwise.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Receiver, Run, TestDb, capture, cli, wait_until, write_config};

/// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` point at a port where nothing listens: a client that
/// honoured them could not deliver at all (and a real proxy would see every row). Deliveries
/// still arrive, straight from the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_proxies_are_ignored_without_outbound_proxy() {
    let db = TestDb::new("envproxy").await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric)")
        .await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[source]
database_url = "{url}"
listener_id = "envproxy"
poll_interval = "100ms"

[[observers]]
name = "orders"
entity = "Order"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/orders"
"#,
        url = db.url,
        base = rx.base
    );
    let path = write_config(&dir, &text);
    let dead = format!("http://127.0.0.1:{}", crate::support::free_port());
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let _run = Run(Command::new(env!("CARGO_BIN_EXE_observers"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("DATABASE_URL")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HTTP_PROXY", &dead)
        .env("http_proxy", &dead)
        .env("HTTPS_PROXY", &dead)
        .env("ALL_PROXY", &dead)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());
    db.exec("INSERT INTO orders VALUES (1, 10)").await;
    wait_until(
        "the delivery, straight to the receiver",
        Duration::from_secs(60),
        || rx.count() == 1,
    )
    .await;
}
