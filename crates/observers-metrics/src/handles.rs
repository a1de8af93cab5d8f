//! Pre-resolved metric handles per label value, so the hot path does one lock-free load and
//! one hash probe on a `&str` (no allocation, no label-set construction, no lock) and then
//! touches atomics. Inserting a new value copies the map (rare: label values are bounded). The
//! number of distinct values is capped: past the cap, new values share the series `"other"`,
//! so a misbehaving source cannot blow up the cardinality.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

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

/// Entries in the first chunk of an `Arena`; chunk `c` holds `FIRST << c`.
const FIRST: usize = 32;
/// Chunks of an `Arena`: room for `FIRST * (2^CHUNKS - 1)` entries (about 2 million).
const CHUNKS: usize = 16;

/// An append-only arena: entries get a `u32` index, are never moved or removed, and are read
/// by index without a lock. It lets per-thread caches hold plain indexes (`Copy`, no
/// destructor) instead of `Arc`s, so the hot path's thread-local read is one load.
pub(crate) struct Arena<V> {
    chunks: [OnceLock<Box<[OnceLock<V>]>>; CHUNKS],
    next: AtomicU32,
}

impl<V> Default for Arena<V> {
    fn default() -> Self {
        Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            next: AtomicU32::new(0),
        }
    }
}

impl<V> Arena<V> {
    /// (chunk, offset) of index `i`.
    #[inline]
    fn locate(i: u32) -> (usize, usize) {
        let j = i as usize / FIRST + 1;
        let chunk = (usize::BITS - 1 - j.leading_zeros()) as usize;
        (chunk, i as usize - FIRST * ((1 << chunk) - 1))
    }

    #[inline]
    pub fn get(&self, i: u32) -> Option<&V> {
        let (chunk, offset) = Self::locate(i);
        self.chunks.get(chunk)?.get()?.get(offset)?.get()
    }

    /// Appends `v`; `None` once the arena is full.
    pub fn push(&self, v: V) -> Option<u32> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let (chunk, offset) = Self::locate(i);
        let slots = self
            .chunks
            .get(chunk)?
            .get_or_init(|| (0..FIRST << chunk).map(|_| OnceLock::new()).collect());
        slots.get(offset)?.set(v).ok()?;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_indexes_are_stable_across_chunks() {
        let a: Arena<usize> = Arena::default();
        let ids: Vec<u32> = (0..1000).map(|v| a.push(v).unwrap()).collect();
        for (v, i) in ids.iter().enumerate() {
            assert_eq!(a.get(*i), Some(&v));
        }
        assert_eq!(a.get(1000), None);
        assert_eq!(Arena::<()>::locate(31), (0, 31));
        assert_eq!(Arena::<()>::locate(32), (1, 0));
        assert_eq!(Arena::<()>::locate(96), (2, 0));
    }

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
