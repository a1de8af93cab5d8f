//! The shape of the config file (docs/configuration.md). Every struct rejects unknown keys.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;

use crate::breaker::BreakerConfig;
use crate::condition::Condition;
use crate::event::EventKind;

/// humantime durations (`"250ms"`, `"5s"`, `"1h 30m"`).
pub mod duration {
    use super::{Deserialize, Deserializer, Duration};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{s}`: {e} (examples: \"250ms\", \"5s\", \"2m\")"
            ))
        })
    }

    pub fn serialize<S: serde::Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use super::{Deserializer, Duration};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }

        pub fn serialize<S: serde::Serializer>(
            v: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
    }

    /// `Option<Duration>` where `"off"` is `None`.
    pub mod or_off {
        use super::{Deserialize, Deserializer, Duration};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = String::deserialize(d)?;
            if s == "off" {
                return Ok(None);
            }
            humantime::parse_duration(&s).map(Some).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration `{s}`: {e} (a duration such as \"7d\" or \"12h\", or \"off\")"
                ))
            })
        }

        pub fn serialize<S: serde::Serializer>(
            v: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_str("off"),
            }
        }
    }
}

/// A value that must never be printed: `Debug` and `Serialize` redact it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default)]
    pub dedup: DedupConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub ha: HaConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// `[outbound]`: which addresses actions may connect to.
    #[serde(default)]
    pub outbound: crate::actions::OutboundPolicy,
    #[serde(default)]
    pub observers: Vec<ObserverConfig>,
}

/// `[source]`: where changes come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// Falls back to `DATABASE_URL` when unset.
    pub database_url: Option<Secret>,
    /// Names this consumer's cursor; two configs with one listener_id share progress.
    pub listener_id: String,
    pub batch_size: usize,
    /// Bytes of row data one batch may hold (at least one row is always read, however big).
    pub max_batch_bytes: usize,
    /// The longest wait between polls of the change log when no change arrives (polling is
    /// tight while changes flow).
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    pub partitions: u32,
    /// Where changes are captured: `trigger` (a row trigger writes the change log in the
    /// writer's transaction) or `wal` (a relay copies a logical-replication slot's stream).
    pub kind: SourceKind,
    /// `kind = "wal"`: the logical replication slot the relay streams.
    pub slot: String,
    /// `kind = "wal"`: the publication `capture enable` adds tables to.
    pub publication: String,
    /// `kind = "wal"`: how the stream's changes reach the observers: `change_log` (a relay
    /// copies them into the change log, from where they are delivered like trigger-captured
    /// ones) or `direct` (delivered from the stream, with nothing written per change).
    pub wal_delivery: WalDelivery,
}

/// `[source] wal_delivery`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalDelivery {
    #[default]
    ChangeLog,
    Direct,
}

impl WalDelivery {
    pub fn as_str(self) -> &'static str {
        match self {
            WalDelivery::ChangeLog => "change_log",
            WalDelivery::Direct => "direct",
        }
    }
}

/// `[source] kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Trigger,
    Wal,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Trigger => "trigger",
            SourceKind::Wal => "wal",
        }
    }
}

/// Checks a replication slot or publication name (`what` names the key): PostgreSQL's slot
/// names are lower-case letters, digits and underscores, at most 63 bytes; publications follow
/// the same rule here.
pub fn validate_replication_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{what} must be 1 to 63 characters, got {name:?}"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "{what} {name:?} may hold only lower-case letters, digits and underscores"
        ));
    }
    Ok(())
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            listener_id: "default".into(),
            batch_size: 1000,
            max_batch_bytes: crate::listener::DEFAULT_MAX_BATCH_BYTES,
            poll_interval: Duration::from_millis(250),
            partitions: 1,
            kind: SourceKind::Trigger,
            slot: "observers".into(),
            publication: "observers".into(),
            wal_delivery: WalDelivery::ChangeLog,
        }
    }
}

impl SourceConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err(format!(
                "batch_size must be between 1 and 100000, got {}",
                self.batch_size
            ));
        }
        if self.max_batch_bytes < 1024 {
            return Err(format!(
                "max_batch_bytes must be at least 1024, got {}",
                self.max_batch_bytes
            ));
        }
        if self.listener_id.trim().is_empty() {
            return Err("listener_id must not be empty".into());
        }
        if self.partitions == 0 {
            return Err("partitions must be at least 1".into());
        }
        if self.poll_interval.is_zero() {
            return Err("poll_interval must be greater than zero".into());
        }
        validate_replication_name("slot", &self.slot)?;
        validate_replication_name("publication", &self.publication)?;
        if self.wal_delivery == WalDelivery::Direct && self.kind != SourceKind::Wal {
            return Err(format!(
                "wal_delivery = \"direct\" delivers from a replication slot: it needs \
                 kind = \"wal\" (kind is \"{}\")",
                self.kind.as_str()
            ));
        }
        Ok(())
    }
}

/// `[executor]`: concurrency and timeouts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Distinct entities processed at once within a batch.
    pub max_in_flight: usize,
    /// Actions running at once across all events.
    pub max_concurrent_actions: usize,
    /// Default timeout of one action attempt.
    #[serde(with = "duration")]
    pub action_timeout: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_concurrent_actions: 128,
            action_timeout: Duration::from_secs(30),
        }
    }
}

impl ExecutorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        if self.max_concurrent_actions == 0 {
            return Err("max_concurrent_actions must be at least 1".into());
        }
        if self.action_timeout.is_zero() {
            return Err("action_timeout must be greater than zero".into());
        }
        Ok(())
    }
}

/// `[retry]`: inline retries with exponential backoff and full jitter.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Full jitter: each delay is uniform in [0, computed].
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.multiplier < 1.0 || !self.multiplier.is_finite() {
            return Err(format!(
                "multiplier must be >= 1.0, got {}",
                self.multiplier
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err("max_backoff must not be below initial_backoff".into());
        }
        Ok(())
    }
}

/// Which store backs deduplication.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Memory,
    Redis,
    Postgres,
}

/// `[dedup]`: drop events already processed within a window.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    pub enabled: bool,
    pub backend: StoreBackend,
    #[serde(with = "duration")]
    pub window: Duration,
    /// Most keys the in-memory store keeps.
    pub max_entries: usize,
    /// `event_id` (default): the same change once. `time_bucket`: one event per entity and kind
    /// per `bucket` of event time (the seeds' strategy; drops later changes in the bucket).
    pub key: DedupKeyKind,
    #[serde(with = "duration")]
    pub bucket: Duration,
}

/// `[dedup] key`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DedupKeyKind {
    #[default]
    EventId,
    TimeBucket,
}

impl DedupConfig {
    /// The executor's key strategy.
    pub fn key_strategy(&self) -> crate::executor::DedupKey {
        match self.key {
            DedupKeyKind::EventId => crate::executor::DedupKey::EventId,
            DedupKeyKind::TimeBucket => crate::executor::DedupKey::TimeBucket(self.bucket),
        }
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: StoreBackend::Memory,
            window: Duration::from_secs(300),
            max_entries: 100_000,
            key: DedupKeyKind::EventId,
            bucket: Duration::from_secs(60),
        }
    }
}

impl DedupConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.window.is_zero() {
            return Err("window must be greater than zero".into());
        }
        if self.bucket.is_zero() {
            return Err("bucket must be greater than zero".into());
        }
        if self.max_entries == 0 {
            return Err("max_entries must be at least 1".into());
        }
        Ok(())
    }
}

/// `[cache]`: action result caching.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    pub backend: StoreBackend,
    /// TTL of a cached action result whose type has no entry in `ttl`.
    #[serde(with = "duration")]
    pub default_ttl: Duration,
    pub max_entries: usize,
    /// Per action type TTL, e.g. `ttl = { webhook = "30s", email = "1m" }`. Built in (seed 003):
    /// webhook 30s, slack 30s, email 60s.
    pub ttl: BTreeMap<String, String>,
    /// With `backend = "redis"`: how a local in-memory layer is used in front of Redis.
    pub strategy: crate::stores::hybrid::HybridStrategy,
    /// Longest a local copy is kept (bounds staleness across instances).
    #[serde(with = "duration")]
    pub local_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            backend: StoreBackend::Memory,
            default_ttl: Duration::from_secs(60),
            max_entries: 10_000,
            ttl: BTreeMap::new(),
            strategy: crate::stores::hybrid::HybridStrategy::CacheAside,
            local_ttl: Duration::from_secs(5),
        }
    }
}

impl CacheConfig {
    /// Built-in TTLs per action type (seed 003), overridden by `ttl`.
    pub const BUILT_IN_TTLS: [(&'static str, Duration); 3] = [
        ("webhook", Duration::from_secs(30)),
        ("slack", Duration::from_secs(30)),
        ("email", Duration::from_secs(60)),
    ];

    /// Every action type's TTL: the built-ins, then `ttl` over them (checked by `validate`).
    pub fn ttls(&self) -> BTreeMap<String, Duration> {
        let mut out: BTreeMap<String, Duration> = Self::BUILT_IN_TTLS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        for (k, v) in &self.ttl {
            if let Ok(d) = humantime::parse_duration(v) {
                out.insert(k.clone(), d);
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.default_ttl.is_zero() {
            return Err("default_ttl must be greater than zero".into());
        }
        if self.max_entries == 0 {
            return Err("max_entries must be at least 1".into());
        }
        if self.local_ttl.is_zero() {
            return Err("local_ttl must be greater than zero".into());
        }
        for (kind, ttl) in &self.ttl {
            if !ActionConfig::TYPES.contains(&kind.as_str()) {
                return Err(format!(
                    "ttl.{kind}: unknown action type; expected one of {}",
                    ActionConfig::TYPES.join(", ")
                ));
            }
            let d = humantime::parse_duration(ttl)
                .map_err(|e| format!("ttl.{kind}: invalid duration `{ttl}`: {e}"))?;
            if d.is_zero() {
                return Err(format!("ttl.{kind} must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// `[redis] fallback`: what happens when Redis fails. `true` is `"circuit_breaker"`, `false` is
/// `"off"` (Redis errors then reach the caller: dedup fails open, the cache is skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisFallback {
    Off,
    Immediate,
    AfterRetries,
    #[default]
    CircuitBreaker,
    HealthBased,
}

impl<'de> Deserialize<'de> for RedisFallback {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Flag(true) => Ok(Self::CircuitBreaker),
            Raw::Flag(false) => Ok(Self::Off),
            Raw::Name(name) => match name.as_str() {
                "off" | "none" => Ok(Self::Off),
                "immediate" => Ok(Self::Immediate),
                "after_retries" => Ok(Self::AfterRetries),
                "circuit_breaker" => Ok(Self::CircuitBreaker),
                "health_based" => Ok(Self::HealthBased),
                other => Err(serde::de::Error::custom(format!(
                    "unknown fallback `{other}`; expected one of off, immediate, after_retries, circuit_breaker, health_based (or true / false)"
                ))),
            },
        }
    }
}

/// `[redis]`: connection for the Redis-backed stores, and how to survive Redis going down.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; falls back to `REDIS_URL` when unset.
    pub url: Option<Secret>,
    /// Connections: 1 is one multiplexed connection shared by every task (see docs/redis.md).
    pub pool: usize,
    /// Prefix of every key this process writes.
    pub key_prefix: String,
    /// Fall back to the in-memory store while Redis is unreachable, and how to decide so.
    pub fallback: RedisFallback,
    /// `fallback = "after_retries"`: extra attempts of a failing operation first.
    pub retries: u32,
    /// A Redis operation slower than this fails (and the fallback serves it).
    #[serde(with = "duration")]
    pub op_timeout: Duration,
    #[serde(with = "duration")]
    pub health_interval: Duration,
    #[serde(with = "duration")]
    pub health_timeout: Duration,
    /// Consecutive good probes before an unhealthy Redis is used again.
    pub healthy_threshold: u32,
    /// Consecutive failed probes before Redis is declared unhealthy.
    pub unhealthy_threshold: u32,
    /// `fallback = "circuit_breaker"`: failure rate over `breaker_window` calls that opens it.
    pub breaker_failure_rate: f64,
    pub breaker_window: u32,
    pub breaker_minimum_calls: u32,
    /// First open period; it doubles on repeated trips up to `breaker_max_open`.
    #[serde(with = "duration")]
    pub breaker_open: Duration,
    #[serde(with = "duration")]
    pub breaker_max_open: Duration,
    /// Successful probes that close the breaker.
    pub breaker_success_threshold: u32,
    /// Most writes kept (per store) for replay to Redis once it returns.
    pub max_replay: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            pool: 1,
            key_prefix: "observers:".into(),
            fallback: RedisFallback::CircuitBreaker,
            retries: 2,
            op_timeout: Duration::from_millis(500),
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_millis(250),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            breaker_failure_rate: 0.5,
            breaker_window: 10,
            breaker_minimum_calls: 5,
            breaker_open: Duration::from_secs(1),
            breaker_max_open: Duration::from_secs(30),
            breaker_success_threshold: 2,
            max_replay: 100_000,
        }
    }
}

impl RedisConfig {
    /// The fallback mode of core's resilience layer, `None` when `fallback = "off"`.
    pub fn fallback_mode(&self) -> Option<crate::stores::fallback::FallbackMode> {
        use crate::stores::fallback::FallbackMode;
        match self.fallback {
            RedisFallback::Off => None,
            RedisFallback::Immediate => Some(FallbackMode::Immediate),
            RedisFallback::AfterRetries => Some(FallbackMode::AfterRetries(self.retries)),
            RedisFallback::CircuitBreaker => Some(FallbackMode::CircuitBreaker),
            RedisFallback::HealthBased => Some(FallbackMode::HealthBased),
        }
    }

    /// The resilience settings these keys describe (`mode` from [`Self::fallback_mode`]).
    pub fn resilience(&self) -> crate::stores::fallback::ResilienceConfig {
        use crate::stores::fallback::{FallbackMode, HealthConfig, ResilienceConfig};
        let defaults = ResilienceConfig::default();
        ResilienceConfig {
            mode: self.fallback_mode().unwrap_or(FallbackMode::CircuitBreaker),
            op_timeout: self.op_timeout,
            enforce_timeout: true,
            health: HealthConfig {
                interval: self.health_interval,
                timeout: self.health_timeout,
                healthy_threshold: self.healthy_threshold,
                unhealthy_threshold: self.unhealthy_threshold,
            },
            breaker: BreakerConfig {
                failure_rate_threshold: self.breaker_failure_rate,
                window_size: self.breaker_window,
                minimum_calls: self.breaker_minimum_calls,
                open_duration: self.breaker_open,
                max_open_duration: self.breaker_max_open,
                success_threshold: self.breaker_success_threshold,
                probe_timeout: self.op_timeout,
                max_half_open_duration: defaults
                    .breaker
                    .max_half_open_duration
                    .max(self.op_timeout),
                ..defaults.breaker
            },
            max_replay: self.max_replay,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.pool == 0 {
            return Err("pool must be at least 1".into());
        }
        for (name, d) in [
            ("op_timeout", self.op_timeout),
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.healthy_threshold == 0 || self.unhealthy_threshold == 0 {
            return Err("healthy_threshold and unhealthy_threshold must be at least 1".into());
        }
        if self.max_replay == 0 {
            return Err("max_replay must be at least 1".into());
        }
        if let Some(url) = &self.url {
            let scheme = url::Url::parse(url.expose())
                .map(|u| u.scheme().to_owned())
                .map_err(|e| format!("url: {e}"))?;
            if !matches!(scheme.as_str(), "redis" | "redis+unix" | "unix") {
                return Err(format!(
                    "url must be redis:// (or unix://), got {scheme}://"
                ));
            }
        }
        self.resilience()
            .breaker
            .validate()
            .map_err(|e| format!("breaker: {e}"))
    }
}

/// Where processed events are indexed for search.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SearchBackendKind {
    Postgres,
    Elasticsearch,
    #[default]
    None,
}

/// `[search]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    pub backend: SearchBackendKind,
    /// Elasticsearch base URL (`backend = "elasticsearch"`).
    pub url: Option<Secret>,
    /// Elasticsearch index name (default `observer-events`).
    pub index: Option<String>,
    /// Events buffered for indexing; beyond this they are dropped from the index (counted).
    pub buffer: usize,
    /// Events per bulk write.
    pub batch_size: usize,
    /// The longest an event waits before its batch is written.
    #[serde(with = "duration")]
    pub flush_interval: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            backend: SearchBackendKind::None,
            url: None,
            index: None,
            buffer: 10_000,
            batch_size: 500,
            flush_interval: Duration::from_millis(200),
        }
    }
}

/// `[queue]`: the job queue for `mode = "queued"` actions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Jobs run at once by `observers run` (0: none; run `observers worker` elsewhere).
    pub workers: usize,
    /// The queues the workers serve; empty (the default) means `default` plus every queue a
    /// queued action names (see [`Config::served_queues`]).
    pub queues: Vec<String>,
    /// Jobs taken per dequeue; a pool holds at most `workers + batch_size` jobs.
    pub batch_size: usize,
    /// Dequeues in flight per queue (1 or 2). With 2 the next batch is fetched while the
    /// previous one is still being taken, for throughput; batches may then start out of
    /// priority order with each other.
    pub fetchers: usize,
    /// Attempts a queued action gets, the first included.
    pub max_attempts: u32,
    /// Delay before the first retry; multiplied by `multiplier` per attempt, capped.
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Full jitter: each delay is uniform in [0, computed].
    pub jitter: bool,
    /// How often a worker refreshes the heartbeat of the jobs it holds.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// A processing job whose heartbeat is older than this is rescued (its worker died).
    #[serde(with = "duration")]
    pub stale_after: Duration,
    /// Fallback poll when no NOTIFY arrives.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            workers: 4,
            queues: Vec::new(),
            batch_size: 100,
            fetchers: 1,
            max_attempts: 8,
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10 * 3600),
            multiplier: 5.0,
            jitter: true,
            heartbeat_interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1".into());
        }
        if !(1..=2).contains(&self.fetchers) {
            return Err(format!("fetchers must be 1 or 2, got {}", self.fetchers));
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.multiplier < 1.0 || !self.multiplier.is_finite() {
            return Err(format!(
                "multiplier must be >= 1.0, got {}",
                self.multiplier
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err("max_backoff must not be below initial_backoff".into());
        }
        if self.heartbeat_interval.is_zero() || self.stale_after <= self.heartbeat_interval {
            return Err(
                "stale_after must be longer than heartbeat_interval (and both above zero)".into(),
            );
        }
        if self.poll_interval.is_zero() {
            return Err("poll_interval must be greater than zero".into());
        }
        for q in &self.queues {
            super::queues::check_queue_name(q).map_err(|e| format!("queues: {e}"))?;
        }
        Ok(())
    }
}

/// `[ha]`: several instances, one group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    pub enabled: bool,
    pub group: String,
    pub instance_id: Option<String>,
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    #[serde(with = "duration")]
    pub renew_interval: Duration,
    /// Largest group size accepted; more instances register but stay idle.
    pub max_instances: usize,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            group: "default".into(),
            instance_id: None,
            lease_ttl: Duration::from_secs(10),
            renew_interval: Duration::from_secs(3),
            max_instances: 10,
        }
    }
}

impl HaConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.group.trim().is_empty() {
            return Err("group must not be empty".into());
        }
        if self
            .instance_id
            .as_ref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err("instance_id must not be empty when set".into());
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(format!(
                "lease_ttl must be at least 100ms, got {:?}",
                self.lease_ttl
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval * 2 > self.lease_ttl {
            return Err(format!(
                "renew_interval must be greater than zero and at most half of lease_ttl ({:?}), got {:?}",
                self.lease_ttl, self.renew_interval
            ));
        }
        if self.max_instances == 0 {
            return Err("max_instances must be at least 1".into());
        }
        Ok(())
    }
}

/// `[retention]`: how long `observers run` keeps rows (docs/operations.md). Each age is a
/// duration or `"off"` (kept for ever).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Change-log rows older than this that every consumer has passed.
    #[serde(with = "duration::or_off")]
    pub change_log: Option<Duration>,
    /// Audit-trail events (`[search]`) whose event timestamp is older than this.
    #[serde(with = "duration::or_off")]
    pub events: Option<Duration>,
    /// Completed jobs finished longer ago than this.
    #[serde(with = "duration::or_off")]
    pub jobs_completed: Option<Duration>,
    /// Resolved DLQ items created longer ago than this.
    #[serde(with = "duration::or_off")]
    pub dlq_resolved: Option<Duration>,
    /// Time between retention passes.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Rows deleted per statement (each commits on its own).
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            change_log: Some(Duration::from_secs(7 * DAY)),
            events: Some(Duration::from_secs(30 * DAY)),
            jobs_completed: Some(Duration::from_secs(7 * DAY)),
            dlq_resolved: Some(Duration::from_secs(30 * DAY)),
            interval: Duration::from_secs(300),
            batch: 1000,
        }
    }
}

impl RetentionConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch == 0 {
            return Err("batch must be at least 1".into());
        }
        if self.interval.is_zero() {
            return Err("interval must be above zero (e.g. \"5m\")".into());
        }
        Ok(())
    }
}

/// `[metrics]`: Prometheus metrics and the ops HTTP server (docs/monitoring.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether `observers run` starts the ops server.
    pub enabled: bool,
    /// `host:port`. Unset: `127.0.0.1:9464`, or a free port on 127.0.0.1 when that one is
    /// taken (another instance on the host); an address set here must be bindable.
    pub listen: Option<String>,
    /// How often the gauges read from the database (cutoff lag, backlog, DLQ size) refresh.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
    /// `POST /ingest/debezium`.
    pub debezium: DebeziumConfig,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            refresh_interval: Duration::from_secs(5),
            debezium: DebeziumConfig::default(),
        }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(l) = &self.listen
            && l.parse::<std::net::SocketAddr>().is_err()
            && l.rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!(
                "listen must be host:port (e.g. \"127.0.0.1:9464\"), got `{l}`"
            ));
        }
        if self.refresh_interval.is_zero() {
            return Err("refresh_interval must be greater than zero".into());
        }
        if self.debezium.default_id_column.trim().is_empty() {
            return Err("debezium.default_id_column must not be empty".into());
        }
        Ok(())
    }
}

/// `[metrics.debezium]`: how Debezium change events map onto the change log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebeziumConfig {
    pub enabled: bool,
    /// `"schema.table"` (or `"table"`) to entity type; unmapped tables use the table name.
    pub entities: BTreeMap<String, String>,
    /// `"schema.table"` (or `"table"`) to the column(s) holding the entity id, comma-separated
    /// for composite keys (values joined with `:`).
    pub id_columns: BTreeMap<String, String>,
    /// The id column of tables not in `id_columns`.
    pub default_id_column: String,
    /// A column whose value becomes the event's tenant id.
    pub tenant_column: Option<String>,
}

impl Default for DebeziumConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            entities: BTreeMap::new(),
            id_columns: BTreeMap::new(),
            default_id_column: "id".into(),
            tenant_column: None,
        }
    }
}

/// One `[[observers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserverConfig {
    pub name: Spanned<String>,
    /// Entity type, e.g. `Order`; `"*"` matches every entity.
    pub entity: Spanned<String>,
    /// Event kinds; empty or absent means all.
    #[serde(default)]
    pub events: Vec<EventKind>,
    #[serde(default)]
    pub condition: Option<Spanned<String>>,
    /// Only events of these tenants; absent means all tenants.
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub actions: Vec<Spanned<ActionConfig>>,
    /// The compiled condition, filled during validation.
    #[serde(skip)]
    pub compiled: Option<Condition>,
}

impl ObserverConfig {
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    pub fn entity(&self) -> &str {
        self.entity.get_ref()
    }

    /// The kinds this observer reacts to (all when none are listed).
    pub fn kinds(&self) -> Vec<EventKind> {
        if self.events.is_empty() {
            EventKind::ALL.to_vec()
        } else {
            self.events.clone()
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_method() -> String {
    "POST".into()
}

/// Inline (in the listener's flow) or through the job queue.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActionMode {
    #[default]
    Inline,
    Queued,
}

/// One `[[observers.actions]]` entry, selected by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ActionConfig {
    Webhook(WebhookConfig),
    Slack(SlackConfig),
    Email(EmailConfig),
    Log(LogConfig),
    Cache(CacheActionConfig),
    Nats(super::NatsConfig),
    #[serde(rename = "rabbitmq")]
    RabbitMq(super::RabbitMqConfig),
}

impl ActionConfig {
    /// Every `type` the config accepts.
    pub const TYPES: [&'static str; 7] = [
        "webhook", "slack", "email", "log", "cache", "nats", "rabbitmq",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            ActionConfig::Webhook(_) => "webhook",
            ActionConfig::Slack(_) => "slack",
            ActionConfig::Email(_) => "email",
            ActionConfig::Log(_) => "log",
            ActionConfig::Cache(_) => "cache",
            ActionConfig::Nats(_) => "nats",
            ActionConfig::RabbitMq(_) => "rabbitmq",
        }
    }

    pub fn mode(&self) -> ActionMode {
        match self {
            ActionConfig::Webhook(c) => c.mode,
            ActionConfig::Slack(c) => c.mode,
            ActionConfig::Email(c) => c.mode,
            ActionConfig::Nats(c) => c.mode,
            ActionConfig::RabbitMq(c) => c.mode,
            ActionConfig::Log(_) | ActionConfig::Cache(_) => ActionMode::Inline,
        }
    }

    /// Per-action timeout override.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            ActionConfig::Webhook(c) => c.timeout,
            ActionConfig::Slack(c) => c.timeout,
            ActionConfig::Email(c) => c.timeout,
            ActionConfig::Nats(c) => c.timeout,
            ActionConfig::RabbitMq(c) => c.timeout,
            ActionConfig::Log(_) | ActionConfig::Cache(_) => None,
        }
    }

    /// A one-line human summary, without secrets.
    pub fn summary(&self) -> String {
        match self {
            ActionConfig::Webhook(c) => format!("{} {}", c.method, crate::redact::url(&c.url)),
            ActionConfig::Slack(c) => format!(
                "slack{}",
                c.channel
                    .as_deref()
                    .map(|ch| format!(" {ch}"))
                    .unwrap_or_default()
            ),
            ActionConfig::Email(c) => format!("email to {}", c.to.join(", ")),
            ActionConfig::Log(c) => format!("log at {}", c.level),
            ActionConfig::Cache(c) => c.summary(),
            ActionConfig::Nats(c) => c.summary(),
            ActionConfig::RabbitMq(c) => c.summary(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            ActionConfig::Webhook(c) => {
                check_template("url", &c.url)?;
                if !c.allow_templated_host && templated_origin(&c.url) {
                    return Err(format!(
                        "url `{}`: the scheme, host or port is templated, so row data would choose where the request goes; template only the path and query, or set allow_templated_host = true",
                        crate::redact::url(&c.url)
                    ));
                }
                if !c.url.contains("{{") {
                    let url =
                        url::Url::parse(&c.url).map_err(|e| format!("url `{}`: {e}", c.url))?;
                    if !matches!(url.scheme(), "http" | "https") {
                        return Err(format!("url `{}` must be http or https", c.url));
                    }
                }
                reqwest::Method::from_bytes(c.method.as_bytes())
                    .map_err(|_| format!("method `{}` is not an HTTP method", c.method))?;
                for (name, value) in &c.headers {
                    if crate::actions::signing::RESERVED_HEADERS
                        .contains(&name.to_ascii_lowercase().as_str())
                    {
                        return Err(format!(
                            "headers.{name}: set by the webhook action itself (one of {}); it cannot be configured",
                            crate::actions::signing::RESERVED_HEADERS.join(", ")
                        ));
                    }
                    check_template(&format!("headers.{name}"), value.expose())?;
                }
                if let Some(secret) = &c.signing_secret {
                    crate::actions::signing::secret_bytes(secret.expose())
                        .map_err(|e| format!("signing_secret {e}"))?;
                }
                if let Some(body) = &c.body {
                    check_template("body", body)?;
                    if c.numbers == crate::numbers::NumberFormat::String {
                        return Err("numbers = \"string\" applies to the default JSON body, not to a `body` template; quote the value in the template instead, e.g. \"amount\": \"{{ new.amount }}\"".into());
                    }
                }
                Ok(())
            }
            ActionConfig::Slack(c) => {
                url::Url::parse(c.webhook_url.expose()).map_err(|e| format!("webhook_url: {e}"))?;
                check_template("text", &c.text)
            }
            ActionConfig::Email(c) => {
                if c.to.is_empty() {
                    return Err("`to` must list at least one address".into());
                }
                for addr in c.to.iter().chain(std::iter::once(&c.from)) {
                    if !addr.contains("{{") {
                        addr.parse::<lettre::Address>()
                            .map_err(|e| format!("address `{addr}`: {e}"))?;
                    }
                }
                url::Url::parse(c.smtp_url.expose()).map_err(|e| format!("smtp_url: {e}"))?;
                check_template("subject", &c.subject)?;
                check_template("body", &c.body)
            }
            ActionConfig::Log(c) => {
                if !matches!(
                    c.level.as_str(),
                    "trace" | "debug" | "info" | "warn" | "error"
                ) {
                    return Err(format!(
                        "level `{}` must be one of trace, debug, info, warn, error",
                        c.level
                    ));
                }
                c.message
                    .as_deref()
                    .map_or(Ok(()), |m| check_template("message", m))
            }
            ActionConfig::Cache(c) => c.validate(),
            ActionConfig::Nats(c) => c.validate(),
            ActionConfig::RabbitMq(c) => c.validate(),
        }
    }
}

/// Whether a template expression or block appears before the URL's path (scheme, userinfo,
/// host or port).
fn templated_origin(url: &str) -> bool {
    let origin_end = match url.find("://") {
        Some(at) => url[at + 3..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |e| at + 3 + e),
        // No `scheme://` written out: the scheme itself comes from the template.
        None => url.len(),
    };
    let origin = &url[..origin_end];
    origin.contains("{{") || origin.contains("{%")
}

pub(super) fn check_template(field: &str, source: &str) -> Result<(), String> {
    crate::template::check(source).map_err(|e| format!("{field}: {e}"))
}

/// `type = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Templated, e.g. `http://api/orders/{{ entity_id }}`.
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// Header values are templated and treated as secrets (never printed).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Optional body template; the documented JSON event body when absent.
    #[serde(default)]
    pub body: Option<String>,
    /// How the default body writes numbers: exact JSON numbers, or JSON strings.
    #[serde(default)]
    pub numbers: crate::numbers::NumberFormat,
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Standard Webhooks secret (`whsec_` + base64, which must decode, or any other non-empty
    /// string used as raw bytes).
    #[serde(default)]
    pub signing_secret: Option<Secret>,
    /// Lets the url's scheme, host or port be templated (row data then chooses the target;
    /// the `[outbound]` address policy still applies). Off by default.
    #[serde(default)]
    pub allow_templated_host: bool,
    #[serde(default)]
    pub mode: ActionMode,
    /// Queued only: the job queue its jobs go to (`default` when unset).
    #[serde(default)]
    pub queue: Option<String>,
    /// Queued only: higher runs first within the queue (-1000 to 1000, default 0).
    #[serde(default)]
    pub priority: i32,
}

/// `type = "slack"`: an incoming-webhook message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub webhook_url: Secret,
    /// Templated message text.
    pub text: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
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

fn default_smtp_url() -> Secret {
    Secret::new("smtp://127.0.0.1:25")
}

fn default_from() -> String {
    "observers@localhost".into()
}

/// `type = "email"`: SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub to: Vec<String>,
    #[serde(default = "default_from")]
    pub from: String,
    pub subject: String,
    #[serde(default)]
    pub body: String,
    /// `smtp://host:port` (plain), `smtps://` or `smtp://...?tls=required`; credentials as
    /// `smtp://user:pass@host`.
    #[serde(default = "default_smtp_url")]
    pub smtp_url: Secret,
    #[serde(default, with = "duration::option")]
    pub timeout: Option<Duration>,
    /// Queued by default: SMTP is slow and must not hold up the stream.
    #[serde(default = "queued")]
    pub mode: ActionMode,
    /// Queued only: the job queue its jobs go to (`default` when unset).
    #[serde(default)]
    pub queue: Option<String>,
    /// Queued only: higher runs first within the queue (-1000 to 1000, default 0).
    #[serde(default)]
    pub priority: i32,
}

fn queued() -> ActionMode {
    ActionMode::Queued
}

fn default_level() -> String {
    "info".into()
}

/// `type = "log"`: a structured log line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// `type = "cache"`: invalidates cached entries (needs `[cache] enabled = true`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheActionConfig {
    /// Keys to delete, templated (e.g. `"product:{{ entity_id }}"`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Redis globs to delete (`*`, `?`, `[..]`), templated; never `KEYS`, always `SCAN`.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Drop every cached action result of this event's entity.
    #[serde(default)]
    pub invalidate_entity: bool,
    /// Drop every cached result of these action types (e.g. `["webhook"]`).
    #[serde(default)]
    pub invalidate_action_types: Vec<String>,
}

impl CacheActionConfig {
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.keys.is_empty() {
            parts.push(format!("{} key(s)", self.keys.len()));
        }
        if !self.patterns.is_empty() {
            parts.push(format!("{} pattern(s)", self.patterns.len()));
        }
        if self.invalidate_entity {
            parts.push("the entity's results".into());
        }
        if !self.invalidate_action_types.is_empty() {
            parts.push(format!(
                "{} results",
                self.invalidate_action_types.join("/")
            ));
        }
        format!("cache invalidate {}", parts.join(", "))
    }

    fn validate(&self) -> Result<(), String> {
        if self.keys.is_empty()
            && self.patterns.is_empty()
            && !self.invalidate_entity
            && self.invalidate_action_types.is_empty()
        {
            return Err(
                "nothing to invalidate: set keys, patterns, invalidate_entity or invalidate_action_types"
                    .into(),
            );
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.is_empty() {
                return Err(format!("keys[{i}] is empty"));
            }
            check_template(&format!("keys[{i}]"), k)?;
        }
        for (i, p) in self.patterns.iter().enumerate() {
            if p.is_empty() {
                return Err(format!("patterns[{i}] is empty"));
            }
            check_template(&format!("patterns[{i}]"), p)?;
        }
        for t in &self.invalidate_action_types {
            if !ActionConfig::TYPES.contains(&t.as_str()) {
                return Err(format!(
                    "invalidate_action_types: unknown action type `{t}`; expected one of {}",
                    ActionConfig::TYPES.join(", ")
                ));
            }
        }
        Ok(())
    }
}
