//! What the broker actions (`nats`, `rabbitmq`) share: their connections, one per URL and
//! credentials for every action a factory builds, made on first use and made again once
//! broken; their templated headers; and the endpoint their circuit breaker is keyed by.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::nats::NatsLink;
use super::rabbitmq::AmqpLink;
use super::{render, template};
use crate::config::Secret;
use crate::error::{ObserverError, Result};
use crate::stores::lock;
use crate::template::{Template, TemplateContext};

/// The broker connections of one [`ActionFactory`](super::ActionFactory), by URL and
/// credentials. A config reload builds a new factory, so new connections; the old ones close
/// when the last action holding them is dropped.
#[derive(Default)]
pub(crate) struct BrokerLinks {
    pub nats: Links<NatsLink>,
    pub amqp: Links<AmqpLink>,
}

impl std::fmt::Debug for BrokerLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLinks")
            .field("nats", &lock(&self.nats.map).len())
            .field("amqp", &lock(&self.amqp.map).len())
            .finish()
    }
}

/// Connections of one kind, by key.
pub(crate) struct Links<T> {
    map: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> Default for Links<T> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Links<T> {
    /// The link for `key`, made by `make` the first time.
    pub fn get(&self, key: String, make: impl FnOnce() -> T) -> Arc<T> {
        lock(&self.map)
            .entry(key)
            .or_insert_with(|| Arc::new(make()))
            .clone()
    }
}

/// A connection (or channel) made on first use and made again once it reports itself broken.
/// Concurrent callers wait for one connect instead of each making their own; a failed connect
/// leaves the slot empty for the next caller.
pub(crate) struct Slot<T> {
    cell: Mutex<Arc<OnceCell<T>>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            cell: Mutex::new(Arc::new(OnceCell::new())),
        }
    }
}

impl<T: Clone> Slot<T> {
    /// The current value when `healthy` says so, else a new one from `connect`.
    pub async fn get<F, Fut>(&self, healthy: impl Fn(&T) -> bool, connect: F) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let current = lock(&self.cell).clone();
        let cell = match current.get() {
            Some(value) if healthy(value) => return Ok(value.clone()),
            Some(_) => {
                let mut slot = lock(&self.cell);
                // Another caller may have replaced it already: then use theirs.
                if Arc::ptr_eq(&slot, &current) {
                    *slot = Arc::new(OnceCell::new());
                }
                slot.clone()
            }
            None => current,
        };
        cell.get_or_try_init(connect).await.cloned()
    }
}

/// Configured headers: names as given, values templated (text, so a row value lands as is).
pub(crate) struct HeaderTemplates(Vec<(String, Template)>);

impl HeaderTemplates {
    pub fn new(headers: &BTreeMap<String, Secret>) -> Result<Self> {
        headers
            .iter()
            .map(|(name, value)| Ok((name.clone(), template("header", value.expose())?)))
            .collect::<Result<_>>()
            .map(Self)
    }

    /// Every header rendered; a value with a line break is refused (it would end the header).
    pub fn render(&self, ctx: &TemplateContext<'_>) -> Result<Vec<(&str, String)>> {
        self.0
            .iter()
            .map(|(name, value)| {
                let value = render(value, ctx)?;
                if value.contains(['\r', '\n']) {
                    return Err(ObserverError::permanent(
                        "OBS-BROKER-HEADER",
                        format!("header `{name}`: the rendered value holds a line break"),
                    ));
                }
                Ok((name.as_str(), value))
            })
            .collect()
    }
}

/// `host:port` of a broker URL, the key of its circuit breaker.
pub(crate) fn endpoint(url: &str, default_port: u16) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| format!("{h}:{}", u.port().unwrap_or(default_port)))
        })
        .unwrap_or_else(|| "broker".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_connects_once_and_again_when_broken() {
        let slot: Slot<Arc<std::sync::atomic::AtomicBool>> = Slot::default();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let healthy =
            |v: &Arc<std::sync::atomic::AtomicBool>| v.load(std::sync::atomic::Ordering::SeqCst);
        let connect = || async {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Arc::new(std::sync::atomic::AtomicBool::new(true)))
        };
        let first = slot.get(healthy, connect).await.unwrap();
        let again = slot.get(healthy, connect).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
        first.store(false, std::sync::atomic::Ordering::SeqCst);
        let fresh = slot.get(healthy, connect).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &fresh), "a broken value is replaced");
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 2);

        let failing: Slot<u8> = Slot::default();
        let err = failing
            .get(
                |_| true,
                || async { Err(ObserverError::transient("X", "down")) },
            )
            .await;
        assert!(err.is_err());
        let ok = failing.get(|_| true, || async { Ok(7) }).await.unwrap();
        assert_eq!(ok, 7, "a failed connect leaves the slot empty");
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("nats://127.0.0.1", 4222), "127.0.0.1:4222");
        assert_eq!(endpoint("amqp://u:p@mq:5673/%2f", 5672), "mq:5673");
    }
}
