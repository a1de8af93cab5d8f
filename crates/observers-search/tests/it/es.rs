//! The Elasticsearch backend against recorded fixtures of the REST API
//! (`tests/fixtures/es_*.json`): a local axum server plays each fixture's exchanges in order,
//! checks every request field by field (method, path, query, content type, JSON or NDJSON body)
//! and answers with the recorded reply (shapes from the Elasticsearch reference). A live suite
//! runs the shared backend suite when `ELASTICSEARCH_URL` is set.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeZone, Utc};
use observers_core::EventKind;
use observers_core::stores::search::{IndexedEvent, SearchBackend, SearchQuery};
use observers_search::{ElasticsearchBackend, SearchError};
use serde_json::{Value, json};

#[derive(Default)]
struct Script {
    exchanges: VecDeque<Value>,
    mismatches: Vec<String>,
    served: usize,
}

/// Where `expected` and `actual` differ, as `path: expected X, got Y` lines.
fn diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                diff(
                    &format!("{path}/{k}"),
                    ev,
                    a.get(k).unwrap_or(&Value::Null),
                    out,
                );
                if !a.contains_key(k) {
                    out.push(format!("{path}/{k}: missing"));
                }
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(format!("{path}/{k}: unexpected field = {}", a[k]));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!(
                    "{path}: expected {} items, got {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{path}/{i}"), ev, av, out);
            }
        }
        _ if expected != actual => out.push(format!("{path}: expected {expected}, got {actual}")),
        _ => {}
    }
}

async fn play(
    State(script): State<Arc<Mutex<Script>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = script.lock().unwrap();
    s.served += 1;
    let n = s.served;
    let Some(exchange) = s.exchanges.pop_front() else {
        s.mismatches
            .push(format!("request {n}: unexpected {method} {uri}"));
        return (StatusCode::IM_A_TEAPOT, "no more exchanges").into_response();
    };
    let want = &exchange["request"];
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let actual = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": query,
        "content_type": headers.get("content-type").and_then(|v| v.to_str().ok()),
        "body": if want.get("ndjson").is_some() || text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.to_string()))
        },
        "ndjson": if want.get("ndjson").is_some() {
            if !text.ends_with('\n') {
                s.mismatches.push(format!("request {n}: NDJSON body must end with a newline"));
            }
            Value::Array(text.lines().map(|l| serde_json::from_str(l).unwrap_or(Value::String(l.into()))).collect())
        } else {
            Value::Null
        },
    });
    let mut expected = want.clone();
    if expected.get("ndjson").is_none() {
        expected["ndjson"] = Value::Null;
    } else {
        expected["body"] = Value::Null;
    }
    let mut out = Vec::new();
    diff("", &expected, &actual, &mut out);
    if !out.is_empty() {
        s.mismatches.push(format!(
            "request {n} ({method} {uri}):\n  {}",
            out.join("\n  ")
        ));
        return (
            StatusCode::IM_A_TEAPOT,
            "request does not match the fixture",
        )
            .into_response();
    }
    let reply = &exchange["response"];
    let status =
        StatusCode::from_u16(u16::try_from(reply["status"].as_u64().unwrap()).unwrap()).unwrap();
    let mut resp = (
        status,
        [("content-type", "application/json")],
        reply["body"].to_string(),
    )
        .into_response();
    if let Some(h) = reply["headers"].as_object() {
        for (k, v) in h {
            resp.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.as_str().unwrap().parse().unwrap(),
            );
        }
    }
    resp
}

/// A local server playing `fixture`; `finish` checks that every exchange was played as recorded.
struct Fixture {
    base: String,
    script: Arc<Mutex<Script>>,
}

impl Fixture {
    async fn start(name: &str) -> Self {
        let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let script = Arc::new(Mutex::new(Script {
            exchanges: file["exchanges"]
                .as_array()
                .unwrap()
                .iter()
                .cloned()
                .collect(),
            ..Script::default()
        }));
        let app = axum::Router::new()
            .fallback(play)
            .with_state(script.clone());
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", socket.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
        Self { base, script }
    }

    fn backend(&self) -> ElasticsearchBackend {
        ElasticsearchBackend::new(&self.base, "observer-events")
            .unwrap()
            .with_retries(3, Duration::from_millis(1))
    }

    fn finish(&self) {
        let s = self.script.lock().unwrap();
        assert!(
            s.mismatches.is_empty(),
            "requests differ from the fixture:\n{}",
            s.mismatches.join("\n")
        );
        assert!(
            s.exchanges.is_empty(),
            "{} recorded exchanges were never requested",
            s.exchanges.len()
        );
    }
}

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, h, m, 0).unwrap()
}

fn ev1() -> IndexedEvent {
    serde_json::from_value(json!({
        "event_id": 1, "entity_type": "Order", "entity_id": "42", "event_type": "update",
        "tenant_id": "acme", "timestamp": at(12, 0), "data": {"status": "paid"},
        "matched_observers": ["notify-sales"], "successful_actions": ["notify-sales:webhook"],
        "duration_ms": 7
    }))
    .unwrap()
}

fn ev2() -> IndexedEvent {
    serde_json::from_value(json!({
        "event_id": 2, "entity_type": "User", "entity_id": "7", "event_type": "insert",
        "user_id": "admin-1", "timestamp": at(12, 1), "data": {"name": "Ada"},
        "matched_observers": ["audit"], "failed_actions": ["audit:email"],
        "errors": ["audit: [OBS-SMTP] 550 mailbox unavailable"], "duration_ms": 12
    }))
    .unwrap()
}

fn ev3() -> IndexedEvent {
    serde_json::from_value(json!({
        "event_id": 3, "entity_type": "Order", "entity_id": "43", "event_type": "delete",
        "tenant_id": "acme", "timestamp": at(12, 2), "data": {"status": "void"}
    }))
    .unwrap()
}

#[tokio::test]
async fn ensure_index_puts_the_template_and_accepts_an_existing_index() {
    let f = Fixture::start("es_ensure_index").await;
    let r = f.backend().ensure_index().await;
    f.finish();
    r.unwrap();
}

#[tokio::test]
async fn bulk_writes_ndjson_index_actions() {
    let f = Fixture::start("es_bulk").await;
    let r = f.backend().index(&[ev1(), ev2()]).await;
    f.finish();
    r.unwrap();
}

#[tokio::test]
async fn item_errors_in_a_200_bulk_reply_are_retried_or_reported() {
    let f = Fixture::start("es_bulk_item_errors").await;
    let err = f.backend().index(&[ev1(), ev2(), ev3()]).await.unwrap_err();
    f.finish();
    let text = err.to_string();
    assert!(text.contains("1 of 3 documents were refused"), "{text}");
    assert!(
        text.contains("event 3: HTTP 400 mapper_parsing_exception"),
        "{text}"
    );
    assert!(
        !err.is_transient(),
        "a mapping refusal will not succeed by retrying"
    );
}

#[tokio::test]
async fn a_429_reply_is_retried() {
    let f = Fixture::start("es_bulk_429").await;
    let r = f.backend().index(&[ev1()]).await;
    f.finish();
    r.unwrap();
}

#[tokio::test]
async fn a_429_on_every_attempt_is_a_transient_error() {
    let f = Fixture::start("es_bulk_429_exhausted").await;
    let backend = f.backend().with_retries(2, Duration::from_millis(1));
    let err = backend.index(&[ev1()]).await.unwrap_err();
    f.finish();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("429"), "{err}");
}

#[tokio::test]
async fn search_sends_the_dsl_and_reads_hits_and_facets() {
    let f = Fixture::start("es_search").await;
    let q = SearchQuery::new()
        .with_entity_type("Order")
        .with_event_type(EventKind::Update)
        .with_tenant("acme")
        .since(at(0, 0))
        .until(at(0, 0) + chrono::Duration::days(1))
        .with_text("Paid NOTIFY-s")
        .with_per_page(10)
        .with_page(2)
        .with_facets();
    let r = f.backend().search(&q).await;
    f.finish();
    let r = r.unwrap();
    assert_eq!(r.total, 11);
    assert_eq!(r.results, vec![ev1()]);
    let facets = r.facets.unwrap();
    assert_eq!(
        facets.entity_types,
        BTreeMap::from([("Order".to_owned(), 11)])
    );
    assert_eq!(
        facets.event_types,
        BTreeMap::from([("update".to_owned(), 11)])
    );
}

#[tokio::test]
async fn a_plain_search_matches_everything_without_aggregations() {
    let f = Fixture::start("es_search_plain").await;
    let r = f.backend().search(&SearchQuery::new()).await.unwrap();
    f.finish();
    assert_eq!((r.total, r.results.len(), r.facets), (0, 0, None));
}

#[tokio::test]
async fn pages_past_the_result_window_are_refused_without_a_request() {
    let f = Fixture::start("es_search_plain").await;
    let q = SearchQuery::new().with_per_page(100).with_page(101);
    let err = f.backend().search(&q).await.unwrap_err();
    assert!(err.to_string().contains("10000"), "{err}");
    assert_eq!(f.script.lock().unwrap().served, 0);
}

#[tokio::test]
async fn retention_deletes_by_query() {
    let f = Fixture::start("es_delete_by_query").await;
    assert_eq!(f.backend().delete_older_than(at(0, 0)).await.unwrap(), 5);
    f.finish();
}

#[tokio::test]
async fn health_reads_the_cluster_status() {
    let f = Fixture::start("es_health").await;
    let backend = f.backend();
    backend.health().await.unwrap();
    let err = backend.health().await.unwrap_err();
    assert!(err.to_string().contains("red"), "{err}");
    f.finish();
}

#[test]
fn bad_urls_and_index_names_are_refused() {
    for (url, index) in [
        ("not a url", "ok"),
        ("http://127.0.0.1:9200", "Bad"),
        ("http://127.0.0.1:9200", "a/b"),
    ] {
        let err = ElasticsearchBackend::new(url, index).unwrap_err();
        assert!(
            matches!(err, SearchError::Invalid(_)),
            "{url} {index}: {err}"
        );
    }
}

/// The shared suite against a real cluster, each run on indexes of its own.
mod live {
    use std::io::Write as _;

    use super::*;
    use crate::suite;

    /// Says once, past the test harness's output capture (a direct write to stderr, which the
    /// harness does not capture, unlike `eprintln!`), that the live suite did not run.
    fn skipped() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the live Elasticsearch suite (es::live) needs ELASTICSEARCH_URL, e.g. \
                 http://127.0.0.1:9200; CI runs it against an Elasticsearch service container"
            );
        });
    }

    async fn backend(tag: &str) -> Option<Arc<dyn SearchBackend>> {
        let Ok(url) = std::env::var("ELASTICSEARCH_URL") else {
            skipped();
            return None;
        };
        let index = format!("observers-test-{tag}-{:x}", rand::random::<u32>());
        let b = ElasticsearchBackend::new(&url, &index)
            .unwrap()
            .with_refresh_on_write(true);
        b.ensure_index().await.unwrap();
        b.health().await.unwrap();
        Some(Arc::new(b))
    }

    #[tokio::test]
    async fn searches_match_the_reference() {
        if let Some(b) = backend("reference").await {
            suite::searches_match_the_reference(b).await;
        }
    }

    #[tokio::test]
    async fn paging_covers_every_match_once() {
        if let Some(b) = backend("paging").await {
            suite::paging_covers_every_match_once(b).await;
        }
    }

    #[tokio::test]
    async fn reindex_replaces_and_retention_deletes() {
        if let Some(b) = backend("retention").await {
            suite::reindex_replaces_and_retention_deletes(b).await;
        }
    }
}
