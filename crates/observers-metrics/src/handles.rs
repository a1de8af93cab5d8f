//! Pre-resolved metric handles per label value, so the hot path does one read-locked hash probe
//! on a `&str` (no allocation, no label-set construction) and then touches atomics. The number
//! of distinct values is capped: past the cap, new values share the series `"other"`, so a
//! misbehaving source cannot blow up the cardinality.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

/// The label value every key past the cap is folded into.
pub const OVERFLOW: &str = "other";

/// Handles keyed by one label value.
pub(crate) struct Handles<V> {
    map: RwLock<HashMap<Box<str>, V>>,
    cap: usize,
}

impl<V> Handles<V> {
    pub fn new(cap: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    /// Runs `f` on the handle of `key`, creating it with `make` the first time.
    pub fn with<R>(&self, key: &str, make: impl FnOnce(&str) -> V, f: impl FnOnce(&V) -> R) -> R {
        {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(v) = map.get(key) {
                return f(v);
            }
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let key = if map.len() >= self.cap && !map.contains_key(key) {
            OVERFLOW
        } else {
            key
        };
        let v = map.entry(key.into()).or_insert_with(|| make(key));
        f(v)
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
        assert_eq!(h.map.read().unwrap().len(), 3);
    }
}
