//! The `nats` and `rabbitmq` actions through the executor, against the local NATS (JetStream,
//! 127.0.0.1:4222, or `NATS_URL`) and RabbitMQ (127.0.0.1:5672 guest/guest, or `AMQP_URL`):
//! what a message carries, duplicates dropped by the stream, and failures that reach the DLQ
//! without tripping the endpoint's circuit breaker.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_nats::jetstream;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use observers_core::breaker::BreakerState;
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter};
use observers_core::telemetry::ActionOutcome;

use crate::executor::{harness, order};

const FAST_RETRY: &str = "[retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\njitter = false\n";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (or concurrent run) uses.
fn unique(tag: &str) -> String {
    format!(
        "obs-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A JetStream stream capturing `{prefix}.>`.
async fn stream(prefix: &str) -> jetstream::stream::Stream {
    let client = async_nats::connect(nats_url())
        .await
        .expect("NATS with JetStream must be reachable (NATS_URL)");
    jetstream::new(client)
        .create_stream(jetstream::stream::Config {
            name: prefix.replace('-', "_").to_uppercase(),
            subjects: vec![format!("{prefix}.>")],
            max_age: std::time::Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap()
}

fn nats_action(subject: &str, extra: &str) -> String {
    format!(
        "{FAST_RETRY}[[observers]]\nname = \"n\"\nentity = \"Order\"\n[[observers.actions]]\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"{subject}\"\n{extra}\n",
        nats_url()
    )
}

#[tokio::test]
async fn nats_publishes_to_jetstream_once_per_idempotency_key() {
    let prefix = unique("nats");
    let mut stream = stream(&prefix).await;
    let h = harness(&nats_action(
        &format!("{prefix}.{{{{ event_type }}}}.{{{{ entity_id }}}}"),
        "headers = { \"X-Status\" = \"{{ new.status }}\" }",
    ));
    let event = order(42, 150.0, "paid");
    let first = h.executor.process(&event).await.unwrap();
    assert_eq!(first.succeeded(), 1, "{first:?}");
    // The same action for the same event again (a redelivery after a crash): the stream
    // drops it by its Nats-Msg-Id.
    let again = h.executor.process(&event).await.unwrap();
    assert_eq!(again.succeeded(), 1, "{again:?}");
    let detail = again.actions[0].detail.as_deref().unwrap_or_default();
    assert!(detail.starts_with("duplicate"), "{detail}");

    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let msg = stream.get_raw_message(1).await.unwrap();
    assert_eq!(msg.subject.as_str(), format!("{prefix}.insert.42"));
    let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("Nats-Msg-Id").as_deref(), Some("42:n:0"));
    assert_eq!(header("X-Status").as_deref(), Some("paid"));
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["id"], 42);
    assert_eq!(body["observer"], "n");
    assert_eq!(body["event_type"], "insert");
    assert_eq!(body["data"]["status"], "paid");
}

#[tokio::test]
async fn a_subject_without_a_stream_is_retried_then_dead_lettered_and_spares_the_breaker() {
    let h = harness(&nats_action(&format!("{}.x", unique("nostream")), ""));
    for id in 1..=6 {
        let summary = h.executor.process(&order(id, 1.0, "new")).await.unwrap();
        assert_eq!(summary.actions[0].outcome, ActionOutcome::DeadLettered);
        assert_eq!(summary.actions[0].attempts, 3, "retried like any failure");
    }
    let items = h.dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(items.len(), 6);
    assert_eq!(items[0].entry.error_code, "OBS-NATS-NO-STREAM");
    assert!(
        items[0].entry.error.contains("no JetStream stream"),
        "{}",
        items[0].entry.error
    );
    let breaker = h.executor.breakers().get("127.0.0.1:4222");
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "a missing stream is not the server's fault"
    );
}

#[tokio::test]
async fn an_unreachable_nats_server_is_dead_lettered() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text =
        nats_action("orders.x", "").replace(&nats_url(), &format!("nats://127.0.0.1:{port}"));
    let h = harness(&text);
    let summary = h.executor.process(&order(1, 1.0, "new")).await.unwrap();
    assert_eq!(summary.actions[0].outcome, ActionOutcome::DeadLettered);
    let items = h.dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(items[0].entry.error_code, "OBS-NATS-CONNECT");
}

/// A direct exchange with a durable queue bound to `{name}.bound`; the connection is returned
/// to be kept while the channel is used.
async fn exchange_and_queue(name: &str) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be reachable (AMQP_URL)");
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.into(),
            name.into(),
            format!("{name}.bound").into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (conn, channel)
}

fn rabbit_action(exchange: &str, routing_key: &str) -> String {
    format!(
        "[[observers.actions]]\ntype = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"{exchange}\"\nrouting_key = \"{routing_key}\"\nheaders = {{ \"x-status\" = \"{{{{ new.status }}}}\" }}\n",
        amqp_url()
    )
}

#[tokio::test]
async fn rabbitmq_publishes_persistent_confirmed_messages_with_the_key_as_message_id() {
    let name = unique("amqp");
    let (_conn, channel) = exchange_and_queue(&name).await;
    let h = harness(&format!(
        "{FAST_RETRY}[[observers]]\nname = \"r\"\nentity = \"Order\"\n{}",
        rabbit_action(&name, &format!("{name}.bound"))
    ));
    let summary = h.executor.process(&order(7, 99.5, "paid")).await.unwrap();
    assert_eq!(summary.succeeded(), 1, "{summary:?}");
    let got = channel
        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message in the bound queue");
    let props = &got.delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        props
            .message_id()
            .as_ref()
            .map(lapin::types::ShortString::as_str),
        Some("7:r:0")
    );
    assert_eq!(
        props
            .content_type()
            .as_ref()
            .map(lapin::types::ShortString::as_str),
        Some("application/json")
    );
    let headers = props.headers().as_ref().unwrap();
    assert_eq!(
        headers.inner().get("x-status"),
        Some(&AMQPValue::LongString("paid".into()))
    );
    let body: serde_json::Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(body["data"]["total"], 99.5);
}

#[tokio::test]
async fn unroutable_messages_and_missing_exchanges_reach_the_dlq_and_others_still_publish() {
    let name = unique("amqpfail");
    let (_conn, channel) = exchange_and_queue(&name).await;
    let missing = unique("nosuch");
    let h = harness(&format!(
        "{FAST_RETRY}[[observers]]\nname = \"r\"\nentity = \"Order\"\n{}{}{}",
        rabbit_action(&name, "nobody.listens"),
        rabbit_action(&missing, "x"),
        rabbit_action(&name, &format!("{name}.bound")),
    ));
    for id in 1..=3 {
        let s = h.executor.process(&order(id, 1.0, "new")).await.unwrap();
        let outcomes: Vec<_> = s.actions.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [
                ActionOutcome::DeadLettered,
                ActionOutcome::DeadLettered,
                ActionOutcome::Success
            ],
            "{s:?}"
        );
    }
    let items = h.dlq.list(&DlqFilter::default()).await.unwrap();
    let mut codes: Vec<&str> = items.iter().map(|i| i.entry.error_code.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes, ["OBS-AMQP-NO-EXCHANGE", "OBS-AMQP-UNROUTABLE"]);
    let mut delivered = 0;
    while let Some(m) = channel
        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        assert!(m.delivery.properties.message_id().is_some());
        delivered += 1;
    }
    assert_eq!(delivered, 3, "the routable action published every event");
    assert_eq!(
        h.executor.breakers().get("127.0.0.1:5672").state(),
        BreakerState::Closed
    );
}
