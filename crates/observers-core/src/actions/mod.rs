//! Actions: what an observer does for a matching event. Every action follows one contract:
//! it gets an `Invocation` (the event, its observer, a stable idempotency key and a prepared
//! template context), does one attempt, and classifies any failure as transient or permanent.
//! Timeouts, retries, circuit breaking and dead-lettering are the executor's job, not the
//! action's.

mod broker;
mod cache;
mod email;
mod http;
mod log;
mod nats;
mod rabbitmq;
pub mod signing;
mod slack;
mod webhook;

use std::sync::Arc;

use async_trait::async_trait;

pub use cache::CacheAction;
pub use email::EmailAction;
pub use http::{HttpClients, OutboundPolicy};
pub use log::LogAction;
pub use nats::NatsAction;
pub use rabbitmq::RabbitMqAction;
pub use slack::SlackAction;
pub use webhook::{WebhookAction, webhook_body, webhook_body_bytes};

use crate::config::ActionConfig;
use crate::error::{ObserverError, Result};
use crate::event::EntityEvent;
use crate::template::TemplateContext;

/// One attempt's input.
#[derive(Debug)]
pub struct Invocation<'a> {
    pub event: &'a EntityEvent,
    pub observer: &'a str,
    pub action_index: usize,
    /// `"{event_id}:{observer}:{action_index}"`: stable across retries and redeliveries
    /// (`observers replay` appends `":replay-{replay_id}"`, see [`idempotency_key_with`]).
    pub idempotency_key: &'a str,
    pub template: &'a TemplateContext<'a>,
    /// 1-based attempt number.
    pub attempt: u32,
}

/// The stable idempotency key of one action for one event.
pub fn idempotency_key(event_id: i64, observer: &str, action_index: usize) -> String {
    idempotency_key_with(event_id, observer, action_index, None)
}

/// [`idempotency_key`] with `":{suffix}"` appended when there is one: a replay's deliveries
/// (`replay-{replay_id}`) are new to receivers that dedupe on the key.
pub fn idempotency_key_with(
    event_id: i64,
    observer: &str,
    action_index: usize,
    suffix: Option<&str>,
) -> String {
    match suffix {
        Some(s) => format!("{event_id}:{observer}:{action_index}:{s}"),
        None => format!("{event_id}:{observer}:{action_index}"),
    }
}

/// A short description of what an attempt did, e.g. `HTTP 200`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActionResult {
    pub detail: String,
}

impl ActionResult {
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
        }
    }
}

/// Something to do for an event.
#[async_trait]
pub trait Action: Send + Sync {
    fn type_name(&self) -> &'static str;

    /// The endpoint whose circuit breaker guards this action (e.g. a webhook host), if any.
    fn endpoint(&self) -> Option<&str> {
        None
    }

    /// What a `410 Gone` from this attempt disables: the URL it targets (see
    /// [`url_target`](crate::stores::gone::url_target)). `None`: the action as a whole.
    fn gone_target(&self, _inv: &Invocation<'_>) -> Option<String> {
        None
    }

    /// One attempt.
    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult>;
}

/// Builds actions from config, sharing HTTP clients and broker connections (one per URL).
#[derive(Debug, Clone)]
pub struct ActionFactory {
    clients: HttpClients,
    cache: Option<Arc<crate::executor::CachedActionExecutor>>,
    brokers: Arc<broker::BrokerLinks>,
}

impl ActionFactory {
    pub fn new(policy: OutboundPolicy) -> Result<Self> {
        Ok(Self {
            clients: HttpClients::new(policy)?,
            cache: None,
            brokers: Arc::default(),
        })
    }

    /// The action cache `cache` actions invalidate.
    #[must_use]
    pub fn with_cache(mut self, cache: Option<Arc<crate::executor::CachedActionExecutor>>) -> Self {
        self.cache = cache;
        self
    }

    pub fn build(&self, config: &ActionConfig) -> Result<Arc<dyn Action>> {
        Ok(match config {
            ActionConfig::Webhook(c) => Arc::new(WebhookAction::new(c, self.clients.clone())?),
            ActionConfig::Slack(c) => Arc::new(SlackAction::new(c, self.clients.clone())?),
            ActionConfig::Email(c) => Arc::new(EmailAction::new(c)?),
            ActionConfig::Log(c) => Arc::new(LogAction::new(c)?),
            ActionConfig::Cache(c) => Arc::new(CacheAction::new(c, self.cache.clone())?),
            ActionConfig::Nats(c) => {
                let link =
                    (self.brokers.nats).get(nats::NatsLink::key(c), || nats::NatsLink::new(c));
                Arc::new(NatsAction::new(c, link)?)
            }
            ActionConfig::RabbitMq(c) => {
                let link = (self.brokers.amqp)
                    .get(rabbitmq::AmqpLink::key(c), || rabbitmq::AmqpLink::new(c));
                Arc::new(RabbitMqAction::new(c, link)?)
            }
        })
    }
}

pub(crate) fn template(field: &str, source: &str) -> Result<crate::template::Template> {
    template_as(field, source, crate::template::Escape::Plain)
}

/// A template whose values are encoded for where they land (JSON body, URL, glob).
pub(crate) fn template_as(
    field: &str,
    source: &str,
    escape: crate::template::Escape,
) -> Result<crate::template::Template> {
    crate::template::Template::compile_as(source, escape)
        .map_err(|e| ObserverError::Template(format!("{field}: {e}")))
}

pub(crate) fn render(t: &crate::template::Template, ctx: &TemplateContext<'_>) -> Result<String> {
    t.render(ctx).map_err(ObserverError::Template)
}
