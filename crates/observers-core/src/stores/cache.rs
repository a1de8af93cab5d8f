//! The action-result cache: the `CacheBackend` trait, Redis-style glob matching for pattern
//! invalidation, and a bounded in-memory LRU cache whose TTLs follow the injectable clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::lock;
use crate::clock::SharedClock;
use crate::error::{ObserverError, Result};

/// Counters a cache keeps about itself, exported as metrics and shown by `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Live entries (remote backends: best effort).
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    /// Live entries dropped to make room; expiries are not evictions.
    pub evictions: u64,
}

impl CacheStats {
    /// Hits over lookups, `None` before the first lookup.
    #[expect(
        clippy::cast_precision_loss,
        reason = "a ratio needs no more than f64's 52 bits"
    )]
    pub fn hit_ratio(&self) -> Option<f64> {
        let lookups = self.hits.saturating_add(self.misses);
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// A key-value cache with per-entry TTLs. Values are opaque bytes (callers serialize).
///
/// `delete_pattern` takes a Redis `MATCH` glob (see [`glob_match`]), so the in-memory and Redis
/// backends invalidate exactly the same keys.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    /// The value, or `None` if absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores `value` for `ttl` (which must be non-zero), replacing any previous value.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()>;
    /// Removes the key; `true` if a live entry was removed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Removes every live key matching the glob; returns how many.
    async fn delete_pattern(&self, pattern: &str) -> Result<u64>;
    /// Counters kept locally; synchronous so a metrics collector can call it.
    fn stats(&self) -> CacheStats;
}

/// Whether `key` matches the Redis glob `pattern`: `*` any run of characters, `?` one
/// character, `[abc]`, `[a-z]` and `[^abc]` character classes, and `\` escaping the next
/// character. Like Redis, an unterminated class runs to the end of the pattern and a reversed
/// range (`[z-a]`) is read in order.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    let tokens = parse_glob(pattern);
    let key: Vec<char> = key.chars().collect();
    let (mut p, mut k) = (0, 0);
    // Where the last `*` was, and the key position it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        match tokens.get(p) {
            Some(GlobToken::Star) => {
                star = Some((p, k));
                p += 1;
                continue;
            }
            Some(token) if token.matches(key[k]) => {
                p += 1;
                k += 1;
                continue;
            }
            _ => {}
        }
        let Some((star_p, star_k)) = star else {
            return false;
        };
        // Let the `*` absorb one more character and retry from just after it.
        p = star_p + 1;
        k = star_k + 1;
        star = Some((star_p, k));
    }
    tokens[p..].iter().all(|t| matches!(t, GlobToken::Star))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobToken {
    Star,
    AnyOne,
    Literal(char),
    Class {
        negated: bool,
        /// Inclusive ranges; a single character is `(c, c)`.
        ranges: Vec<(char, char)>,
    },
}

impl GlobToken {
    fn matches(&self, c: char) -> bool {
        match self {
            GlobToken::Star | GlobToken::AnyOne => true,
            GlobToken::Literal(l) => *l == c,
            GlobToken::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

fn parse_glob(pattern: &str) -> Vec<GlobToken> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => {
                // Consecutive stars mean the same as one.
                if out.last() != Some(&GlobToken::Star) {
                    out.push(GlobToken::Star);
                }
            }
            '?' => out.push(GlobToken::AnyOne),
            '\\' if i + 1 < p.len() => {
                i += 1;
                out.push(GlobToken::Literal(p[i]));
            }
            '[' => {
                i += 1;
                let negated = p.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                while i < p.len() && p[i] != ']' {
                    if p[i] == '\\' && i + 1 < p.len() {
                        i += 1;
                        ranges.push((p[i], p[i]));
                    } else if i + 2 < p.len() && p[i + 1] == '-' {
                        let (a, b) = (p[i], p[i + 2]);
                        ranges.push((a.min(b), a.max(b)));
                        i += 2;
                    } else {
                        ranges.push((p[i], p[i]));
                    }
                    i += 1;
                }
                out.push(GlobToken::Class { negated, ranges });
            }
            c => out.push(GlobToken::Literal(c)),
        }
        i += 1;
    }
    out
}

struct Entry {
    value: Vec<u8>,
    expires_at: Duration,
    /// Position in the recency order; larger is more recent.
    used: u64,
}

/// Entries plus two orderings: by recency (for LRU eviction) and by expiry (so expired
/// entries are swept in order instead of by scanning).
#[derive(Default)]
struct CacheState {
    entries: HashMap<String, Entry>,
    by_use: BTreeMap<u64, String>,
    by_expiry: BTreeSet<(Duration, String)>,
    tick: u64,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl CacheState {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_use.remove(&entry.used);
        self.by_expiry.remove(&(entry.expires_at, key.to_owned()));
        Some(entry)
    }

    /// Drops every entry whose expiry is at or before `now`.
    fn sweep_expired(&mut self, now: Duration) {
        while let Some((at, _)) = self.by_expiry.first()
            && *at <= now
        {
            if let Some((_, key)) = self.by_expiry.pop_first()
                && let Some(entry) = self.entries.remove(&key)
            {
                self.by_use.remove(&entry.used);
            }
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn touch(&mut self, key: &str) {
        let tick = self.next_tick();
        if let Some(entry) = self.entries.get_mut(key) {
            self.by_use.remove(&entry.used);
            entry.used = tick;
            self.by_use.insert(tick, key.to_owned());
        }
    }

    fn evict_least_recently_used(&mut self) -> bool {
        let Some((_, key)) = self.by_use.pop_first() else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&key) {
            self.by_expiry.remove(&(entry.expires_at, key));
        }
        self.evictions += 1;
        true
    }
}

/// A bounded in-memory cache: expired entries are misses (and are dropped), and when full the
/// least recently used entry makes room. Every operation is O(log n) except `delete_pattern`,
/// which scans.
pub struct MemoryCacheBackend {
    state: Mutex<CacheState>,
    max_entries: usize,
    clock: SharedClock,
}

impl fmt::Debug for MemoryCacheBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheBackend")
            .field("max_entries", &self.max_entries)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl MemoryCacheBackend {
    /// A cache holding at most `max_entries` (at least one).
    pub fn new(max_entries: usize, clock: SharedClock) -> Self {
        Self {
            state: Mutex::new(CacheState::default()),
            max_entries: max_entries.max(1),
            clock,
        }
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }
}

#[async_trait]
impl CacheBackend for MemoryCacheBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.sweep_expired(now);
        let value = state.entries.get(key).map(|e| e.value.clone());
        if value.is_some() {
            state.hits += 1;
            state.touch(key);
        } else {
            state.misses += 1;
        }
        Ok(value)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(ObserverError::Store {
                backend: "memory",
                message: format!("cache TTL for `{key}` must be greater than zero"),
                transient: false,
            });
        }
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.sweep_expired(now);
        state.remove(key);
        while state.entries.len() >= self.max_entries && state.evict_least_recently_used() {}
        let expires_at = now.saturating_add(ttl);
        let used = state.next_tick();
        state.by_use.insert(used, key.to_owned());
        state.by_expiry.insert((expires_at, key.to_owned()));
        state.entries.insert(
            key.to_owned(),
            Entry {
                value,
                expires_at,
                used,
            },
        );
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.sweep_expired(now);
        Ok(state.remove(key).is_some())
    }

    async fn delete_pattern(&self, pattern: &str) -> Result<u64> {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.sweep_expired(now);
        let doomed: Vec<String> = state
            .entries
            .keys()
            .filter(|k| glob_match(pattern, k))
            .cloned()
            .collect();
        for key in &doomed {
            state.remove(key);
        }
        Ok(u64::try_from(doomed.len()).unwrap_or(u64::MAX))
    }

    fn stats(&self) -> CacheStats {
        let now = self.clock.now();
        let mut state = lock(&self.state);
        state.sweep_expired(now);
        CacheStats {
            entries: u64::try_from(state.entries.len()).unwrap_or(u64::MAX),
            hits: state.hits,
            misses: state.misses,
            evictions: state.evictions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    const MIN: Duration = Duration::from_secs(60);

    fn cache(max: usize) -> (MemoryCacheBackend, ManualClock) {
        let clock = ManualClock::new();
        (MemoryCacheBackend::new(max, Arc::new(clock.clone())), clock)
    }

    #[test]
    fn glob_matches_like_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            (
                "observer:action:user:42:*",
                "observer:action:user:42:webhook",
                true,
            ),
            (
                "observer:action:user:42:*",
                "observer:action:user:421:webhook",
                false,
            ),
            (
                "observer:action:*:*:email:*",
                "observer:action:user:7:email:x",
                true,
            ),
            (
                "observer:action:*:*:email:*",
                "observer:action:user:7:slack:x",
                false,
            ),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "hllo", true),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-c]llo", "hbllo", true),
            ("h[a-c]llo", "hdllo", false),
            ("h[c-a]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("h[\\]]llo", "h]llo", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*.log", "x.log.gz", false),
            ("**a", "bbba", true),
            ("abc", "abcd", false),
            ("abc*", "ab", false),
            ("über:*", "über:1", true),
            ("[abc", "b", true),
            ("[]", "x", false),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(
                glob_match(pattern, key),
                *want,
                "glob_match({pattern:?}, {key:?})"
            );
        }
    }

    #[tokio::test]
    async fn hits_and_misses_are_counted() {
        let (c, _) = cache(10);
        assert_eq!(c.get("k").await.unwrap(), None);
        c.set("k", b"v1".to_vec(), MIN).await.unwrap();
        assert_eq!(c.get("k").await.unwrap(), Some(b"v1".to_vec()));
        c.set("k", b"v2".to_vec(), MIN).await.unwrap();
        assert_eq!(c.get("k").await.unwrap(), Some(b"v2".to_vec()));
        let stats = c.stats();
        assert_eq!(
            stats,
            CacheStats {
                entries: 1,
                hits: 2,
                misses: 1,
                evictions: 0
            }
        );
        assert_eq!(stats.hit_ratio(), Some(2.0 / 3.0));
        assert_eq!(CacheStats::default().hit_ratio(), None);
    }

    #[tokio::test]
    async fn expired_entries_are_misses_and_are_removed() {
        let (c, clock) = cache(10);
        c.set("short", b"s".to_vec(), Duration::from_secs(5))
            .await
            .unwrap();
        c.set("long", b"l".to_vec(), MIN).await.unwrap();
        clock.advance(Duration::from_secs(4));
        assert!(c.get("short").await.unwrap().is_some());
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            c.get("short").await.unwrap(),
            None,
            "expires exactly at its TTL"
        );
        assert_eq!(c.stats().entries, 1);
        assert!(!c.delete("short").await.unwrap(), "nothing live to delete");
        assert_eq!(c.get("long").await.unwrap(), Some(b"l".to_vec()));
        // Setting again restarts the TTL.
        c.set("long", b"l2".to_vec(), Duration::from_secs(5))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(56));
        assert_eq!(c.get("long").await.unwrap(), None);
        assert_eq!(c.stats().evictions, 0, "expiry is not eviction");
    }

    #[tokio::test]
    async fn full_cache_evicts_the_least_recently_used() {
        let (c, _) = cache(3);
        for k in ["a", "b", "c"] {
            c.set(k, k.as_bytes().to_vec(), MIN).await.unwrap();
        }
        // Reading `a` makes `b` the least recently used.
        c.get("a").await.unwrap();
        c.set("d", b"d".to_vec(), MIN).await.unwrap();
        assert_eq!(c.get("b").await.unwrap(), None);
        for k in ["a", "c", "d"] {
            assert!(c.get(k).await.unwrap().is_some(), "{k} kept");
        }
        // Overwriting an existing key needs no room.
        c.set("a", b"a2".to_vec(), MIN).await.unwrap();
        let stats = c.stats();
        assert_eq!((stats.entries, stats.evictions), (3, 1));
    }

    #[tokio::test]
    async fn full_cache_drops_expired_entries_before_live_ones() {
        let (c, clock) = cache(2);
        c.set("old", b"o".to_vec(), Duration::from_secs(1))
            .await
            .unwrap();
        c.set("live", b"l".to_vec(), MIN).await.unwrap();
        clock.advance(Duration::from_secs(2));
        c.set("new", b"n".to_vec(), MIN).await.unwrap();
        assert!(c.get("live").await.unwrap().is_some());
        assert!(c.get("new").await.unwrap().is_some());
        assert_eq!(c.stats().evictions, 0);
    }

    #[tokio::test]
    async fn delete_and_delete_pattern() {
        let (c, clock) = cache(100);
        for key in [
            "observer:action:user:1:webhook",
            "observer:action:user:1:email",
            "observer:action:user:2:webhook",
            "observer:action:order:1:webhook",
        ] {
            c.set(key, vec![1], MIN).await.unwrap();
        }
        c.set(
            "observer:action:user:1:slack",
            vec![1],
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        clock.advance(Duration::from_secs(1));
        // The expired slack entry is not counted.
        assert_eq!(
            c.delete_pattern("observer:action:user:1:*").await.unwrap(),
            2
        );
        assert_eq!(
            c.delete_pattern("observer:action:*:*:webhook")
                .await
                .unwrap(),
            2
        );
        assert_eq!(c.delete_pattern("nothing*").await.unwrap(), 0);
        assert_eq!(c.stats().entries, 0);
        c.set("k", vec![1], MIN).await.unwrap();
        assert!(c.delete("k").await.unwrap());
        assert!(!c.delete("k").await.unwrap());
    }

    #[tokio::test]
    async fn zero_ttl_is_rejected_and_capacity_is_at_least_one() {
        let (c, _) = cache(0);
        let err = c.set("k", vec![1], Duration::ZERO).await.unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(c.max_entries(), 1);
        c.set("a", vec![1], MIN).await.unwrap();
        c.set("b", vec![2], MIN).await.unwrap();
        assert_eq!(c.get("b").await.unwrap(), Some(vec![2]));
        assert_eq!(c.stats().entries, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_use_keeps_the_bound() {
        let clock = ManualClock::new();
        let c = Arc::new(MemoryCacheBackend::new(50, Arc::new(clock)));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        let key = format!("{t}:{i}");
                        c.set(&key, vec![0; 4], MIN).await.unwrap();
                        c.get(&key).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let stats = c.stats();
        assert_eq!(stats.entries, 50);
        assert_eq!(stats.evictions, 8 * 200 - 50);
        assert_eq!(stats.hits + stats.misses, 8 * 200);
    }
}
