//! The ops server on 127.0.0.1: merged routers, readiness from pluggable checks, status
//! sections, and Debezium ingest into an in-memory change log (token, 400s, nothing written).

use std::sync::Arc;

use async_trait::async_trait;
use axum::routing::get;
use observers_core::debezium::DebeziumMapping;
use observers_core::stores::source::MemoryEventSource;
use observers_metrics::{
    IngestTarget, InstanceInfo, ObserverMetrics, OpsServer, OpsState, ReadinessCheck, StatusSection,
};
use serde_json::{Value, json};

struct Check(bool);

#[async_trait]
impl ReadinessCheck for Check {
    fn name(&self) -> &'static str {
        "lease"
    }

    async fn check(&self) -> Result<Value, String> {
        if self.0 {
            Ok(json!({"holder": "me", "epoch": 3}))
        } else {
            Err("lease held by another instance".into())
        }
    }
}

struct Group;

#[async_trait]
impl StatusSection for Group {
    fn name(&self) -> &'static str {
        "group"
    }

    async fn collect(&self) -> Result<Value, String> {
        Ok(json!({"leader": "me"}))
    }
}

fn instance() -> InstanceInfo {
    InstanceInfo {
        instance_id: "host:1".into(),
        listener_id: "default".into(),
        version: "0".into(),
        started_at: chrono::Utc::now(),
        observers: 0,
    }
}

async fn start(state: OpsState) -> (String, tokio::sync::oneshot::Sender<()>) {
    let extra = axum::Router::new().route("/api/observers/search", get(|| async { "search" }));
    let bound = OpsServer::new(state)
        .merge(extra)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let base = format!("http://{}", bound.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async move {
        let _ = rx.await;
    }));
    (base, tx)
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn ready_follows_its_checks_and_merged_routes_and_sections_are_served() {
    let metrics = Arc::new(ObserverMetrics::new());
    let ok = OpsState::new(metrics.clone(), instance())
        .with_check(Arc::new(Check(true)))
        .with_section(Arc::new(Group));
    let (base, _stop) = start(ok).await;
    let c = client();
    let r = c.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["lease"]["detail"]["epoch"], 3);
    let search = c
        .get(format!("{base}/api/observers/search"))
        .send()
        .await
        .unwrap();
    assert_eq!(search.text().await.unwrap(), "search");
    let status: Value = c
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["group"]["leader"], "me");
    assert_eq!(status["instance"]["instance_id"], "host:1");
    let m = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(m.text().await.unwrap().ends_with("# EOF\n"));

    let failing = OpsState::new(metrics, instance()).with_check(Arc::new(Check(false)));
    let (base, _stop2) = start(failing).await;
    let r = c.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(
        body["checks"]["lease"]["error"],
        "lease held by another instance"
    );
}

#[tokio::test]
async fn ingest_needs_the_token_and_writes_all_or_nothing() {
    let source = Arc::new(MemoryEventSource::new());
    let state = |token: Option<&str>| {
        OpsState::new(Arc::new(ObserverMetrics::new()), instance())
            .with_ingest(IngestTarget {
                sink: source.clone(),
                mapping: DebeziumMapping::default(),
            })
            .with_token(token.map(str::to_owned))
    };
    let c = client();
    let event = json!({"op": "c", "after": {"id": 1}, "source": {"table": "t"}});

    let (base, _s1) = start(state(None)).await;
    let r = c
        .post(format!("{base}/ingest/debezium"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no token configured: disabled");

    let (base, _s2) = start(state(Some("tok"))).await;
    let url = format!("{base}/ingest/debezium");
    let r = c.post(&url).json(&event).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = c
        .post(&url)
        .bearer_auth("tok")
        .json(&json!([event, event]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(source.len(), 2);
    let bad = json!([event, {"op": "u", "source": {"table": "t"}}]);
    let r = c
        .post(&url)
        .bearer_auth("tok")
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["event"], 1);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("needs an `after` image")
    );
    assert_eq!(source.len(), 2, "nothing of a malformed batch is written");
}
