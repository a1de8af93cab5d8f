//! Integration tests of observers-core against real local servers (HTTP, SMTP, NATS, RabbitMQ).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod brokers;
mod email;
mod executor;
mod listener;
mod outbound;
mod secrets;
mod support;
mod templates;
