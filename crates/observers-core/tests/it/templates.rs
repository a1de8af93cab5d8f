//! Templates are safe in their context, against a real local HTTP server: a row value cannot
//! add JSON members to a webhook body, cannot add path segments or query parameters to a
//! webhook URL, and cannot widen a cache invalidation pattern.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Uri;
use axum::routing::any;
use observers_core::actions::{Action, CacheAction, Invocation};
use observers_core::clock::system_clock;
use observers_core::config::CacheActionConfig;
use observers_core::executor::CachedActionExecutor;
use observers_core::stores::cache::{CacheBackend, MemoryCacheBackend};
use observers_core::telemetry::NoopTelemetry;
use observers_core::template::TemplateContext;
use observers_core::{EntityEvent, EventKind};
use serde_json::{Value, json};

use crate::executor::harness;

type Seen = Arc<Mutex<Vec<(String, Bytes)>>>;

/// A server that records each request's URI as sent and its body.
async fn recorder() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(any(move |uri: Uri, body: Bytes| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push((uri.to_string(), body));
            "ok"
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn customer_event(customer: &str) -> EntityEvent {
    EntityEvent::new(
        5,
        "Order",
        "5",
        EventKind::Insert,
        None,
        Some(json!({"id": 5, "customer": customer, "total": 12.5})),
    )
}

#[tokio::test]
async fn a_row_value_cannot_reshape_a_webhook_body_or_url() {
    let (base, seen) = recorder().await;
    let config = format!(
        r#"[[observers]]
name = "hook"
entity = "Order"
[[observers.actions]]
type = "webhook"
url = "{base}/customers/{{{{ new.customer }}}}?tag={{{{ new.customer }}}}"
body = '{{"role": "user", "customer": "{{{{ new.customer }}}}", "total": {{{{ new.total }}}}}}'
"#
    );
    let h = harness(&config);
    let hostile = r#"x", "role": "admin/../../admin?tag=1&role=admin#"#;
    let summary = h.executor.process(&customer_event(hostile)).await.unwrap();
    assert_eq!(summary.succeeded(), 1, "{summary:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (uri, body) = &seen[0];
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        body,
        json!({"role": "user", "customer": hostile, "total": 12.5})
    );
    let url = url::Url::parse(&format!("{base}{uri}")).unwrap();
    let segments: Vec<_> = url.path_segments().unwrap().collect();
    assert_eq!(segments.len(), 2, "{uri}");
    assert_eq!(segments[0], "customers");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs, [("tag".to_owned(), hostile.to_owned())], "{uri}");
    assert_eq!(url.fragment(), None);
}

#[tokio::test]
async fn glob_characters_from_a_row_match_only_themselves() {
    let backend = Arc::new(MemoryCacheBackend::new(100, system_clock()));
    let cache = Arc::new(CachedActionExecutor::new(
        backend.clone(),
        Duration::from_secs(60),
        BTreeMap::new(),
        Arc::new(NoopTelemetry),
    ));
    for key in ["product:*", "product:1", "product:2", "product:[12]"] {
        backend
            .set(key, b"v".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
    }
    let action = CacheAction::new(
        &CacheActionConfig {
            patterns: vec!["product:{{ new.sku }}".into()],
            ..CacheActionConfig::default()
        },
        Some(cache),
    )
    .unwrap();
    for sku in ["*", "[12]"] {
        let event = EntityEvent::new(
            1,
            "Product",
            "1",
            EventKind::Update,
            None,
            Some(json!({"sku": sku})),
        );
        let ctx = TemplateContext::new(&event, "p");
        let inv = Invocation {
            event: &event,
            observer: "p",
            action_index: 0,
            idempotency_key: "1:p:0",
            template: &ctx,
            attempt: 1,
        };
        action.execute(&inv).await.unwrap();
    }
    for key in ["product:1", "product:2"] {
        assert!(
            backend.get(key).await.unwrap().is_some(),
            "{key} was invalidated by a glob from row data"
        );
    }
    for key in ["product:*", "product:[12]"] {
        assert!(backend.get(key).await.unwrap().is_none(), "{key} stays");
    }
}
