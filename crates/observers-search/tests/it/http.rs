//! `GET /api/observers/search` on its own: the JSON form, parameters, and 400s naming the
//! parameter.

use std::sync::Arc;

use observers_core::stores::search::{MemorySearchBackend, SearchBackend};
use serde_json::{Value, json};

use crate::support::generated_set;

async fn serve() -> String {
    let backend = Arc::new(MemorySearchBackend::new(1000));
    backend.index(&generated_set(60)).await.unwrap();
    let app = observers_search::http::router(backend);
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", socket.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
    base
}

async fn get(base: &str, query: &str) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::get(format!("{base}/api/observers/search{query}"))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn answers_total_results_and_facets() {
    let base = serve().await;
    let (status, body) = get(&base, "").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 60);
    assert_eq!(body["results"].as_array().unwrap().len(), 20);
    assert_eq!(
        body["facets"]["entity_types"],
        json!({"Invoice": 20, "Order": 20, "User": 20})
    );

    let (status, body) = get(
        &base,
        "?text=Gateway+timeout&entity_type=Order&per_page=2&page=2&facets=false",
    )
    .await;
    assert_eq!(status, 200);
    // Orders are multiples of 3; failures multiples of 7: 21 and 42 in 1..=60; page 2 of 2
    // per page holds nothing.
    assert_eq!(body["total"], 2);
    assert_eq!(body["results"], json!([]));
    assert_eq!(body["facets"], Value::Null);

    let (_, body) = get(&base, "?text=gateway%20timeout&entity_type=Order").await;
    let ids: Vec<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![42, 21]);

    let (_, body) = get(
        &base,
        "?event_type=delete&tenant=acme&since=2026-01-01T00:05:00Z&until=2026-01-01T00:20:00%2B00:00",
    )
    .await;
    for e in body["results"].as_array().unwrap() {
        assert_eq!(e["event_type"], "delete");
        assert_eq!(e["tenant_id"], "acme");
    }
    assert!(body["total"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_deepest_allowed_page_is_served() {
    let base = serve().await;
    for query in [
        "?page=10&per_page=1000",
        "?page=500&per_page=20",
        "?page=999999&per_page=0",
    ] {
        let (status, body) = get(&base, query).await;
        assert_eq!(status, 200, "{query}: {body}");
    }
}

#[tokio::test]
async fn bad_parameters_are_400s_naming_the_parameter() {
    let base = serve().await;
    for (query, parameter) in [
        ("?per_page=5000", "per_page"),
        ("?per_page=ten", "per_page"),
        ("?page=0", "page"),
        ("?event_type=upsert", "event_type"),
        ("?since=yesterday", "since"),
        ("?until=2026-13-01T00:00:00Z", "until"),
        ("?facets=maybe", "facets"),
        ("?entity=Order", "entity"),
        // Deep pages are refused: page × per_page stays within 10,000.
        ("?page=4294967295", "page"),
        ("?page=11&per_page=1000", "page"),
        ("?per_page=20&page=501", "page"),
    ] {
        let (status, body) = get(&base, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(parameter),
            "{query}: {body}"
        );
    }
}
