//! `type = "log"`: a structured log line, for demos and debugging.

use async_trait::async_trait;

use super::{Action, ActionResult, Invocation, render, template};
use crate::config::LogConfig;
use crate::error::Result;
use crate::template::Template;

pub struct LogAction {
    level: tracing::Level,
    message: Option<Template>,
}

impl LogAction {
    pub fn new(config: &LogConfig) -> Result<Self> {
        let level = config.level.parse().unwrap_or(tracing::Level::INFO);
        Ok(Self {
            level,
            message: config
                .message
                .as_deref()
                .map(|m| template("message", m))
                .transpose()?,
        })
    }
}

#[async_trait]
impl Action for LogAction {
    fn type_name(&self) -> &'static str {
        "log"
    }

    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
        let message = match &self.message {
            Some(t) => render(t, inv.template)?,
            None => format!(
                "{} {} {}",
                inv.event.entity_type, inv.event.entity_id, inv.event.kind
            ),
        };
        let e = inv.event;
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "observers::action::log", $lvl, observer = inv.observer, event_id = e.id,
                    entity_type = %e.entity_type, entity_id = %e.entity_id, kind = %e.kind, "{message}")
            };
        }
        match self.level {
            tracing::Level::ERROR => emit!(tracing::Level::ERROR),
            tracing::Level::WARN => emit!(tracing::Level::WARN),
            tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
            tracing::Level::TRACE => emit!(tracing::Level::TRACE),
            tracing::Level::INFO => emit!(tracing::Level::INFO),
        }
        Ok(ActionResult::new(message))
    }
}
