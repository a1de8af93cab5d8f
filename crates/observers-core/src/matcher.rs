//! Which observers care about an event: O(1) lookup by (entity, kind), `"*"` entities allowed.

use std::collections::HashMap;

use crate::event::EventKind;

/// Wildcard entity.
pub const ANY_ENTITY: &str = "*";

fn slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Insert => 0,
        EventKind::Update => 1,
        EventKind::Delete => 2,
        EventKind::Truncate => 3,
        EventKind::Read => 4,
    }
}

/// Precomputed index: for each entity and kind, the sorted observer indices (exact entries
/// merged with wildcard ones), so a lookup is one hash probe and no allocation.
#[derive(Debug, Default, Clone)]
pub struct Matcher {
    by_entity: HashMap<String, [Vec<usize>; 5]>,
    wildcard: [Vec<usize>; 5],
}

impl Matcher {
    /// `observers` yields (index, entity, kinds).
    pub fn new<'a>(observers: impl IntoIterator<Item = (usize, &'a str, Vec<EventKind>)>) -> Self {
        let mut m = Matcher::default();
        let mut exact: Vec<(usize, &str, Vec<EventKind>)> = Vec::new();
        for (idx, entity, kinds) in observers {
            if entity == ANY_ENTITY {
                for k in &kinds {
                    m.wildcard[slot(*k)].push(idx);
                }
            } else {
                exact.push((idx, entity, kinds));
            }
        }
        for (idx, entity, kinds) in exact {
            let entry = m
                .by_entity
                .entry(entity.to_owned())
                .or_insert_with(Default::default);
            for k in kinds {
                entry[slot(k)].push(idx);
            }
        }
        let wildcard = m.wildcard.clone();
        for lists in m.by_entity.values_mut() {
            for (list, wild) in lists.iter_mut().zip(&wildcard) {
                list.extend_from_slice(wild);
                list.sort_unstable();
                list.dedup();
            }
        }
        for list in &mut m.wildcard {
            list.sort_unstable();
            list.dedup();
        }
        m
    }

    /// Observer indices for this entity and kind, in config order.
    pub fn lookup(&self, entity: &str, kind: EventKind) -> &[usize] {
        self.by_entity
            .get(entity)
            .map_or(&self.wildcard[slot(kind)], |lists| &lists[slot(kind)])
    }

    pub fn entities(&self) -> impl Iterator<Item = &str> {
        self.by_entity.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::{Delete, Insert, Update};

    fn check(observers: &[(&str, Vec<EventKind>)], entity: &str, kind: EventKind, want: &[usize]) {
        let m = Matcher::new(
            observers
                .iter()
                .enumerate()
                .map(|(i, (e, k))| (i, *e, k.clone())),
        );
        assert_eq!(m.lookup(entity, kind), want, "{entity} {kind}");
    }

    #[test]
    fn table() {
        let obs = vec![
            ("Order", vec![Insert]),
            ("Order", vec![Insert, Update]),
            ("*", vec![Delete]),
            ("User", vec![Insert, Update, Delete]),
            ("*", vec![Insert]),
        ];
        check(&obs, "Order", Insert, &[0, 1, 4]);
        check(&obs, "Order", Update, &[1]);
        check(&obs, "Order", Delete, &[2]);
        check(&obs, "User", Delete, &[2, 3]);
        check(&obs, "Invoice", Insert, &[4]);
        check(&obs, "Invoice", Update, &[]);
        check(&obs, "order", Update, &[]);
        check(&[], "Order", Insert, &[]);
    }

    #[test]
    fn thousand_observers() {
        let entities: Vec<String> = (0..1000).map(|i| format!("E{}", i % 100)).collect();
        let m = Matcher::new(
            entities
                .iter()
                .enumerate()
                .map(|(i, e)| (i, e.as_str(), vec![Insert])),
        );
        let hits = m.lookup("E7", Insert);
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|i| i % 100 == 7));
    }

    #[test]
    fn truncate_reaches_only_observers_that_name_it() {
        let m = Matcher::new([
            (0, "Order", EventKind::ALL.to_vec()),
            (1, "Order", vec![EventKind::Truncate]),
            (2, ANY_ENTITY, EventKind::EVERY.to_vec()),
        ]);
        assert_eq!(m.lookup("Order", EventKind::Truncate), [1, 2]);
        assert_eq!(m.lookup("Order", EventKind::Insert), [0, 2]);
    }

    #[test]
    fn read_reaches_only_observers_that_name_it() {
        let m = Matcher::new([
            (0, "Order", EventKind::ALL.to_vec()),
            (1, "Order", vec![EventKind::Insert, EventKind::Read]),
            (2, ANY_ENTITY, vec![EventKind::Read]),
        ]);
        assert_eq!(m.lookup("Order", EventKind::Read), [1, 2]);
        assert_eq!(m.lookup("Order", EventKind::Insert), [0, 1]);
        assert_eq!(m.lookup("Other", EventKind::Read), [2]);
    }
}
