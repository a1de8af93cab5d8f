//! Pre-resolved metric handles per label value, so the hot path does one lock-free load and
//! one hash probe on a `&str` (no allocation, no label-set construction, no lock) and then
//! touches atomics. Inserting a new value copies the map (rare: label values are bounded). The
//! number of distinct values is capped: past the cap, new values share the series `"other"`,
//! so a misbehaving source cannot blow up the cardinality.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use foldhash::fast::FixedState;

/// The label value every key past the cap is folded into.
pub const OVERFLOW: &str = "other";

type Map<V> = HashMap<Box<str>, Arc<V>, FixedState>;

/// Handles keyed by one label value.
pub(crate) struct Handles<V> {
    map: ArcSwap<Map<V>>,
    /// Serializes inserts (readers never take it).
    insert: Mutex<()>,
    cap: usize,
}

impl<V> Handles<V> {
    pub fn new(cap: usize) -> Self {
        Self {
            map: ArcSwap::from_pointee(Map::default()),
            insert: Mutex::new(()),
            cap: cap.max(1),
        }
    }

    /// The handle of `key`, created with `make` the first time.
    pub fn get_arc(&self, key: &str, make: impl FnOnce(&str) -> V) -> Arc<V> {
        if let Some(v) = self.map.load().get(key) {
            return Arc::clone(v);
        }
        self.insert_slow(key, make)
    }

    /// Runs `f` on the handle of `key`, creating it with `make` the first time.
    pub fn with<R>(&self, key: &str, make: impl FnOnce(&str) -> V, f: impl FnOnce(&V) -> R) -> R {
        if let Some(v) = self.map.load().get(key) {
            return f(v);
        }
        f(&self.insert_slow(key, make))
    }

    fn insert_slow(&self, key: &str, make: impl FnOnce(&str) -> V) -> Arc<V> {
        let _guard = self.insert.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.map.load_full();
        let key = if current.len() >= self.cap && !current.contains_key(key) {
            OVERFLOW
        } else {
            key
        };
        if let Some(v) = current.get(key) {
            return Arc::clone(v);
        }
        let v = Arc::new(make(key));
        let mut next = Map::clone(&current);
        next.insert(key.into(), Arc::clone(&v));
        self.map.store(Arc::new(next));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_past_the_cap_share_the_overflow_handle() {
        let h: Handles<String> = Handles::new(2);
        let made = |k: &str| k.to_owned();
        assert_eq!(h.with("a", made, Clone::clone), "a");
        assert_eq!(h.with("b", made, Clone::clone), "b");
        assert_eq!(h.with("c", made, Clone::clone), OVERFLOW);
        assert_eq!(h.with("a", made, Clone::clone), "a");
        assert_eq!(h.map.load().len(), 3);
    }

    #[test]
    fn concurrent_first_uses_create_one_handle() {
        let h: Arc<Handles<std::sync::atomic::AtomicU64>> = Arc::new(Handles::new(10));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = Arc::clone(&h);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        h.with(
                            "k",
                            |_| std::sync::atomic::AtomicU64::new(0),
                            |c| c.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = h.with(
            "k",
            |_| unreachable!(),
            |c| c.load(std::sync::atomic::Ordering::Relaxed),
        );
        assert_eq!(total, 4000);
    }
}
