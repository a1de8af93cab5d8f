//! Every storage trait (listed in docs/ARCHITECTURE.md), each with an in-memory implementation that is a real
//! product (bounded, TTLs honoured) for library use and for the embedded defaults.

pub mod cache;
pub mod changelog;
pub mod checkpoint;
pub mod dedup;
pub mod dlq;
pub mod fallback;
pub mod gone;
pub mod hybrid;
pub mod jobs;
pub mod lease;
pub mod search;
pub mod source;

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
