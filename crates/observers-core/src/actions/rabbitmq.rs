//! `type = "rabbitmq"`: an AMQP 0-9-1 publish (lapin) that succeeds once the broker confirmed
//! it. Messages are persistent and mandatory, so a message no queue takes comes back and is a
//! failure; `message_id` is the idempotency key, for consumers to drop re-sends.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};

use super::broker::{HeaderTemplates, Slot, endpoint};
use super::webhook::{body_template, json_body};
use super::{Action, ActionResult, Invocation, render, template};
use crate::config::RabbitMqConfig;
use crate::error::{ObserverError, Result};
use crate::numbers::NumberFormat;
use crate::template::Template;

/// AMQP `delivery_mode` of a message the broker writes to disk (on a durable queue).
const PERSISTENT: u8 = 2;

/// One AMQP connection, shared by every action with the same URL. lapin does not reconnect
/// by itself here: a connection that reports itself closed is replaced at the next attempt.
pub(crate) struct AmqpLink {
    url: String,
    tls_ca_file: Option<String>,
    endpoint: String,
    connection: Slot<Arc<Connection>>,
}

impl AmqpLink {
    pub fn key(config: &RabbitMqConfig) -> String {
        format!("{}\n{:?}", config.url.expose(), config.tls_ca_file)
    }

    pub fn new(config: &RabbitMqConfig) -> Self {
        Self {
            url: config.url.expose().to_owned(),
            tls_ca_file: config.tls_ca_file.clone(),
            endpoint: endpoint(config.url.expose(), 5672),
            connection: Slot::default(),
        }
    }

    async fn connection(&self) -> Result<Arc<Connection>> {
        self.connection
            .get(|c| c.status().connected(), || self.connect())
            .await
    }

    async fn connect(&self) -> Result<Arc<Connection>> {
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: match &self.tls_ca_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                    ObserverError::permanent("OBS-AMQP-TLS", format!("tls_ca_file `{path}`: {e}"))
                })?),
                None => None,
            },
        };
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| ObserverError::permanent("OBS-AMQP-CONNECT", e.to_string()))?;
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("observers"));
        let connection = Connection::connect_with_config(&self.url, properties, tls, runtime)
            .await
            .map_err(|e| {
                ObserverError::transient(
                    "OBS-AMQP-CONNECT",
                    crate::redact::text(&format!(
                        "cannot connect to RabbitMQ at {}: {e}",
                        self.endpoint
                    )),
                )
            })?;
        tracing::info!(endpoint = %self.endpoint, "RabbitMQ connected");
        Ok(Arc::new(connection))
    }
}

pub struct RabbitMqAction {
    link: Arc<AmqpLink>,
    /// This action's own confirm-mode channel: a channel the broker closes (an exchange that
    /// does not exist) takes only this action's publishes with it.
    channel: Slot<Channel>,
    exchange: ShortString,
    routing_key: Template,
    headers: HeaderTemplates,
    body: Option<Template>,
    numbers: NumberFormat,
}

impl RabbitMqAction {
    pub(crate) fn new(config: &RabbitMqConfig, link: Arc<AmqpLink>) -> Result<Self> {
        Ok(Self {
            link,
            channel: Slot::default(),
            exchange: ShortString::try_new(config.exchange.as_str())
                .map_err(|e| ObserverError::permanent("OBS-CONFIG", format!("exchange: {e}")))?,
            routing_key: template("routing_key", &config.routing_key)?,
            headers: HeaderTemplates::new(&config.headers)?,
            body: body_template(config.body.as_deref())?,
            numbers: config.numbers,
        })
    }

    async fn channel(&self) -> Result<Channel> {
        self.channel
            .get(
                |c| c.status().connected(),
                || async {
                    let connection = self.link.connection().await?;
                    let channel = connection
                        .create_channel()
                        .await
                        .map_err(|e| self.amqp_error(&e))?;
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await
                        .map_err(|e| self.amqp_error(&e))?;
                    Ok(channel)
                },
            )
            .await
    }

    fn properties(&self, inv: &Invocation<'_>) -> Result<BasicProperties> {
        let mut headers = FieldTable::default();
        for (name, value) in self.headers.render(inv.template)? {
            headers.insert(
                short("header name", name)?,
                AMQPValue::LongString(LongString::from(value)),
            );
        }
        Ok(BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(short("message_id", inv.idempotency_key)?)
            .with_app_id(ShortString::from("observers"))
            .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0))
            .with_headers(headers))
    }

    /// A failed operation: the exchange missing is the target's fault; anything else (the
    /// connection or channel gone, a refused login, a broker error) may pass.
    fn amqp_error(&self, err: &lapin::Error) -> ObserverError {
        let at = &self.link.endpoint;
        if let ErrorKind::ProtocolError(amqp) = err.kind()
            && amqp.get_id() == 404
        {
            return ObserverError::target_missing(
                "OBS-AMQP-NO-EXCHANGE",
                format!(
                    "exchange `{}` does not exist on {at} ({}); declare it or fix `exchange`",
                    self.exchange,
                    amqp.get_message()
                ),
            );
        }
        ObserverError::transient(
            "OBS-AMQP-PUBLISH",
            crate::redact::text(&format!("RabbitMQ at {at}: {err}")),
        )
    }
}

/// An AMQP short string (at most 255 bytes).
fn short(what: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value)
        .map_err(|e| ObserverError::permanent("OBS-AMQP-MESSAGE", format!("{what} `{value}`: {e}")))
}

#[async_trait]
impl Action for RabbitMqAction {
    fn type_name(&self) -> &'static str {
        "rabbitmq"
    }

    fn endpoint(&self) -> Option<&str> {
        Some(&self.link.endpoint)
    }

    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
        let routing_key = short("routing_key", &render(&self.routing_key, inv.template)?)?;
        let body = json_body(self.body.as_ref(), inv, self.numbers, "OBS-AMQP-BODY")?;
        let properties = self.properties(inv)?;
        let channel = self.channel().await?;
        let confirmation = channel
            .basic_publish(
                self.exchange.clone(),
                routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                properties,
            )
            .await
            .map_err(|e| self.amqp_error(&e))?
            .await
            .map_err(|e| self.amqp_error(&e))?;
        let at = &self.link.endpoint;
        match confirmation {
            Confirmation::Ack(None) => Ok(ActionResult::new("confirmed")),
            Confirmation::Ack(Some(returned)) => Err(ObserverError::target_missing(
                "OBS-AMQP-UNROUTABLE",
                format!(
                    "no queue on {at} is bound to exchange `{}` for routing key `{routing_key}` ({} {}); bind one or fix `routing_key`",
                    self.exchange, returned.reply_code, returned.reply_text
                ),
            )),
            Confirmation::Nack(_) => Err(ObserverError::transient(
                "OBS-AMQP-NACK",
                format!(
                    "RabbitMQ at {at} refused the message (nack) for exchange `{}`",
                    self.exchange
                ),
            )),
            Confirmation::NotRequested => Err(ObserverError::transient(
                "OBS-AMQP-PUBLISH",
                format!("RabbitMQ at {at}: the channel is not in confirm mode"),
            )),
        }
    }
}
