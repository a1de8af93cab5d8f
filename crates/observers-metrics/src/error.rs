//! Errors of the metrics crate, convertible into core's `ObserverError`.

use observers_core::ObserverError;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    #[error("the ops server failed: {0}")]
    Serve(String),
}

impl From<MetricsError> for ObserverError {
    fn from(e: MetricsError) -> Self {
        ObserverError::permanent("OBS-OPS-SERVER", e.to_string())
    }
}
