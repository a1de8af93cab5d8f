//! What happened to one event: which observers matched and how each action ended.

use std::time::Duration;

use serde::Serialize;

use crate::error::ObserverError;
use crate::event::{EntityEvent, EventKind};
use crate::telemetry::ActionOutcome;

/// One action's result for one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionReport {
    pub observer: String,
    pub action_index: usize,
    pub action_type: &'static str,
    pub outcome: ActionOutcome,
    pub attempts: u32,
    #[serde(with = "millis")]
    pub duration: Duration,
    pub detail: Option<String>,
    pub error_code: Option<&'static str>,
    pub error: Option<String>,
}

impl ActionReport {
    pub(crate) fn new(observer: &str, action_index: usize, action_type: &'static str) -> Self {
        Self {
            observer: observer.to_owned(),
            action_index,
            action_type,
            outcome: ActionOutcome::Success,
            attempts: 0,
            duration: Duration::ZERO,
            detail: None,
            error_code: None,
            error: None,
        }
    }

    pub(crate) fn finish(
        mut self,
        outcome: ActionOutcome,
        attempts: u32,
        duration: Duration,
        detail: Option<String>,
    ) -> Self {
        self.outcome = outcome;
        self.attempts = attempts;
        self.duration = duration;
        self.detail = detail;
        self
    }

    pub(crate) fn failed(
        mut self,
        outcome: ActionOutcome,
        attempts: u32,
        duration: Duration,
        err: &ObserverError,
    ) -> Self {
        self.outcome = outcome;
        self.attempts = attempts;
        self.duration = duration;
        self.error_code = Some(err.code());
        self.error = Some(err.to_string());
        self
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, ActionOutcome::Success | ActionOutcome::Queued)
    }
}

/// The outcome of processing one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionSummary {
    pub event_id: i64,
    pub entity_type: String,
    pub entity_id: String,
    pub kind: EventKind,
    /// Skipped as a duplicate: nothing ran.
    pub deduplicated: bool,
    pub matched: Vec<String>,
    pub actions: Vec<ActionReport>,
    #[serde(with = "millis")]
    pub duration: Duration,
}

impl ExecutionSummary {
    pub(crate) fn deduplicated(event: &EntityEvent, duration: Duration) -> Self {
        Self {
            event_id: event.id,
            entity_type: event.entity_type.clone(),
            entity_id: event.entity_id.clone(),
            kind: event.kind,
            deduplicated: true,
            matched: Vec::new(),
            actions: Vec::new(),
            duration,
        }
    }

    pub fn succeeded(&self) -> usize {
        self.actions.iter().filter(|a| a.succeeded()).count()
    }

    pub fn failed(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| {
                matches!(
                    a.outcome,
                    ActionOutcome::DeadLettered | ActionOutcome::ShortCircuited
                )
            })
            .count()
    }
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}
