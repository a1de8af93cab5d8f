//! The compiled observer set: observers with their conditions and built actions, the matcher
//! over them, and the match decision for one event (used by the executor and by `debug-event`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::actions::{Action, ActionFactory};
use crate::condition::{Condition, ConditionContext, Variables};
use crate::config::{ActionMode, Config};
use crate::error::Result;
use crate::event::{EntityEvent, EventKind};
use crate::matcher::Matcher;
use crate::retry::RetryPolicy;

/// One built action of an observer.
pub struct ActionSlot {
    pub action: Arc<dyn Action>,
    pub mode: ActionMode,
    pub timeout: Option<Duration>,
    /// A human summary without secrets, e.g. `POST http://host/path`.
    pub summary: String,
    /// Queued mode: the job queue and the jobs' priority (higher runs first in the queue).
    pub queue: String,
    pub priority: i32,
}

impl ActionSlot {
    pub fn new(action: Arc<dyn Action>, summary: impl Into<String>) -> Self {
        Self {
            action,
            mode: ActionMode::Inline,
            timeout: None,
            summary: summary.into(),
            queue: crate::config::DEFAULT_QUEUE.to_owned(),
            priority: 0,
        }
    }

    /// Where its jobs go when it is queued.
    #[must_use]
    pub fn with_queue(mut self, queue: impl Into<String>, priority: i32) -> Self {
        self.queue = queue.into();
        self.priority = priority;
        self
    }

    #[must_use]
    pub fn with_mode(mut self, mode: ActionMode) -> Self {
        self.mode = mode;
        self
    }

    #[must_use]
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }
}

/// An observer ready to run.
pub struct CompiledObserver {
    pub name: String,
    pub entity: String,
    pub kinds: Vec<EventKind>,
    pub condition: Option<Condition>,
    pub tenants: Option<Vec<String>>,
    pub enabled: bool,
    pub actions: Vec<ActionSlot>,
}

impl CompiledObserver {
    pub fn new(name: impl Into<String>, entity: impl Into<String>, kinds: Vec<EventKind>) -> Self {
        Self {
            name: name.into(),
            entity: entity.into(),
            kinds,
            condition: None,
            tenants: None,
            enabled: true,
            actions: Vec::new(),
        }
    }

    #[must_use]
    pub fn with_condition(mut self, condition: Condition) -> Self {
        self.condition = Some(condition);
        self
    }

    #[must_use]
    pub fn with_action(mut self, slot: ActionSlot) -> Self {
        self.actions.push(slot);
        self
    }

    #[must_use]
    pub fn with_tenants(mut self, tenants: Vec<String>) -> Self {
        self.tenants = Some(tenants);
        self
    }
}

/// Why an observer did or did not fire for an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum MatchDecision {
    Matched {
        /// The condition's referenced values, when it has one.
        bindings: Vec<(String, serde_json::Value)>,
    },
    EntityOrKindMismatch,
    Disabled,
    TenantExcluded {
        tenant: Option<String>,
    },
    ConditionFalse {
        bindings: Vec<(String, serde_json::Value)>,
    },
    ConditionError {
        error: String,
    },
}

impl MatchDecision {
    pub fn is_match(&self) -> bool {
        matches!(self, MatchDecision::Matched { .. })
    }
}

/// Every observer, the matcher over them, and the retry/timeout policy they run under.
pub struct ObserverSet {
    pub observers: Vec<CompiledObserver>,
    pub matcher: Matcher,
    pub retry: RetryPolicy,
    pub action_timeout: Duration,
    /// Attempts a queued action's job gets (`[queue] max_attempts`).
    pub job_max_attempts: u32,
    /// What the conditions read, so each event converts only those values (set by `new`,
    /// like the matcher: the observers are not changed after).
    variables: Variables,
}

impl ObserverSet {
    pub fn new(
        observers: Vec<CompiledObserver>,
        retry: RetryPolicy,
        action_timeout: Duration,
    ) -> Self {
        let matcher = Matcher::new(
            observers
                .iter()
                .enumerate()
                .map(|(i, o)| (i, o.entity.as_str(), o.kinds.clone())),
        );
        let variables = Variables::of(observers.iter().filter_map(|o| o.condition.as_ref()));
        Self {
            observers,
            matcher,
            variables,
            retry,
            action_timeout,
            job_max_attempts: crate::stores::jobs::DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Builds every observer's actions from a validated config.
    pub fn from_config(config: &Config, factory: &ActionFactory) -> Result<Self> {
        let mut observers = Vec::with_capacity(config.observers.len());
        for oc in &config.observers {
            let mut o = CompiledObserver::new(oc.name(), oc.entity(), oc.kinds());
            o.condition.clone_from(&oc.compiled);
            o.tenants.clone_from(&oc.tenants);
            o.enabled = oc.enabled;
            for ac in &oc.actions {
                let ac = ac.get_ref();
                o.actions.push(
                    ActionSlot::new(factory.build(ac)?, ac.summary())
                        .with_mode(ac.mode())
                        .with_queue(ac.job_queue(), ac.job_priority())
                        .with_timeout(ac.timeout()),
                );
            }
            observers.push(o);
        }
        let mut set = Self::new(
            observers,
            RetryPolicy::from(&config.retry),
            config.executor.action_timeout,
        );
        set.job_max_attempts = config.queue.max_attempts;
        Ok(set)
    }

    pub fn find(&self, name: &str) -> Option<&CompiledObserver> {
        self.observers.iter().find(|o| o.name == name)
    }

    /// Indices of the observers that fire for `event`, in config order. Condition errors are
    /// reported through `on_error` and count as no match.
    pub fn matching(
        &self,
        event: &EntityEvent,
        on_error: &mut dyn FnMut(&str, &str),
    ) -> Vec<usize> {
        let candidates = self.matcher.lookup(&event.entity_type, event.kind);
        let mut ctx: Option<ConditionContext> = None;
        let mut out = Vec::with_capacity(candidates.len());
        for &i in candidates {
            let o = &self.observers[i];
            if !o.enabled || !tenant_allowed(o, event) {
                continue;
            }
            match &o.condition {
                None => out.push(i),
                Some(c) => {
                    let ctx = ctx.get_or_insert_with(|| {
                        ConditionContext::for_variables(event, &self.variables)
                    });
                    match c.evaluate(ctx) {
                        Ok(true) => out.push(i),
                        Ok(false) => {}
                        Err(e) => on_error(&o.name, &e.to_string()),
                    }
                }
            }
        }
        out
    }

    /// The decision for every observer, with reasons: the `debug-event` dry run.
    pub fn explain(&self, event: &EntityEvent) -> Vec<(&CompiledObserver, MatchDecision)> {
        let candidates = self.matcher.lookup(&event.entity_type, event.kind);
        let ctx = ConditionContext::new(event);
        self.observers
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let decision = if !candidates.contains(&i) {
                    MatchDecision::EntityOrKindMismatch
                } else if !o.enabled {
                    MatchDecision::Disabled
                } else if !tenant_allowed(o, event) {
                    MatchDecision::TenantExcluded {
                        tenant: event.tenant_id.clone(),
                    }
                } else if let Some(c) = &o.condition {
                    let ex = c.explain(&ctx);
                    match ex.result {
                        Ok(true) => MatchDecision::Matched {
                            bindings: ex.bindings,
                        },
                        Ok(false) => MatchDecision::ConditionFalse {
                            bindings: ex.bindings,
                        },
                        Err(error) => MatchDecision::ConditionError { error },
                    }
                } else {
                    MatchDecision::Matched { bindings: vec![] }
                };
                (o, decision)
            })
            .collect()
    }
}

fn tenant_allowed(o: &CompiledObserver, event: &EntityEvent) -> bool {
    match (&o.tenants, &event.tenant_id) {
        (None, _) => true,
        (Some(list), Some(t)) => list.iter().any(|x| x == t),
        (Some(_), None) => false,
    }
}
