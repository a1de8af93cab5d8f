//! `type = "webhook"`: an HTTP request with the documented JSON event body, Standard Webhooks
//! signing and a stable idempotency key.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use super::http::{HttpClients, classify, transport_error};
use super::{Action, ActionResult, Invocation, render, signing, template, template_as};
use crate::config::WebhookConfig;
use crate::error::{ObserverError, Result};
use crate::event::{EntityEvent, FieldChange};
use crate::numbers::{NumberFormat, StringNumbers};
use crate::template::{Escape, Template};

/// The documented webhook body.
pub fn webhook_body(event: &EntityEvent, observer: &str) -> Value {
    serde_json::to_value(WebhookBody::new(event, observer)).unwrap_or(Value::Null)
}

/// The documented webhook body, borrowing the event: serialized straight to bytes, so the rows
/// are neither copied nor re-parsed and their numbers keep PostgreSQL's digits.
#[derive(Serialize)]
struct WebhookBody<'a> {
    id: i64,
    observer: &'a str,
    entity_type: &'a str,
    entity_id: &'a str,
    event_type: &'a str,
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
    timestamp: String,
    data: &'a Option<Value>,
    before: &'a Option<Value>,
    changes: &'a [FieldChange],
}

impl<'a> WebhookBody<'a> {
    fn new(event: &'a EntityEvent, observer: &'a str) -> Self {
        Self {
            id: event.id,
            observer,
            entity_type: &event.entity_type,
            entity_id: &event.entity_id,
            event_type: event.kind.as_str(),
            tenant_id: event.tenant_id.as_deref(),
            user_id: event.user_id.as_deref(),
            timestamp: event.timestamp.to_rfc3339(),
            data: &event.after,
            before: &event.before,
            changes: &event.changes,
        }
    }
}

/// The default body's bytes, with numbers as `numbers` says.
pub fn webhook_body_bytes(
    event: &EntityEvent,
    observer: &str,
    numbers: NumberFormat,
) -> serde_json::Result<Vec<u8>> {
    let body = WebhookBody::new(event, observer);
    match numbers {
        NumberFormat::Exact => serde_json::to_vec(&body),
        NumberFormat::String => serde_json::to_vec(&StringNumbers(&serde_json::to_value(body)?)),
    }
}

/// A `body` template, its values encoded as JSON.
pub(crate) fn body_template(source: Option<&str>) -> Result<Option<Template>> {
    source
        .map(|b| template_as("body", b, Escape::Json))
        .transpose()
}

/// The JSON body of an action (webhook, broker message): its `body` template rendered and
/// checked to be JSON, or the documented webhook body. `code` names a failure.
pub(crate) fn json_body(
    template: Option<&Template>,
    inv: &Invocation<'_>,
    numbers: NumberFormat,
    code: &'static str,
) -> Result<Vec<u8>> {
    match template {
        Some(t) => {
            let body = render(t, inv.template)?;
            // Row values cannot break the JSON (they are encoded); the template's own text
            // can, and such a body is never sent.
            serde_json::from_str::<serde::de::IgnoredAny>(&body).map_err(|e| {
                ObserverError::permanent(
                    code,
                    format!("the body template did not render valid JSON: {e}"),
                )
            })?;
            Ok(body.into_bytes())
        }
        None => webhook_body_bytes(inv.event, inv.observer, numbers)
            .map_err(|e| ObserverError::permanent(code, e.to_string())),
    }
}

pub struct WebhookAction {
    clients: HttpClients,
    method: reqwest::Method,
    url: Template,
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    body: Option<Template>,
    numbers: NumberFormat,
    timeout: Option<Duration>,
    secret: Option<Vec<u8>>,
    /// The host, for the circuit breaker; `None` when the URL host is templated.
    endpoint: Option<String>,
}

impl WebhookAction {
    pub fn new(config: &WebhookConfig, clients: HttpClients) -> Result<Self> {
        let method = reqwest::Method::from_bytes(config.method.as_bytes()).map_err(|_| {
            ObserverError::permanent("OBS-CONFIG", format!("bad method `{}`", config.method))
        })?;
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                if signing::RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(ObserverError::permanent(
                        "OBS-CONFIG",
                        format!("headers: `{name}` is set by the webhook action and cannot be configured"),
                    ));
                }
                let name =
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        ObserverError::permanent("OBS-CONFIG", format!("bad header name `{name}`"))
                    })?;
                Ok((name, template("header", value.expose())?))
            })
            .collect::<Result<_>>()?;
        let endpoint = reqwest::Url::parse(&config.url).ok().and_then(|u| {
            u.host_str()
                .map(|h| format!("{h}:{}", u.port_or_known_default().unwrap_or(0)))
        });
        Ok(Self {
            clients,
            method,
            url: template_as("url", &config.url, Escape::Url)?,
            headers,
            body: body_template(config.body.as_deref())?,
            numbers: config.numbers,
            timeout: config.timeout,
            secret: config
                .signing_secret
                .as_ref()
                .map(|s| {
                    signing::secret_bytes(s.expose()).map_err(|e| {
                        ObserverError::permanent("OBS-CONFIG", format!("signing_secret {e}"))
                    })
                })
                .transpose()?,
            endpoint,
        })
    }
}

#[async_trait]
impl Action for WebhookAction {
    fn type_name(&self) -> &'static str {
        "webhook"
    }

    fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    fn gone_target(&self, inv: &Invocation<'_>) -> Option<String> {
        let url = render(&self.url, inv.template).ok()?;
        reqwest::Url::parse(&url)
            .ok()
            .map(|u| crate::stores::gone::url_target(&u))
    }

    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
        let url_text = render(&self.url, inv.template)?;
        let url = reqwest::Url::parse(&url_text).map_err(|e| {
            ObserverError::permanent(
                "OBS-WEBHOOK-URL",
                format!("url `{}`: {e}", crate::redact::url(&url_text)),
            )
        })?;
        self.clients.policy.check_target(&url).await?;
        let body = json_body(self.body.as_ref(), inv, self.numbers, "OBS-WEBHOOK-BODY")?;
        let timestamp = chrono::Utc::now().timestamp();
        let mut req = self
            .clients
            .client
            .request(self.method.clone(), url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", inv.idempotency_key)
            .header("webhook-timestamp", timestamp.to_string())
            .header("idempotency-key", inv.idempotency_key);
        if let Some(secret) = &self.secret {
            req = req.header(
                "webhook-signature",
                signing::sign(secret, inv.idempotency_key, timestamp, &body),
            );
        }
        for (name, value) in &self.headers {
            req = req.header(name.clone(), render(value, inv.template)?);
        }
        if let Some(t) = self.timeout {
            req = req.timeout(t);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error("webhook", e))?;
        if resp.status().is_success() {
            Ok(ActionResult::new(format!(
                "HTTP {}",
                resp.status().as_u16()
            )))
        } else {
            Err(classify("webhook endpoint", resp).await)
        }
    }
}
