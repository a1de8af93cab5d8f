//! `type = "nats"`: a JetStream publish (async-nats) that succeeds once the stream acked it.
//! The idempotency key is the `Nats-Msg-Id`, so a re-send within the stream's duplicate window
//! (after a crash, a lost ack, a retry) is dropped by the stream instead of stored twice.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;

use super::broker::{HeaderTemplates, Slot, endpoint};
use super::webhook::{body_template, json_body};
use super::{Action, ActionResult, Invocation, render, template};
use crate::config::{NatsConfig, nats_subject};
use crate::error::{ObserverError, Result};
use crate::numbers::NumberFormat;
use crate::template::Template;

/// How long the stream's ack is awaited when the action sets no `timeout` (async-nats's own
/// default).
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(5);

/// One NATS connection, shared by every action with the same URL and credentials. async-nats
/// reconnects it by itself once made; until the first connect succeeds, each attempt tries.
pub(crate) struct NatsLink {
    url: String,
    token: Option<String>,
    credentials: Option<String>,
    tls: bool,
    tls_ca_file: Option<String>,
    endpoint: String,
    client: Slot<async_nats::Client>,
}

impl NatsLink {
    /// The key links are shared by: everything that makes a different connection.
    pub fn key(config: &NatsConfig) -> String {
        format!(
            "{}\n{:?}\n{:?}\n{}\n{:?}",
            config.url.expose(),
            config.token.as_ref().map(crate::config::Secret::expose),
            config.credentials,
            config.tls,
            config.tls_ca_file
        )
    }

    pub fn new(config: &NatsConfig) -> Self {
        Self {
            url: config.url.expose().to_owned(),
            token: config.token.as_ref().map(|t| t.expose().to_owned()),
            credentials: config.credentials.clone(),
            tls: config.tls,
            tls_ca_file: config.tls_ca_file.clone(),
            endpoint: endpoint(config.url.expose(), 4222),
            client: Slot::default(),
        }
    }

    async fn client(&self) -> Result<async_nats::Client> {
        self.client.get(|_| true, || self.connect()).await
    }

    async fn connect(&self) -> Result<async_nats::Client> {
        let mut options = match &self.credentials {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| {
                    ObserverError::permanent(
                        "OBS-NATS-CREDENTIALS",
                        format!("credentials file `{path}`: {e}"),
                    )
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.into());
        }
        let endpoint = self.endpoint.clone();
        options
            .name("observers")
            .require_tls(self.tls)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let endpoint = endpoint.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(endpoint = %endpoint, "NATS connected");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(endpoint = %endpoint, "NATS disconnected; reconnecting");
                        }
                        other => {
                            tracing::debug!(endpoint = %endpoint, event = %other, "NATS event");
                        }
                    }
                }
            })
            .connect(self.url.as_str())
            .await
            .map_err(|e| {
                ObserverError::transient(
                    "OBS-NATS-CONNECT",
                    crate::redact::text(&format!(
                        "cannot connect to NATS at {}: {e}",
                        self.endpoint
                    )),
                )
            })
    }
}

pub struct NatsAction {
    link: std::sync::Arc<NatsLink>,
    subject: Template,
    headers: HeaderTemplates,
    body: Option<Template>,
    numbers: NumberFormat,
    ack_wait: Duration,
}

impl NatsAction {
    pub(crate) fn new(config: &NatsConfig, link: std::sync::Arc<NatsLink>) -> Result<Self> {
        Ok(Self {
            link,
            subject: template("subject", &config.subject)?,
            headers: HeaderTemplates::new(&config.headers)?,
            body: body_template(config.body.as_deref())?,
            numbers: config.numbers,
            ack_wait: config.timeout.unwrap_or(DEFAULT_ACK_WAIT),
        })
    }
}

#[async_trait]
impl Action for NatsAction {
    fn type_name(&self) -> &'static str {
        "nats"
    }

    fn endpoint(&self) -> Option<&str> {
        Some(&self.link.endpoint)
    }

    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
        let subject = render(&self.subject, inv.template)?;
        nats_subject(&subject).map_err(|e| {
            ObserverError::permanent("OBS-NATS-SUBJECT", format!("subject rendered {e}"))
        })?;
        let body = json_body(self.body.as_ref(), inv, self.numbers, "OBS-NATS-BODY")?;
        let mut message = PublishMessage::build()
            .payload(body.into())
            .header("Content-Type", "application/json");
        for (name, value) in self.headers.render(inv.template)? {
            message = message.header(name, value.as_str());
        }
        let message = message.message_id(inv.idempotency_key);
        let client = self.link.client().await?;
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .timeout(self.ack_wait)
            .build(client);
        let ack = jetstream
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| self.publish_error(&subject, e.kind(), &e))?
            .await
            .map_err(|e| self.publish_error(&subject, e.kind(), &e))?;
        Ok(ActionResult::new(if ack.duplicate {
            format!(
                "duplicate, already in stream {} (seq {})",
                ack.stream, ack.sequence
            )
        } else {
            format!("stored in stream {} (seq {})", ack.stream, ack.sequence)
        }))
    }
}

impl NatsAction {
    fn publish_error(
        &self,
        subject: &str,
        kind: PublishErrorKind,
        err: &dyn std::fmt::Display,
    ) -> ObserverError {
        let at = &self.link.endpoint;
        match kind {
            PublishErrorKind::StreamNotFound => ObserverError::target_missing(
                "OBS-NATS-NO-STREAM",
                format!(
                    "no JetStream stream on {at} captures subject `{subject}`; add the subject to a stream (nats stream add) or fix `subject`"
                ),
            ),
            PublishErrorKind::TimedOut => ObserverError::transient(
                "OBS-NATS-ACK-TIMEOUT",
                format!(
                    "no ack from the stream for `{subject}` on {at} within {:?}",
                    self.ack_wait
                ),
            ),
            PublishErrorKind::MaxPayloadExceeded => ObserverError::permanent(
                "OBS-NATS-TOO-LARGE",
                format!("message for `{subject}` refused by {at}: {err}"),
            ),
            _ => ObserverError::transient(
                "OBS-NATS-PUBLISH",
                crate::redact::text(&format!("publish to `{subject}` on {at} failed: {err}")),
            ),
        }
    }
}
