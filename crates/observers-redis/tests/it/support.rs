//! Shared test plumbing: reaching Redis (or deciding to skip), unique prefixes, polling.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// Polls a condition with a deadline (shared by every store crate's tests).
pub use observers_core::testkit::eventually;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A connection to the test Redis, or `None` (after saying why) when it is unreachable outside CI.
pub async fn redis() -> Option<ConnectionManager> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let attempt = tokio::time::timeout(Duration::from_secs(5), observers_redis::connect(&url));
    let failure = match attempt.await {
        Ok(Ok(conn)) => return Some(conn),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out after 5 s".to_owned(),
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "Redis at {url} is unreachable and CI is set: {failure}"
    );
    eprintln!("SKIPPED: Redis at {url} is unreachable ({failure}); set REDIS_URL to run");
    None
}

/// A key prefix no other test (or run) uses.
pub fn unique_prefix(kind: &str) -> String {
    format!("observers-test:{kind}:{:016x}:", rand::random::<u64>())
}

/// One `#[tokio::test]` per backend for a suite function taking `&dyn Trait` (or `Arc<dyn Trait>`).
#[macro_export]
macro_rules! for_each_backend {
    ($suite:ident, $memory:expr, $redis:expr) => {
        mod $suite {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() {
                let store = $memory;
                super::$suite(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis() {
                let Some(conn) = $crate::support::redis().await else {
                    return;
                };
                let store = $redis(conn);
                super::$suite(store).await;
            }
        }
    };
}
