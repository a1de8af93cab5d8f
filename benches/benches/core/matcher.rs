//! Group `matcher`: finding the observers of an (entity, kind) among 1,000, against a bare
//! `HashMap<String, Vec<usize>>` probe.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::Criterion;
use observers_core::EventKind;
use observers_core::matcher::{ANY_ENTITY, Matcher};

const OBSERVERS: usize = 1_000;
const ENTITY_TYPES: usize = 100;

/// 1,000 observers over 100 entity types; every 250th one watches every entity (`"*"`), every
/// third one also watches updates.
fn observers() -> Vec<(usize, String, Vec<EventKind>)> {
    (0..OBSERVERS)
        .map(|i| {
            let entity = if i % 250 == 0 {
                ANY_ENTITY.to_owned()
            } else {
                format!("E{}", i % ENTITY_TYPES)
            };
            let kinds = if i % 3 == 0 {
                vec![EventKind::Insert, EventKind::Update]
            } else {
                vec![EventKind::Insert]
            };
            (i, entity, kinds)
        })
        .collect()
}

pub fn bench(c: &mut Criterion) {
    let observers = observers();
    let matcher = Matcher::new(
        observers
            .iter()
            .map(|(i, e, k)| (*i, e.as_str(), k.clone())),
    );
    let mut baseline: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, entity, _) in &observers {
        baseline.entry(entity.clone()).or_default().push(*i);
    }
    // Ten exact observers of E42 plus the four wildcards.
    assert_eq!(matcher.lookup("E42", EventKind::Insert).len(), 14);

    let mut group = c.benchmark_group("matcher");
    group.bench_function("lookup_1000_observers", |b| {
        b.iter(|| {
            matcher
                .lookup(black_box("E42"), black_box(EventKind::Insert))
                .len()
        });
    });
    group.bench_function("lookup_baseline_hashmap_get", |b| {
        b.iter(|| baseline.get(black_box("E42")).map(Vec::len));
    });
    group.finish();
}
