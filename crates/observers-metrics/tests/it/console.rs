//! The console's routes on a real server with in-memory stores: the shell at every page path
//! (deep links) with its assets and a same-origin content policy, reads guarded like `/status`,
//! retry and purge only with the token, and a retry that runs the action again and resolves the
//! item. The browser test of the whole console is observers-cli's `console`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use observers_core::actions::{Action, ActionResult, Invocation};
use observers_core::executor::{ActionSlot, CompiledObserver};
use observers_core::retry::RetryPolicy;
use observers_core::stores::dlq::{DeadLetterQueue, DlqEntry, DlqStatus, MemoryDeadLetterQueue};
use observers_core::stores::jobs::{JobQueue, MemoryJobQueue, NewJob};
use observers_core::{EntityEvent, EventKind, ObserverError, ObserverExecutor, ObserverSet};
use observers_metrics::{ConsoleSources, InstanceInfo, ObserverMetrics, OpsServer, OpsState};
use serde_json::{Value, json};

const TOKEN: &str = "console-token";

/// An action that fails until `healthy` is set, counting its successful runs.
#[derive(Default)]
struct Flaky {
    healthy: AtomicBool,
    delivered: AtomicUsize,
}

#[async_trait]
impl Action for Flaky {
    fn type_name(&self) -> &'static str {
        "flaky"
    }

    async fn execute(&self, _inv: &Invocation<'_>) -> observers_core::Result<ActionResult> {
        if self.healthy.load(Ordering::SeqCst) {
            self.delivered.fetch_add(1, Ordering::SeqCst);
            Ok(ActionResult::default())
        } else {
            Err(ObserverError::ActionPermanent {
                code: "OBS-TEST",
                message: "receiver says no".into(),
            })
        }
    }
}

struct Console {
    base: String,
    dlq: Arc<MemoryDeadLetterQueue>,
    jobs: Arc<MemoryJobQueue>,
    action: Arc<Flaky>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn console(token: Option<&str>) -> Console {
    let action = Arc::new(Flaky::default());
    let set = ObserverSet::new(
        vec![
            CompiledObserver::new("orders", "Order", EventKind::ALL.to_vec())
                .with_action(ActionSlot::new(action.clone(), "flaky")),
        ],
        RetryPolicy::none(),
        Duration::from_secs(1),
    );
    let dlq = Arc::new(MemoryDeadLetterQueue::default());
    let jobs = Arc::new(MemoryJobQueue::default());
    let executor = Arc::new(ObserverExecutor::builder(set).dlq(dlq.clone()).build());
    let instance = InstanceInfo {
        instance_id: "host:1".into(),
        listener_id: "default".into(),
        version: "0".into(),
        started_at: chrono::Utc::now(),
        observers: 1,
    };
    let state = OpsState::new(Arc::new(ObserverMetrics::new()), instance)
        .with_token(token.map(str::to_owned))
        .with_console(ConsoleSources {
            dlq: dlq.clone(),
            jobs: jobs.clone(),
            executor,
        });
    let bound = OpsServer::new(state).bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", bound.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async move {
        let _ = rx.await;
    }));
    Console {
        base,
        dlq,
        jobs,
        action,
        _stop: tx,
    }
}

fn entry(id: i64) -> DlqEntry {
    DlqEntry {
        event: EntityEvent::new(
            id,
            "Order",
            id.to_string(),
            EventKind::Insert,
            None,
            Some(json!({"total": 5})),
        ),
        observer: "orders".into(),
        action_index: 0,
        action_type: "flaky".into(),
        error_code: "OBS-TEST".into(),
        error: "receiver says no".into(),
        attempts: 1,
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn post(base: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = client().post(format!("{base}{path}")).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_page_path_serves_the_shell_and_assets_stay_on_the_origin() {
    let c = console(Some(TOKEN)).await;
    let http = client();
    let mut shells = Vec::new();
    for path in [
        "/ui/",
        "/ui/events",
        "/ui/events/7?entity_type=Order&entity_id=7",
        "/ui/dlq",
        "/ui/dlq/3",
        "/ui/jobs",
    ] {
        let r = http.get(format!("{}{path}", c.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        shells.push(r.text().await.unwrap());
    }
    assert!(
        shells.iter().all(|s| s == &shells[0]),
        "one shell for every page"
    );
    for script in ["console.js", "pages.js", "queues.js"] {
        assert!(
            shells[0].contains(&format!("/ui/assets/{script}")),
            "{script}"
        );
    }
    assert!(!shells[0].contains("http://") && !shells[0].contains("https://"));
    let r = http.get(format!("{}/ui", c.base)).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/ui/");
    for (asset, kind) in [
        ("console.js", "text/javascript"),
        ("pages.js", "text/javascript"),
        ("queues.js", "text/javascript"),
        ("console.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let r = http
            .get(format!("{}/ui/assets/{asset}", c.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        let text = r.text().await.unwrap();
        assert!(!text.contains("https://"), "{asset} fetches from outside");
    }
    let missing = http
        .get(format!("{}/ui/assets/nothing.js", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn reads_follow_the_data_rule_and_retry_needs_the_token() {
    let c = console(Some(TOKEN)).await;
    let id = c.dlq.push(entry(1)).await.unwrap();
    c.dlq.push(entry(2)).await.unwrap();

    assert_eq!(get(&c.base, "/api/ui/dlq", None).await.0, 401);
    assert_eq!(get(&c.base, "/api/ui/dlq", Some("wrong")).await.0, 401);
    assert_eq!(get(&c.base, "/api/ui/history", None).await.0, 401);
    let (code, list) = get(&c.base, "/api/ui/dlq?observer=orders", Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert_eq!(list["pending"], 2);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (code, item) = get(&c.base, &format!("/api/ui/dlq/{id}"), Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert_eq!(item["error"], "receiver says no");
    assert_eq!(item["event"]["after"]["total"], 5);
    assert_eq!(get(&c.base, "/api/ui/dlq/999", Some(TOKEN)).await.0, 404);
    let (code, bad) = get(&c.base, "/api/ui/dlq?status=lost", Some(TOKEN)).await;
    assert_eq!(code, 400);
    assert_eq!(bad["parameter"], "status");

    // Token check and retry: refused without or with a wrong token, nothing runs.
    assert_eq!(
        post(&c.base, "/api/ui/token", Some("wrong"), &json!({}))
            .await
            .0,
        401
    );
    assert_eq!(
        post(&c.base, "/api/ui/token", Some(TOKEN), &json!({}))
            .await
            .0,
        200
    );
    let one = json!({"ids": [id]});
    assert_eq!(post(&c.base, "/api/ui/dlq/retry", None, &one).await.0, 401);
    assert_eq!(
        post(&c.base, "/api/ui/dlq/retry", Some("wrong"), &one)
            .await
            .0,
        401
    );
    assert_eq!(
        post(&c.base, "/api/ui/dlq/purge", Some("wrong"), &one)
            .await
            .0,
        401
    );
    assert_eq!(c.action.delivered.load(Ordering::SeqCst), 0);

    // Still failing: the item stays pending with the new error.
    let (code, r) = post(&c.base, "/api/ui/dlq/retry", Some(TOKEN), &one).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["retried"].as_u64(), r["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        c.dlq.get(id).await.unwrap().unwrap().status,
        DlqStatus::Pending
    );

    // Healthy again: every matching pending item is delivered and resolved.
    c.action.healthy.store(true, Ordering::SeqCst);
    let all = json!({"matching": {"observer": "orders"}});
    let (code, r) = post(&c.base, "/api/ui/dlq/retry", Some(TOKEN), &all).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["delivered"], 2);
    assert_eq!(r["not_attempted"], json!([]));
    assert_eq!(c.action.delivered.load(Ordering::SeqCst), 2);
    assert_eq!(c.dlq.count(Some(DlqStatus::Resolved)).await.unwrap(), 2);

    let both = json!({"ids": [id], "matching": {}});
    assert_eq!(
        post(&c.base, "/api/ui/dlq/retry", Some(TOKEN), &both)
            .await
            .0,
        400
    );
    let (code, r) = post(
        &c.base,
        "/api/ui/dlq/purge",
        Some(TOKEN),
        &json!({"matching": {"status": "resolved"}}),
    )
    .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["purged"], 2);
    assert_eq!(c.dlq.count(None).await.unwrap(), 0);
}

#[tokio::test]
async fn without_a_token_reads_answer_on_loopback_and_actions_are_disabled() {
    let c = console(None).await;
    c.dlq.push(entry(1)).await.unwrap();
    let (code, list) = get(&c.base, "/api/ui/dlq", None).await;
    assert_eq!(code, 200);
    assert_eq!(list["pending"], 1);
    let (code, r) = post(&c.base, "/api/ui/dlq/retry", None, &json!({"ids": [1]})).await;
    assert_eq!(code, 403);
    assert!(r["error"].as_str().unwrap().contains("OBSERVERS_OPS_TOKEN"));
    assert_eq!(
        post(&c.base, "/api/ui/token", Some("x"), &json!({}))
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn jobs_show_stats_and_failed_ones_go_back_to_pending() {
    let c = console(Some(TOKEN)).await;
    let job = c
        .jobs
        .enqueue(NewJob::new("default", "webhook", json!({})).with_max_attempts(1))
        .await
        .unwrap()
        .id();
    let taken = c.jobs.dequeue("default", "w1", 1).await.unwrap();
    assert_eq!(taken.len(), 1);
    c.jobs.fail("w1", job, "receiver down", None).await.unwrap();
    let (code, r) = get(&c.base, "/api/ui/jobs?status=failed", Some(TOKEN)).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["stats"]["failed"], 1);
    assert_eq!(r["jobs"][0]["last_error"], "receiver down");
    assert_eq!(
        get(&c.base, "/api/ui/jobs?status=lost", Some(TOKEN))
            .await
            .0,
        400
    );
    let body = json!({"all": true});
    assert_eq!(
        post(&c.base, "/api/ui/jobs/retry", Some("wrong"), &body)
            .await
            .0,
        401
    );
    let (code, r) = post(&c.base, "/api/ui/jobs/retry", Some(TOKEN), &body).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["retried"], 1);
    assert_eq!(c.jobs.stats().await.unwrap().pending, 1);
}
