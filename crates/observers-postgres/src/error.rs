//! Errors of the PostgreSQL backends, convertible into core's `ObserverError`.

use observers_core::ObserverError;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL: {message}")]
    Connect { message: String },
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A request that cannot be carried out as asked (unknown table, bad identifier, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("checkpoint write fenced: {0}")]
    Fenced(String),
}

impl PgError {
    /// Whether trying again may help (connection trouble, serialization failures).
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { .. } => true,
            PgError::Database(e) => !matches!(
                e,
                sqlx::Error::RowNotFound | sqlx::Error::ColumnNotFound(_) | sqlx::Error::Decode(_)
            ),
            _ => false,
        }
    }
}

impl From<PgError> for ObserverError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Fenced(m) => ObserverError::Fenced(m),
            PgError::Invalid(m) => ObserverError::permanent("OBS-PG-INVALID", m),
            other => ObserverError::Store {
                backend: "postgres",
                transient: other.is_transient(),
                message: other.to_string(),
            },
        }
    }
}
