//! The one error type every crate converts into, with stable codes for operators.

use std::time::Duration;

/// Every failure that reaches an operator: a stable code (`OBS-...`), a message that says what
/// to do, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error("[OBS-CONFIG] {0}")]
    Config(#[from] crate::config::ConfigError),

    #[error("[OBS-CONDITION] {0}")]
    Condition(#[from] crate::condition::ConditionError),

    #[error("[OBS-TEMPLATE] {0}")]
    Template(String),

    /// An action failed in a way that trying again may fix (timeouts, 5xx, 429, connection errors).
    #[error("[{code}] {message}")]
    ActionTransient {
        code: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },

    /// An action failed in a way that trying again will not fix (4xx, bad address, bad template).
    #[error("[{code}] {message}")]
    ActionPermanent { code: &'static str, message: String },

    /// The endpoint is up and answered, but what the action addresses there is missing (a
    /// subject no JetStream stream captures, an exchange that does not exist, a message no
    /// queue is bound for). Retried like a transient failure, since the target may appear;
    /// not held against the endpoint's circuit breaker, since the endpoint itself is healthy.
    #[error("[{code}] {message}")]
    ActionTargetMissing { code: &'static str, message: String },

    #[error(
        "[OBS-BREAKER-OPEN] circuit breaker for `{endpoint}` is open; calls are short-circuited until it half-opens"
    )]
    CircuitOpen { endpoint: String },

    #[error("[OBS-TIMEOUT] {what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },

    /// A backing store (database, Redis, ...) failed; usually transient.
    #[error("[OBS-STORE] {backend}: {message}")]
    Store {
        backend: &'static str,
        message: String,
        transient: bool,
    },

    /// A fenced write was refused: this instance no longer holds the lease it wrote under.
    #[error("[OBS-FENCED] {0}")]
    Fenced(String),

    /// Malformed input from outside (a change-log row, an ingested event).
    #[error("[OBS-INVALID-EVENT] {0}")]
    InvalidEvent(String),

    #[error("[OBS-SHUTDOWN] shutting down")]
    Shutdown,
}

impl ObserverError {
    /// The stable code, e.g. `OBS-WEBHOOK-5XX`.
    pub fn code(&self) -> &'static str {
        match self {
            ObserverError::Config(_) => "OBS-CONFIG",
            ObserverError::Condition(_) => "OBS-CONDITION",
            ObserverError::Template(_) => "OBS-TEMPLATE",
            ObserverError::ActionTransient { code, .. }
            | ObserverError::ActionPermanent { code, .. }
            | ObserverError::ActionTargetMissing { code, .. } => code,
            ObserverError::CircuitOpen { .. } => "OBS-BREAKER-OPEN",
            ObserverError::Timeout { .. } => "OBS-TIMEOUT",
            ObserverError::Store { .. } => "OBS-STORE",
            ObserverError::Fenced(_) => "OBS-FENCED",
            ObserverError::InvalidEvent(_) => "OBS-INVALID-EVENT",
            ObserverError::Shutdown => "OBS-SHUTDOWN",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ObserverError::ActionTransient { .. }
            | ObserverError::ActionTargetMissing { .. }
            | ObserverError::CircuitOpen { .. }
            | ObserverError::Timeout { .. } => true,
            ObserverError::Store { transient, .. } => *transient,
            _ => false,
        }
    }

    /// Whether this failure counts against the endpoint's circuit breaker: transient failures
    /// do, except a missing target on a healthy endpoint.
    pub fn blames_endpoint(&self) -> bool {
        self.is_transient() && !matches!(self, ObserverError::ActionTargetMissing { .. })
    }

    /// How long the other side asked us to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ObserverError::ActionTransient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn transient(code: &'static str, message: impl Into<String>) -> Self {
        ObserverError::ActionTransient {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        ObserverError::ActionPermanent {
            code,
            message: message.into(),
        }
    }

    pub fn target_missing(code: &'static str, message: impl Into<String>) -> Self {
        ObserverError::ActionTargetMissing {
            code,
            message: message.into(),
        }
    }

    pub fn store(backend: &'static str, message: impl Into<String>) -> Self {
        ObserverError::Store {
            backend,
            message: message.into(),
            transient: true,
        }
    }
}

pub type Result<T, E = ObserverError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_variant() {
        let cases: Vec<(ObserverError, bool, &str)> = vec![
            (
                ObserverError::transient("OBS-WEBHOOK-5XX", "502"),
                true,
                "OBS-WEBHOOK-5XX",
            ),
            (
                ObserverError::permanent("OBS-WEBHOOK-4XX", "400"),
                false,
                "OBS-WEBHOOK-4XX",
            ),
            (
                ObserverError::CircuitOpen {
                    endpoint: "h".into(),
                },
                true,
                "OBS-BREAKER-OPEN",
            ),
            (
                ObserverError::Timeout {
                    what: "x".into(),
                    after: Duration::from_secs(1),
                },
                true,
                "OBS-TIMEOUT",
            ),
            (ObserverError::Fenced("lost".into()), false, "OBS-FENCED"),
            (
                ObserverError::InvalidEvent("bad".into()),
                false,
                "OBS-INVALID-EVENT",
            ),
        ];
        for (err, transient, code) in cases {
            assert_eq!(err.is_transient(), transient, "{err}");
            assert_eq!(err.code(), code);
            assert!(
                err.to_string().contains(code),
                "message carries its code: {err}"
            );
        }
    }
}
