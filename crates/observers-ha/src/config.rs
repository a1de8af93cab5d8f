//! `MultiListenerConfig`: the seeds' settings for a group of listeners, with their defaults and
//! validation, built from the `[ha]` and `[source]` sections.

use std::time::Duration;

use observers_core::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::HaError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiListenerConfig {
    /// Multi-listener coordination on (`[ha] enabled`).
    pub enabled: bool,
    /// The group instances of one config form (`[ha] group`).
    pub group: String,
    /// This instance (`[ha] instance_id`, default `host:pid`).
    pub listener_id: String,
    /// The consumer whose cursor(s) the group advances (`[source] listener_id`).
    pub consumer: String,
    /// Lease time to live (`[ha] lease_ttl`): a dead holder's work moves after at most this
    /// long plus one renew interval.
    pub lease_duration: Duration,
    /// How often leases are renewed and heartbeats written (`[ha] renew_interval`).
    pub health_check_interval: Duration,
    /// Heartbeat age after which the leader records an instance as failed.
    pub failover_threshold: Duration,
    /// Largest group size accepted (`[ha] max_instances`).
    pub max_listeners: usize,
    /// Change-log partitions (`[source] partitions`).
    pub partitions: u32,
    /// Consecutive recoveries before an instance gives up.
    pub max_recovery_attempts: u32,
}

impl Default for MultiListenerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            group: "default".into(),
            listener_id: default_instance_id(),
            consumer: "default".into(),
            lease_duration: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(5),
            failover_threshold: Duration::from_secs(60),
            max_listeners: 10,
            partitions: 1,
            max_recovery_attempts: 10,
        }
    }
}

impl MultiListenerConfig {
    /// From a loaded config; `instance_id` falls back to `host:pid`.
    pub fn from_config(config: &Config) -> Result<Self, HaError> {
        let ha = &config.ha;
        let c = Self {
            enabled: ha.enabled,
            group: ha.group.clone(),
            listener_id: ha.instance_id.clone().unwrap_or_else(default_instance_id),
            consumer: config.source.listener_id.clone(),
            lease_duration: ha.lease_ttl,
            health_check_interval: ha.renew_interval,
            // Leases move the work; the failure record follows once the lease has lapsed too.
            failover_threshold: ha.lease_ttl + ha.renew_interval,
            max_listeners: ha.max_instances,
            partitions: config.source.partitions,
            ..Self::default()
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), HaError> {
        let bad = |m: String| Err(HaError::Config(m));
        if self.group.trim().is_empty() {
            return bad("[ha] group must not be empty".into());
        }
        if self.listener_id.trim().is_empty() {
            return bad("[ha] instance_id must not be empty".into());
        }
        if self.lease_duration < Duration::from_millis(100) {
            return bad(format!(
                "[ha] lease_ttl must be at least 100ms, got {:?}",
                self.lease_duration
            ));
        }
        if self.health_check_interval.is_zero()
            || self.health_check_interval * 2 > self.lease_duration
        {
            return bad(format!(
                "[ha] renew_interval must be greater than zero and at most half of lease_ttl \
                 ({:?}), got {:?}",
                self.lease_duration, self.health_check_interval
            ));
        }
        if self.failover_threshold < self.lease_duration {
            return bad(format!(
                "failover threshold {:?} must not be shorter than lease_ttl {:?}",
                self.failover_threshold, self.lease_duration
            ));
        }
        if self.max_listeners == 0 {
            return bad("[ha] max_instances must be at least 1".into());
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return bad(format!(
                "[source] partitions must be between 1 and 1024, got {}",
                self.partitions
            ));
        }
        Ok(())
    }

    /// The lease of partition `p`.
    pub fn partition_lease(&self, p: u32) -> String {
        format!("{}{p}", self.partition_lease_prefix())
    }

    /// Every partition lease of this group and consumer starts with this.
    pub fn partition_lease_prefix(&self) -> String {
        format!("observers/{}/{}/partition/", self.group, self.consumer)
    }

    /// The group's leader lease.
    pub fn leader_lease(&self) -> String {
        format!("observers/{}/{}/leader", self.group, self.consumer)
    }

    /// The checkpoint (cursor) name of partition `p`: the consumer id itself with a single
    /// partition, `consumer#p{p}` otherwise.
    pub fn partition_cursor(&self, p: u32) -> String {
        partition_cursor(&self.consumer, self.partitions, p)
    }
}

/// The checkpoint name of partition `p` of `partitions` for `consumer`.
pub fn partition_cursor(consumer: &str, partitions: u32, p: u32) -> String {
    if partitions <= 1 {
        consumer.to_owned()
    } else {
        format!("{consumer}#p{p}")
    }
}

/// `host:pid`.
pub fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_seeds() {
        let c = MultiListenerConfig::default();
        assert!(!c.enabled);
        assert_eq!(c.lease_duration, Duration::from_secs(30));
        assert_eq!(c.health_check_interval, Duration::from_secs(5));
        assert_eq!(c.failover_threshold, Duration::from_secs(60));
        assert_eq!(c.max_listeners, 10);
        assert!(c.listener_id.contains(':'), "{}", c.listener_id);
        c.validate().unwrap();
    }

    #[test]
    fn validation_names_the_key() {
        type Breaker = fn(&mut MultiListenerConfig);
        let cases: [(Breaker, &str); 6] = [
            (|c| c.group = " ".into(), "[ha] group"),
            (|c| c.listener_id = String::new(), "instance_id"),
            (
                |c| c.lease_duration = Duration::from_millis(10),
                "lease_ttl",
            ),
            (
                |c| c.health_check_interval = Duration::from_secs(20),
                "renew_interval",
            ),
            (|c| c.max_listeners = 0, "max_instances"),
            (|c| c.partitions = 0, "partitions"),
        ];
        for (break_it, key) in cases {
            let mut c = MultiListenerConfig::default();
            break_it(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn from_config_maps_the_ha_section() {
        let config: Config = observers_core::config::load_str(
            "test.toml",
            "[source]\nlistener_id = \"orders\"\npartitions = 4\n\
             [ha]\nenabled = true\ngroup = \"g\"\ninstance_id = \"a\"\nlease_ttl = \"2s\"\n\
             renew_interval = \"500ms\"\n",
            &|_| None,
        )
        .unwrap();
        let c = MultiListenerConfig::from_config(&config).unwrap();
        assert_eq!(
            (c.enabled, c.group.as_str(), c.listener_id.as_str()),
            (true, "g", "a")
        );
        assert_eq!(c.lease_duration, Duration::from_secs(2));
        assert_eq!(c.partitions, 4);
        assert_eq!(c.partition_cursor(3), "orders#p3");
        assert_eq!(partition_cursor("orders", 1, 0), "orders");
        assert_eq!(c.partition_lease(2), "observers/g/orders/partition/2");
    }
}
