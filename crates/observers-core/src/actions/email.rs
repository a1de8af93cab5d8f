//! `type = "email"`: a templated message sent over SMTP (lettre).

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Action, ActionResult, Invocation, render, template};
use crate::config::EmailConfig;
use crate::error::{ObserverError, Result};
use crate::template::Template;

pub struct EmailAction {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Template,
    to: Vec<Template>,
    subject: Template,
    body: Template,
    endpoint: String,
}

impl EmailAction {
    pub fn new(config: &EmailConfig) -> Result<Self> {
        let smtp = config.smtp_url.expose();
        let endpoint = url::Url::parse(smtp)
            .ok()
            .and_then(|u| {
                u.host_str()
                    .map(|h| format!("{h}:{}", u.port().unwrap_or(25)))
            })
            .unwrap_or_else(|| "smtp".into());
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp).map_err(|e| {
            ObserverError::permanent("OBS-CONFIG", crate::redact::text(&format!("smtp_url: {e}")))
        })?;
        builder = builder.timeout(Some(config.timeout.unwrap_or(Duration::from_secs(30))));
        Ok(Self {
            transport: builder.build(),
            from: template("from", &config.from)?,
            to: config
                .to
                .iter()
                .map(|t| template("to", t))
                .collect::<Result<_>>()?,
            subject: template("subject", &config.subject)?,
            body: template("body", &config.body)?,
            endpoint,
        })
    }
}

fn mailbox(field: &str, addr: &str) -> Result<Mailbox> {
    addr.parse().map_err(|e| {
        ObserverError::permanent("OBS-EMAIL-ADDRESS", format!("{field} `{addr}`: {e}"))
    })
}

#[async_trait]
impl Action for EmailAction {
    fn type_name(&self) -> &'static str {
        "email"
    }

    fn endpoint(&self) -> Option<&str> {
        Some(&self.endpoint)
    }

    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
        let mut msg = Message::builder()
            .from(mailbox("from", &render(&self.from, inv.template)?)?)
            .subject(render(&self.subject, inv.template)?)
            .message_id(Some(format!(
                "<{}@observers>",
                inv.idempotency_key.replace(':', ".")
            )))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            msg = msg.to(mailbox("to", &render(to, inv.template)?)?);
        }
        let msg = msg
            .body(render(&self.body, inv.template)?)
            .map_err(|e| ObserverError::permanent("OBS-EMAIL-BUILD", e.to_string()))?;
        match self.transport.send(msg).await {
            Ok(resp) => Ok(ActionResult::new(format!("SMTP {}", resp.code()))),
            Err(e) if e.is_permanent() => Err(ObserverError::permanent(
                "OBS-EMAIL-REJECTED",
                crate::redact::text(&format!("SMTP server rejected the message: {e}")),
            )),
            Err(e) => Err(ObserverError::transient(
                "OBS-EMAIL-SMTP",
                crate::redact::text(&format!("SMTP delivery failed: {e}")),
            )),
        }
    }
}
