//! Errors of the job queue, convertible into core's `ObserverError`.

use observers_core::ObserverError;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job queue database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A request that cannot be carried out as asked (unknown job, wrong status, ...).
    #[error("{0}")]
    Invalid(String),
}

impl QueueError {
    /// Whether trying again may help (connection trouble, serialization failures).
    pub fn is_transient(&self) -> bool {
        match self {
            QueueError::Database(e) => !matches!(
                e,
                sqlx::Error::RowNotFound | sqlx::Error::ColumnNotFound(_) | sqlx::Error::Decode(_)
            ),
            QueueError::Invalid(_) => false,
        }
    }
}

impl From<QueueError> for ObserverError {
    fn from(e: QueueError) -> Self {
        ObserverError::Store {
            backend: "postgres",
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}
