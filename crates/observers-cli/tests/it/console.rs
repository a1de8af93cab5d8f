//! The web console in a real browser: `observers run` against a real database, a webhook
//! receiver that fails until the failed delivery is in the DLQ, then `tests/browser/
//! console.test.mjs` (Playwright driving Debian's Chromium) loads every page, is refused with a
//! wrong token, and retries the DLQ item with the right one; the receiver must get it.
//!
//! Needs node, the npm packages of `tests/browser` (`npm ci` there) and `chromium` (or
//! `CHROMIUM=/path`); `cargo xtask test` installs them. With `CI` set a missing piece fails the
//! test; otherwise it is reported and the test returns. `OBSERVERS_UPDATE_SCREENSHOTS=1` writes
//! the screenshots into docs/console/ (else a temporary directory).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::metrics::{TOKEN, count, ops_url, spawn_run_with_token};
use crate::support::{Receiver, TestDb, capture, wait_until, write_config};

const LONG: Duration = Duration::from_secs(60);
/// The whole browser run, every step of which has its own 30 s deadline.
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The browser, or why it cannot run.
fn browser_tools(dir: &Path) -> Result<PathBuf, String> {
    if on_path("node").is_none() {
        return Err("node is not installed (apt-get install nodejs npm)".into());
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Err(format!(
            "playwright-core is not installed: run `npm ci` in {}",
            dir.display()
        ));
    }
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| on_path("chromium"))
        .or_else(|| on_path("chromium-browser"))
        .ok_or_else(|| {
            "chromium is not installed (apt-get install chromium, or set CHROMIUM)".into()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser_finds_and_retries_a_failed_delivery() {
    let dir = crate::root().join("crates/observers-cli/tests/browser");
    let chromium = match browser_tools(&dir) {
        Ok(c) => c,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the browser test cannot run: {why}; `cargo xtask test` installs what it needs"
            );
            eprintln!("SKIPPED console browser test: {why}; `cargo xtask test` installs it");
            return;
        }
    };
    let db = TestDb::new("console").await;
    db.exec("CREATE TABLE orders (id bigint PRIMARY KEY, total numeric, status text)")
        .await;
    capture(&db, "orders", "Order");
    let rx = Receiver::start().await;
    rx.fail(true);
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(&tmp, &config(&db, &rx));
    let log = tmp.path().join("run.log");
    let _run = spawn_run_with_token(&config, &log);
    let base = ops_url(&log).await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains(&format!("web console: {base}/ui/")),
        "run logs the console's URL:\n{logged}"
    );

    db.exec("INSERT INTO orders VALUES (42, 250, 'paid')").await;
    let deadline = Instant::now() + LONG;
    while count(
        &db,
        "SELECT count(*) FROM observer_dlq_items WHERE status = 'pending'",
    )
    .await
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "no DLQ item:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The audit trail has the failed event before the browser looks for it.
    let deadline = Instant::now() + LONG;
    while count(&db, "SELECT count(*) FROM observer_events").await < 1 {
        assert!(Instant::now() < deadline, "the event was not indexed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.count(), 0);
    rx.fail(false);

    let shots = if std::env::var_os("OBSERVERS_UPDATE_SCREENSHOTS").is_some() {
        crate::root().join("docs/console")
    } else {
        tmp.path().join("shots")
    };
    let browser = run_browser(&dir, &chromium, &base, &shots, tmp.path(), &log).await;
    assert!(browser.contains("all checks passed"), "{browser}");

    // The retry from the browser delivered the event, once.
    wait_until("the retried delivery", LONG, || rx.count() >= 1).await;
    let deliveries = rx.deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].body["entity_id"], "42");
    assert_eq!(deliveries[0].body["observer"], "orders-to-erp");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM observer_dlq_items WHERE status = 'resolved'"
        )
        .await,
        1
    );
    for shot in [
        "overview",
        "events",
        "event",
        "dlq",
        "dlq-item",
        "jobs",
        "phone-dlq",
        "phone-overview",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).is_file(),
            "no screenshot {shot}.png"
        );
    }
}

/// Runs `console.test.mjs` against the console at `base`; its output, once it passed.
async fn run_browser(
    dir: &Path,
    chromium: &Path,
    base: &str,
    shots: &Path,
    tmp: &Path,
    log: &Path,
) -> String {
    let browser_log = tmp.join("browser.log");
    let out = std::fs::File::create(&browser_log).unwrap();
    let mut child = Command::new("node")
        .arg("console.test.mjs")
        .current_dir(dir)
        .env("CONSOLE_URL", base)
        .env("OPS_TOKEN", TOKEN)
        .env("ENTITY_ID", "42")
        .env("LISTENER_ID", "console")
        .env("CHROMIUM", chromium)
        .env("SHOTS", shots)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BROWSER_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the browser test did not finish within {BROWSER_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&browser_log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let browser = std::fs::read_to_string(&browser_log).unwrap_or_default();
    assert!(
        status.success(),
        "browser test failed:\n{browser}\n--- observers run:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    browser
}

/// One webhook observer on `Order` inserts, the audit trail on, the ops server on a free port.
fn config(db: &TestDb, rx: &Receiver) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "console"
poll_interval = "100ms"

[retry]
max_attempts = 2
initial_backoff = "10ms"
max_backoff = "50ms"

[search]
backend = "postgres"
flush_interval = "100ms"

[metrics]
listen = "127.0.0.1:0"
refresh_interval = "200ms"

[[observers]]
name = "orders-to-erp"
entity = "Order"
events = ["insert"]

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/erp"
"#,
        url = db.url,
        base = rx.base
    )
}
