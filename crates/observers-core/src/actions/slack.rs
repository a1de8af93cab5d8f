//! `type = "slack"`: a message to a Slack incoming webhook.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::http::{HttpClients, classify, transport_error};
use super::{Action, ActionResult, Invocation, render, template};
use crate::config::SlackConfig;
use crate::error::{ObserverError, Result};
use crate::template::Template;

pub struct SlackAction {
    clients: HttpClients,
    url: reqwest::Url,
    text: Template,
    channel: Option<String>,
    username: Option<String>,
    timeout: Option<Duration>,
    endpoint: String,
}

impl SlackAction {
    pub fn new(config: &SlackConfig, clients: HttpClients) -> Result<Self> {
        let url = reqwest::Url::parse(config.webhook_url.expose()).map_err(|e| {
            ObserverError::permanent(
                "OBS-CONFIG",
                format!("slack webhook_url: {e} (the URL is a secret and not shown)"),
            )
        })?;
        let endpoint = format!(
            "{}:{}",
            url.host_str().unwrap_or("slack"),
            url.port_or_known_default().unwrap_or(443)
        );
        Ok(Self {
            clients,
            url,
            text: template("text", &config.text)?,
            channel: config.channel.clone(),
            username: config.username.clone(),
            timeout: config.timeout,
            endpoint,
        })
    }
}

#[async_trait]
impl Action for SlackAction {
    fn type_name(&self) -> &'static str {
        "slack"
    }

    fn endpoint(&self) -> Option<&str> {
        Some(&self.endpoint)
    }

    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
        self.clients.policy.check_target(&self.url).await?;
        let mut payload = json!({ "text": render(&self.text, inv.template)? });
        if let Some(c) = &self.channel {
            payload["channel"] = json!(c);
        }
        if let Some(u) = &self.username {
            payload["username"] = json!(u);
        }
        let mut req = self.clients.client.post(self.url.clone()).json(&payload);
        if let Some(t) = self.timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| transport_error("slack", e))?;
        if resp.status().is_success() {
            Ok(ActionResult::new(format!(
                "HTTP {}",
                resp.status().as_u16()
            )))
        } else {
            Err(classify("slack", resp).await)
        }
    }
}
