//! The outbound policy with a configured proxy: the target is checked before anything is sent
//! to the proxy, and allowed targets go through it.

use std::sync::{Arc, Mutex};

use axum::http::Uri;
use axum::routing::any;
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter};

use crate::executor::{harness, order};

#[tokio::test]
async fn through_a_proxy_the_target_is_still_checked() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(any(move |uri: Uri| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(uri.to_string());
            "ok"
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config = |url: &str| {
        format!(
            "[retry]\nmax_attempts = 1\n[outbound]\nproxy = \"{proxy}\"\n[[observers]]\nname = \"o\"\nentity = \"Order\"\n[[observers.actions]]\ntype = \"webhook\"\nurl = \"{url}\"\n"
        )
    };
    // Metadata through the proxy: refused before sending; the proxy sees nothing.
    let h = harness(&config("http://169.254.169.254/latest/meta-data/"));
    h.executor.process(&order(1, 1.0, "new")).await.unwrap();
    let items = h.dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].entry.error_code, "OBS-OUTBOUND-DENIED",
        "{:?}",
        items[0]
    );
    assert!(seen.lock().unwrap().is_empty());

    // `localhost` resolves to loopback, allowed by the default policy: sent through the proxy.
    let h = harness(&config("http://localhost:9/hooks/x"));
    let summary = h.executor.process(&order(2, 1.0, "new")).await.unwrap();
    assert_eq!(summary.succeeded(), 1, "{summary:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["http://localhost:9/hooks/x"]);
}
