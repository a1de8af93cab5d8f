//! Shared test plumbing: the per-backend test macro and polling with a deadline.

use chrono::{DateTime, SubsecRound, Utc};

/// Polls a condition with a deadline (shared by every store crate's tests).
pub use observers_core::testkit::eventually;

/// Now, at PostgreSQL's microsecond precision (so stored instants compare equal).
pub fn now_us() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// One test per backend for a suite function taking `Arc<dyn JobQueue>`.
#[macro_export]
macro_rules! for_each_backend {
    ($suite:ident) => {
        mod $suite {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() {
                super::$suite(std::sync::Arc::new(
                    observers_core::stores::jobs::MemoryJobQueue::new(),
                ))
                .await;
            }

            #[sqlx::test(migrations = "../../migrations")]
            async fn postgres(pool: sqlx::PgPool) {
                super::$suite(std::sync::Arc::new(observers_queue::PostgresJobQueue::new(
                    pool,
                )))
                .await;
            }
        }
    };
}
