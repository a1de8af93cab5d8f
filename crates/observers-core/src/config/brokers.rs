//! The broker actions' config (`type = "nats"`, `type = "rabbitmq"`) and its validation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::model::{ActionMode, Secret, check_template, duration};

/// `type = "nats"`: a JetStream publish, acknowledged by the stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:4222` or `tls://host:4222`; a user and password may be in the URL.
    pub url: Secret,
    /// Templated, e.g. `orders.{{ event_type }}`.
    pub subject: String,
    /// Header values are templated and treated as secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Optional JSON body template; the documented webhook body when absent.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub numbers: crate::numbers::NumberFormat,
    /// A token (`token = "${NATS_TOKEN}"`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// A `.creds` file (JWT and NKey seed), e.g. `credentials = "${NATS_CREDS}"`.
    #[serde(default)]
    pub credentials: Option<String>,
    /// Require TLS (also implied by a `tls://` URL).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CAs to trust besides the system's.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// How long the stream's ack is awaited (also bounded by the action timeout).
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub mode: ActionMode,
    /// Queued only: the job queue its jobs go to (`default` when unset).
    #[serde(default)]
    pub queue: Option<String>,
    /// Queued only: higher runs first within the queue (-1000 to 1000, default 0).
    #[serde(default)]
    pub priority: i32,
}

/// `type = "rabbitmq"`: a persistent, mandatory AMQP 0-9-1 publish with publisher confirms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConfig {
    /// `amqp://user:pass@host:5672/vhost` or `amqps://...`.
    pub url: Secret,
    /// The exchange (`""` is the default exchange, which routes by queue name).
    pub exchange: String,
    /// Templated, e.g. `orders.{{ event_type }}`.
    pub routing_key: String,
    /// Message headers; values are templated and treated as secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub numbers: crate::numbers::NumberFormat,
    /// PEM file of the CAs to trust for `amqps://` besides the system's.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// How long the broker's confirm is awaited (also bounded by the action timeout).
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub mode: ActionMode,
    /// Queued only: the job queue its jobs go to (`default` when unset).
    #[serde(default)]
    pub queue: Option<String>,
    /// Queued only: higher runs first within the queue (-1000 to 1000, default 0).
    #[serde(default)]
    pub priority: i32,
}

/// Headers a NATS action sets itself or the server interprets (`Nats-Msg-Id`,
/// `Nats-Expected-*`, ...): any name starting with this prefix, in any case.
pub const NATS_RESERVED_PREFIX: &str = "nats-";

impl NatsConfig {
    pub fn summary(&self) -> String {
        format!(
            "nats {} {}",
            crate::redact::url(self.url.expose()),
            self.subject
        )
    }

    pub fn validate(&self) -> Result<(), String> {
        let url = broker_url("url", self.url.expose(), &["nats", "tls"])?;
        if self.token.is_some() && self.credentials.is_some() {
            return Err("token and credentials are both set; use one".into());
        }
        if self.token.is_some() && !url.username().is_empty() {
            return Err("token and a user in the url are both set; use one".into());
        }
        if let Some(path) = &self.credentials {
            readable("credentials", path)?;
        }
        if let Some(path) = &self.tls_ca_file {
            readable("tls_ca_file", path)?;
        }
        if self.subject.trim().is_empty() {
            return Err("subject is empty".into());
        }
        check_template("subject", &self.subject)?;
        if !self.subject.contains("{{") && !self.subject.contains("{%") {
            nats_subject(&self.subject).map_err(|e| format!("subject: {e}"))?;
        }
        for (name, value) in &self.headers {
            if name.to_ascii_lowercase().starts_with(NATS_RESERVED_PREFIX) {
                return Err(format!(
                    "headers.{name}: `Nats-` headers are set by the action (Nats-Msg-Id) or interpreted by the server; they cannot be configured"
                ));
            }
            header_name(name)?;
            check_template(&format!("headers.{name}"), value.expose())?;
        }
        body("body", self.body.as_deref(), self.numbers)
    }
}

impl RabbitMqConfig {
    pub fn summary(&self) -> String {
        format!(
            "rabbitmq {} exchange `{}` key {}",
            crate::redact::url(self.url.expose()),
            self.exchange,
            self.routing_key
        )
    }

    pub fn validate(&self) -> Result<(), String> {
        broker_url("url", self.url.expose(), &["amqp", "amqps"])?;
        if self.exchange.len() > 255
            || !self
                .exchange
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(format!(
                "exchange `{}`: at most 255 letters, digits, `-`, `_`, `.` or `:` (\"\" is the default exchange)",
                self.exchange
            ));
        }
        check_template("routing_key", &self.routing_key)?;
        if self.routing_key.len() > 255 {
            return Err("routing_key: longer than 255 bytes".into());
        }
        if let Some(path) = &self.tls_ca_file {
            readable("tls_ca_file", path)?;
        }
        for (name, value) in &self.headers {
            header_name(name)?;
            check_template(&format!("headers.{name}"), value.expose())?;
        }
        body("body", self.body.as_deref(), self.numbers)
    }
}

/// A broker URL with one of `schemes` and a host; the error never shows the URL's secrets.
fn broker_url(field: &str, text: &str, schemes: &[&str]) -> Result<url::Url, String> {
    let shown = crate::redact::url(text);
    let url = url::Url::parse(text).map_err(|e| format!("{field} `{shown}`: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "{field} `{shown}`: the scheme must be {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{field} `{shown}`: no host"));
    }
    Ok(url)
}

fn readable(field: &str, path: &str) -> Result<(), String> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| format!("{field} `{path}` cannot be read: {e}"))
}

fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!(
            "headers: `{name}` is not a header name (printable ASCII without spaces or `:`)"
        ));
    }
    Ok(())
}

fn body(
    field: &str,
    body: Option<&str>,
    numbers: crate::numbers::NumberFormat,
) -> Result<(), String> {
    if let Some(body) = body {
        check_template(field, body)?;
        if numbers == crate::numbers::NumberFormat::String {
            return Err(format!(
                "numbers = \"string\" applies to the default JSON body, not to a `{field}` template"
            ));
        }
    }
    Ok(())
}

/// Checks a NATS publish subject: dot-separated non-empty tokens, no whitespace, no wildcards.
pub fn nats_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("empty subject".into());
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{subject}` contains whitespace"));
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err(format!(
                "`{subject}` has an empty token (`..` or a dot at an end)"
            ));
        }
        if token == "*" || token == ">" {
            return Err(format!(
                "`{subject}` has a wildcard token; a message is published to one subject"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nats_subject;

    #[test]
    fn subjects() {
        for ok in ["orders", "orders.insert", "a.b-c.d_e", "orders.42"] {
            assert!(nats_subject(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "orders.", ".orders", "a..b", "a b", "a.*", "a.>", "a\tb",
        ] {
            assert!(nats_subject(bad).is_err(), "{bad:?}");
        }
    }
}
