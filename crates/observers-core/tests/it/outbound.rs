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

/// A receiver that answers 500 with an endless body: the error is made from its start and the
/// rest is never read.
#[tokio::test]
async fn an_endless_error_body_is_read_only_up_to_the_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let server = tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        // The request: headers, then the JSON body (whose end is a `}`).
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.ends_with(b"}") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("{:x}\r\n{}\r\n", 65536, "E".repeat(65536));
        // 1 GiB if read to the end; the action stops after 64 KiB.
        for _ in 0..16384 {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let h = harness(&format!(
        "[retry]\nmax_attempts = 1\n[[observers]]\nname = \"o\"\nentity = \"Order\"\n[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://{addr}/x\"\n"
    ));
    h.executor.process(&order(1, 1.0, "new")).await.unwrap();
    let items = h.dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].entry.error_code, "OBS-HTTP-5XX");
    assert!(
        items[0].entry.error.contains("EEEE"),
        "{}",
        items[0].entry.error
    );
    drop(h);
    // The client hung up after the cap: the server's writes fail long before 1 GiB.
    tokio::time::timeout(std::time::Duration::from_secs(60), server)
        .await
        .expect("the server stopped writing")
        .unwrap();
    let chunks = written.load(std::sync::atomic::Ordering::SeqCst);
    assert!(chunks < 1024, "{chunks} chunks of 64 KiB were sent");
}
