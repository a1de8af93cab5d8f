//! The lifecycle of one instance's listener: Initializing → Connecting (acquiring leases) →
//! Running → Recovering (lease lost or connection trouble) → Running again, or Stopped.
//! Invalid transitions are errors; the time spent in the current state is tracked.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::HaError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerState {
    Initializing,
    Connecting,
    Running,
    Recovering,
    Stopped,
}

impl ListenerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerState::Initializing => "initializing",
            ListenerState::Connecting => "connecting",
            ListenerState::Running => "running",
            ListenerState::Recovering => "recovering",
            ListenerState::Stopped => "stopped",
        }
    }

    /// Whether `self → next` is allowed. Staying in a state is allowed (a no-op).
    pub fn can_transition_to(self, next: ListenerState) -> bool {
        use ListenerState::{Connecting, Initializing, Recovering, Running, Stopped};
        self == next
            || matches!(
                (self, next),
                (Initializing, Connecting | Stopped)
                    | (Connecting, Running | Recovering | Stopped)
                    | (Running, Recovering | Connecting | Stopped)
                    | (Recovering, Running | Connecting | Stopped)
            )
    }
}

impl fmt::Display for ListenerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ListenerState {
    type Err = HaError;
    fn from_str(s: &str) -> Result<Self, HaError> {
        Ok(match s {
            "initializing" => ListenerState::Initializing,
            "connecting" => ListenerState::Connecting,
            "running" => ListenerState::Running,
            "recovering" => ListenerState::Recovering,
            "stopped" | "failed" => ListenerState::Stopped,
            other => {
                return Err(HaError::Invalid(format!(
                    "unknown listener state `{other}`"
                )));
            }
        })
    }
}

#[derive(Debug)]
struct Current {
    state: ListenerState,
    since: Instant,
    recoveries: u32,
}

/// A listener's state with the time it entered it. Cheap to share (`Arc`); no lock is held
/// across an await.
#[derive(Debug)]
pub struct ListenerStateMachine {
    listener_id: String,
    max_recovery_attempts: u32,
    current: Mutex<Current>,
}

impl ListenerStateMachine {
    /// Starts in `Initializing`; at most `max_recovery_attempts` consecutive recoveries
    /// (Recovering without reaching Running in between) are allowed, then only Stopped is.
    pub fn new(listener_id: impl Into<String>, max_recovery_attempts: u32) -> Self {
        Self {
            listener_id: listener_id.into(),
            max_recovery_attempts,
            current: Mutex::new(Current {
                state: ListenerState::Initializing,
                since: Instant::now(),
                recoveries: 0,
            }),
        }
    }

    pub fn listener_id(&self) -> &str {
        &self.listener_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves to `next`; returns the previous state. Staying put keeps the entry time.
    pub fn transition(&self, next: ListenerState) -> Result<ListenerState, HaError> {
        let mut cur = self.lock();
        let prev = cur.state;
        if !prev.can_transition_to(next) {
            return Err(HaError::Invalid(format!(
                "listener `{}`: invalid state transition {prev} → {next}",
                self.listener_id
            )));
        }
        if next == ListenerState::Recovering && prev != ListenerState::Recovering {
            if cur.recoveries >= self.max_recovery_attempts {
                return Err(HaError::Invalid(format!(
                    "listener `{}`: gave up after {} recovery attempts",
                    self.listener_id, self.max_recovery_attempts
                )));
            }
            cur.recoveries += 1;
        }
        if next == ListenerState::Running {
            cur.recoveries = 0;
        }
        if prev != next {
            cur.state = next;
            cur.since = Instant::now();
        }
        Ok(prev)
    }

    pub fn state(&self) -> ListenerState {
        self.lock().state
    }

    /// Time spent in the current state.
    pub fn state_duration(&self) -> Duration {
        self.lock().since.elapsed()
    }

    /// Consecutive recoveries since the last time it was Running.
    pub fn recovery_attempts(&self) -> u32 {
        self.lock().recoveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ListenerState::{Connecting, Initializing, Recovering, Running, Stopped};

    #[test]
    fn normal_lifecycle_and_recovery() {
        let m = ListenerStateMachine::new("l", 3);
        assert_eq!(m.state(), Initializing);
        for (next, prev) in [
            (Connecting, Initializing),
            (Running, Connecting),
            (Recovering, Running),
            (Running, Recovering),
            (Stopped, Running),
        ] {
            assert_eq!(m.transition(next).unwrap(), prev);
        }
        assert_eq!(m.state(), Stopped);
    }

    #[test]
    fn invalid_transitions_are_errors_and_change_nothing() {
        let m = ListenerStateMachine::new("l", 3);
        let err = m.transition(Running).unwrap_err();
        assert!(err.to_string().contains("initializing → running"), "{err}");
        assert_eq!(m.state(), Initializing);
        m.transition(Stopped).unwrap();
        for next in [Initializing, Connecting, Running, Recovering] {
            assert!(m.transition(next).is_err(), "stopped → {next}");
        }
        assert!(!Running.can_transition_to(Initializing));
    }

    #[test]
    fn time_in_state_restarts_on_change_only() {
        let m = ListenerStateMachine::new("l", 3);
        m.transition(Connecting).unwrap();
        let before = m.lock().since;
        m.transition(Connecting).unwrap();
        assert_eq!(m.lock().since, before, "staying put keeps the entry time");
        m.transition(Running).unwrap();
        assert!(m.lock().since >= before);
        assert!(m.state_duration() < Duration::from_secs(3600));
    }

    #[test]
    fn recovery_attempts_are_bounded_and_reset_by_running() {
        let m = ListenerStateMachine::new("l", 2);
        m.transition(Connecting).unwrap();
        m.transition(Recovering).unwrap();
        m.transition(Connecting).unwrap();
        m.transition(Recovering).unwrap();
        assert_eq!(m.recovery_attempts(), 2);
        m.transition(Connecting).unwrap();
        assert!(m.transition(Recovering).is_err(), "third attempt refused");
        m.transition(Running).unwrap();
        assert_eq!(m.recovery_attempts(), 0);
        m.transition(Recovering).unwrap();
        assert_eq!(
            "failed".parse::<ListenerState>().unwrap(),
            Stopped,
            "the registry's `failed` reads as stopped"
        );
        assert!("bogus".parse::<ListenerState>().is_err());
    }
}
