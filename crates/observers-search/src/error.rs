//! Errors of the search backends, convertible into core's `ObserverError`.

use observers_core::ObserverError;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The search service could not be reached or timed out.
    #[error("cannot reach {what}: {message}")]
    Unreachable { what: String, message: String },
    /// The service answered with an error status.
    #[error("{what} answered HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// Some documents of a bulk write were refused.
    #[error("{failed} of {total} documents were refused; first: {first}")]
    Rejected {
        failed: usize,
        total: usize,
        first: String,
        /// Whether the refusals were all transient (429, 5xx) and retries ran out.
        transient: bool,
    },
    /// A reply that does not have the expected shape.
    #[error("unexpected reply from {what}: {message}")]
    BadReply { what: String, message: String },
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
}

impl SearchError {
    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            SearchError::Database(e) => !matches!(
                e,
                sqlx::Error::RowNotFound | sqlx::Error::ColumnNotFound(_) | sqlx::Error::Decode(_)
            ),
            SearchError::Unreachable { .. } => true,
            SearchError::Status { status, .. } => *status == 429 || *status >= 500,
            SearchError::Rejected { transient, .. } => *transient,
            SearchError::BadReply { .. } | SearchError::Invalid(_) => false,
        }
    }
}

impl From<SearchError> for ObserverError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Invalid(m) => ObserverError::permanent("OBS-SEARCH-INVALID", m),
            other => ObserverError::Store {
                backend: "search",
                transient: other.is_transient(),
                message: other.to_string(),
            },
        }
    }
}
