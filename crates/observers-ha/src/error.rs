//! Errors of observers-ha, convertible into core's `ObserverError`.

use observers_core::ObserverError;

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Bad settings (`[ha]`, `[source] partitions`), named by key.
    #[error("invalid HA configuration: {0}")]
    Config(String),
    /// An operation on something that does not exist or is in the wrong state.
    #[error("{0}")]
    Invalid(String),
}

impl From<HaError> for ObserverError {
    fn from(e: HaError) -> Self {
        match e {
            HaError::Config(m) => ObserverError::permanent("OBS-HA-CONFIG", m),
            HaError::Invalid(m) => ObserverError::permanent("OBS-HA-INVALID", m),
            HaError::Database(e) => ObserverError::Store {
                backend: "postgres",
                transient: !matches!(
                    e,
                    sqlx::Error::RowNotFound
                        | sqlx::Error::ColumnNotFound(_)
                        | sqlx::Error::Decode(_)
                ),
                message: format!("database error: {e}"),
            },
        }
    }
}

pub(crate) fn db(e: sqlx::Error) -> ObserverError {
    HaError::Database(e).into()
}
