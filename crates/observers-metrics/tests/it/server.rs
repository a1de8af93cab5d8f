//! The ops server on 127.0.0.1: merged routers, readiness from pluggable checks, status
//! sections, and Debezium ingest into an in-memory change log (token, 400s, nothing written).

use std::sync::Arc;

use async_trait::async_trait;
use axum::routing::get;
use observers_core::debezium::DebeziumMapping;
use observers_core::stores::source::MemoryEventSource;
use observers_metrics::{
    IngestTarget, InstanceInfo, ObserverMetrics, OpsServer, OpsState, ReadinessCheck, ServerLimits,
    StatusSection,
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

async fn start_on(
    state: OpsState,
    addr: &str,
    limits: ServerLimits,
) -> (String, Option<String>, tokio::sync::oneshot::Sender<()>) {
    let extra = axum::Router::new().route("/api/observers/search", get(|| async { "rows" }));
    let bound = OpsServer::new(state)
        .merge(extra)
        .with_limits(limits)
        .bind(addr)
        .await
        .unwrap();
    let port = bound.local_addr().port();
    let why = bound.data_closed_because();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async move {
        let _ = rx.await;
    }));
    (format!("http://127.0.0.1:{port}"), why, tx)
}

fn state_with(token: Option<&str>) -> OpsState {
    OpsState::new(Arc::new(ObserverMetrics::new()), instance())
        .with_section(Arc::new(Group))
        .with_token(token.map(str::to_owned))
}

/// Row data and error texts (`/status`, search) need the token once one is set; the probes
/// (`/metrics`, `/health`, `/ready`) stay open.
#[tokio::test]
async fn data_endpoints_need_the_token_when_one_is_set() {
    let (base, why, _stop) = start_on(
        state_with(Some("tok")),
        "127.0.0.1:0",
        ServerLimits::default(),
    )
    .await;
    assert_eq!(why, None);
    let c = client();
    for path in [
        "/status",
        "/api/observers/search",
        "/api/observers/search?text=x",
    ] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth("tok-but-longer")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth("tok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    for path in ["/metrics", "/health", "/ready"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} stays open");
    }
}

/// Without a token the data endpoints answer on a loopback bind only; bound to every address
/// they answer 403 and the server says why (what `run` logs).
#[tokio::test]
async fn without_a_token_data_endpoints_answer_only_on_loopback() {
    let c = client();
    let (base, why, _s1) = start_on(state_with(None), "127.0.0.1:0", ServerLimits::default()).await;
    assert_eq!(why, None);
    for path in ["/status", "/api/observers/search"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} on loopback");
    }

    let (base, why, _s2) = start_on(state_with(None), "0.0.0.0:0", ServerLimits::default()).await;
    let why = why.expect("a wide bind without a token is reported");
    assert!(
        why.contains("OBSERVERS_OPS_TOKEN") && why.contains("0.0.0.0"),
        "{why}"
    );
    for path in ["/status", "/api/observers/search"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 403, "{path} on 0.0.0.0 without a token");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("OBSERVERS_OPS_TOKEN")
        );
    }
    for path in ["/metrics", "/health", "/ready"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} stays open");
    }
}

async fn read_to_end_within(stream: &mut tokio::net::TcpStream, what: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut out),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: the server never closed the connection"))
    .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that never finishes its headers is cut off, and so is one that never finishes its
/// body; neither holds the server.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = ServerLimits {
        header_read_timeout: std::time::Duration::from_millis(200),
        request_timeout: std::time::Duration::from_millis(300),
        max_connections: 16,
    };
    let (base, _, _stop) = start_on(state_with(Some("tok")), "127.0.0.1:0", limits).await;
    let addr = base.trim_start_matches("http://").to_owned();

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let got = read_to_end_within(&mut s, "half a header").await;
    assert!(!got.contains("200 OK"), "{got}");

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /ingest/debezium HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"op\":",
    )
    .await
    .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 1024];
    while !got.contains("\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(60), s.read(&mut buf))
            .await
            .expect("a stalled body gets an answer")
            .unwrap();
        assert!(n > 0, "closed without an answer: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
}

/// Past `max_connections` open connections, a new one gets 503 and is closed; once one closes
/// the server takes connections again.
#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let limits = ServerLimits {
        max_connections: 2,
        ..Default::default()
    };
    let (base, _, _stop) = start_on(state_with(None), "127.0.0.1:0", limits).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let idle1 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _idle2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let got = read_to_end_within(&mut third, "the third connection").await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    drop(idle1);
    let c = client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = c.get(format!("{base}/health")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "a slot never freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
