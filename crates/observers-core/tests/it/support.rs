//! A real local HTTP receiver whose behaviour is chosen by path, and small helpers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    hits: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Paths: `/ok`, `/delay/{ms}`, `/status/{code}`, `/flaky/{n}` (500 n times, then 200),
/// `/retry-after/{secs}` (429 with Retry-After once, then 200), `/slow-status/{ms}/{code}`.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/{*path}", any(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base: format!("http://{addr}"),
            inner,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.received().iter().filter(|r| r.path == path).count()
    }

    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.peak.fetch_max(now, Ordering::SeqCst);
    let hit = {
        let mut hits = inner.hits.lock().unwrap();
        let h = hits.entry(path.clone()).or_default();
        *h += 1;
        *h
    };
    inner.received.lock().unwrap().push(Received {
        path: path.clone(),
        headers,
        body,
        at: Instant::now(),
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match parts.as_slice() {
        ["delay", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            StatusCode::OK.into_response()
        }
        ["status", code] => StatusCode::from_u16(code.parse().unwrap())
            .unwrap()
            .into_response(),
        ["flaky", n] if hit <= n.parse::<usize>().unwrap() => {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        ["retry-after", secs] if hit == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        _ => StatusCode::OK.into_response(),
    };
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// Polls `cond` until it holds or the deadline passes.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
