//! `cargo xtask bench --brokers`: publish rate of the `nats` and `rabbitmq` actions through the
//! executor (template, body, breaker, retry wrapper, the shared connection), each next to a
//! plain client loop of the same crate in the same run: the same broker, payload size,
//! message id and number of publishes in flight, each waiting for its JetStream ack or
//! publisher confirm. Rounds alternate (plain, ours, plain, ours) and the better of each side
//! is kept. Brokers: `NATS_URL` (127.0.0.1:4222) and `AMQP_URL` (127.0.0.1:5672 guest/guest).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use observers_core::actions::{ActionFactory, OutboundPolicy, webhook_body};
use observers_core::{EntityEvent, EventKind, ObserverExecutor, ObserverSet, config};

/// Publishes waiting for their ack at once, on both sides.
const IN_FLIGHT: usize = 64;

/// Publishes per round; `BROKER_BENCH_MESSAGES` overrides.
fn messages() -> i64 {
    std::env::var("BROKER_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn event(id: i64) -> EntityEvent {
    EntityEvent::new(
        id,
        "Order",
        id.to_string(),
        EventKind::Insert,
        None,
        Some(serde_json::json!({
            "id": id, "total": 150.25, "status": "paid", "customer": "c-1042",
            "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
        })),
    )
}

fn executor(action: &str) -> Arc<ObserverExecutor> {
    let text = format!(
        "[dedup]\nenabled = false\n[[observers]]\nname = \"bench\"\nentity = \"Order\"\n[[observers.actions]]\n{action}\n"
    );
    let config = config::load_str("bench.toml", &text, &|_| None).unwrap();
    let factory = ActionFactory::new(OutboundPolicy::default()).unwrap();
    let set = ObserverSet::from_config(&config, &factory).unwrap();
    Arc::new(
        ObserverExecutor::builder(set)
            .max_concurrent_actions(config.executor.max_concurrent_actions)
            .build(),
    )
}

/// Publishes/s of `ids` events through the executor; every action must succeed.
async fn ours(executor: &Arc<ObserverExecutor>, ids: std::ops::Range<i64>) -> f64 {
    let n = ids.end - ids.start;
    let started = Instant::now();
    futures::stream::iter(ids)
        .map(|id| {
            let executor = executor.clone();
            async move {
                let s = executor.process(&event(id)).await.unwrap();
                assert_eq!(s.succeeded(), 1, "{s:?}");
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    rate(n, started)
}

/// Alternating rounds of the plain loop and the action, on fresh ids; the best of each.
async fn compare<F, Fut>(plain: F, executor: &Arc<ObserverExecutor>) -> (f64, f64)
where
    F: Fn(std::ops::Range<i64>) -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let n = messages();
    let (mut best_plain, mut best_ours) = (0f64, 0f64);
    for round in 0..2 {
        let base = round * n * 2;
        best_plain = best_plain.max(plain(base..base + n).await);
        best_ours = best_ours.max(ours(executor, base + n..base + 2 * n).await);
    }
    (best_plain, best_ours)
}

#[allow(clippy::cast_precision_loss)]
fn rate(n: i64, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

fn print(broker: &str, plain: f64, through: f64) {
    println!(
        "{broker}: plain client {plain:.0} msg/s, through the action {through:.0} msg/s, ratio {:.2}",
        through / plain
    );
}

async fn nats() {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client);
    let name = format!("OBS_BENCH_{}", std::process::id());
    let subject = format!("obs-bench-{}", std::process::id());
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{subject}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let payload = serde_json::to_vec(&webhook_body(&event(1), "bench")).unwrap();
    let plain = |ids: std::ops::Range<i64>| {
        let js = js.clone();
        let payload = payload.clone();
        let subject = subject.clone();
        async move {
            let n = ids.end - ids.start;
            let started = Instant::now();
            futures::stream::iter(ids)
                .map(|id| {
                    let message = PublishMessage::build()
                        .payload(payload.clone().into())
                        .message_id(format!("{id}:plain:0"));
                    let js = js.clone();
                    let subject = format!("{subject}.plain");
                    async move {
                        js.send_publish(subject, message)
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<()>>()
                .await;
            rate(n, started)
        }
    };
    let executor = executor(&format!(
        "type = \"nats\"\nurl = \"{}\"\nsubject = \"{subject}.{{{{ event_type }}}}\"",
        nats_url()
    ));
    let (best_plain, best_ours) = compare(plain, &executor).await;
    print("NATS JetStream (async-nats)", best_plain, best_ours);
    js.delete_stream(&name).await.unwrap();
}

/// A direct exchange and a durable queue bound to it, both named `name`.
async fn declare(channel: &lapin::Channel, name: &str) {
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
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.into(),
            name.into(),
            name.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn rabbitmq() {
    let name = format!("obs-bench-{}", std::process::id());
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    declare(&channel, &name).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let payload = serde_json::to_vec(&webhook_body(&event(1), "bench")).unwrap();
    let plain = |ids: std::ops::Range<i64>| {
        let channel = channel.clone();
        let payload = payload.clone();
        let name = name.clone();
        async move {
            let n = ids.end - ids.start;
            let started = Instant::now();
            futures::stream::iter(ids)
                .map(|id| {
                    let channel = channel.clone();
                    let payload = payload.clone();
                    let name = name.clone();
                    async move {
                        let properties = BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_content_type(ShortString::from("application/json"))
                            .with_message_id(ShortString::from(format!("{id}:plain:0")));
                        let confirm = channel
                            .basic_publish(
                                name.as_str().into(),
                                name.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    immediate: false,
                                },
                                &payload,
                                properties,
                            )
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                        assert!(confirm.is_ack() && confirm.take_message().is_none());
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<()>>()
                .await;
            rate(n, started)
        }
    };
    let executor = executor(&format!(
        "type = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"{name}\"\nrouting_key = \"{name}\"",
        amqp_url()
    ));
    let (best_plain, best_ours) = compare(plain, &executor).await;
    print("RabbitMQ (lapin)", best_plain, best_ours);
    channel
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    println!(
        "{} publishes per round, {IN_FLIGHT} in flight, each acknowledged by the broker",
        messages()
    );
    nats().await;
    rabbitmq().await;
}
