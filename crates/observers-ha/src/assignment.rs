//! Partition assignment: every live instance computes the same balanced, sticky plan from the
//! same view (live instances, current lease holders), so partitions move only when needed.
//! Each instance gets ⌊n/k⌋ or ⌈n/k⌉ partitions; instances that already hold more get the larger
//! quotas, and each keeps what it holds up to its quota.

use std::collections::{BTreeMap, BTreeSet};

/// The plan: instance → partitions. `instances` are the live instances (any order; at most
/// the first `max_instances` by id take part), `holders` the current holder of each held
/// partition.
pub fn assign(
    partitions: u32,
    instances: &[String],
    holders: &BTreeMap<u32, String>,
    max_instances: usize,
) -> BTreeMap<String, BTreeSet<u32>> {
    let mut ids: Vec<&String> = instances.iter().collect();
    ids.sort();
    ids.dedup();
    ids.truncate(max_instances.max(1));
    let mut plan: BTreeMap<String, BTreeSet<u32>> = ids
        .iter()
        .map(|i| ((*i).clone(), BTreeSet::new()))
        .collect();
    if ids.is_empty() {
        return plan;
    }
    let held = |id: &str| -> Vec<u32> {
        holders
            .iter()
            .filter(|(p, h)| h.as_str() == id && **p < partitions)
            .map(|(p, _)| *p)
            .collect()
    };
    let k = u32::try_from(ids.len()).unwrap_or(u32::MAX);
    let (base, extra) = (partitions / k, partitions % k);
    let mut order: Vec<(&String, Vec<u32>)> = ids.iter().map(|i| (*i, held(i))).collect();
    order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    let mut quotas = Vec::with_capacity(order.len());
    let mut taken = BTreeSet::new();
    for (rank, (id, held)) in order.iter().enumerate() {
        let quota = base + u32::from(u32::try_from(rank).unwrap_or(u32::MAX) < extra);
        let quota = usize::try_from(quota).unwrap_or(usize::MAX);
        let kept: BTreeSet<u32> = held.iter().copied().take(quota).collect();
        taken.extend(kept.iter().copied());
        quotas.push(quota);
        plan.insert((*id).clone(), kept);
    }
    let mut free = (0..partitions).filter(|p| !taken.contains(p));
    for ((id, _), quota) in order.iter().zip(quotas) {
        let mine = plan.entry((*id).clone()).or_default();
        while mine.len() < quota {
            match free.next() {
                Some(p) => {
                    mine.insert(p);
                }
                None => break,
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i{i}")).collect()
    }

    fn check_balanced(n: u32, plan: &BTreeMap<String, BTreeSet<u32>>) {
        let all: Vec<u32> = plan.values().flatten().copied().collect();
        let unique: BTreeSet<u32> = all.iter().copied().collect();
        assert_eq!(all.len(), unique.len(), "no partition twice: {plan:?}");
        assert_eq!(unique, (0..n).collect(), "every partition: {plan:?}");
        let sizes: Vec<usize> = plan.values().map(BTreeSet::len).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(max - min <= 1, "at most one apart: {plan:?}");
    }

    #[test]
    fn balanced_for_every_group_size() {
        for n in 1..=12 {
            for k in 1..=5 {
                check_balanced(n, &assign(n, &ids(k), &BTreeMap::new(), 10));
            }
        }
    }

    #[test]
    fn sticky_and_moves_only_what_must_move() {
        // i0 holds everything; i1 and i2 join: i0 keeps two, the others get two each.
        let holders: BTreeMap<u32, String> = (0..6).map(|p| (p, "i0".to_owned())).collect();
        let plan = assign(6, &ids(3), &holders, 10);
        check_balanced(6, &plan);
        assert_eq!(plan["i0"], BTreeSet::from([0, 1]));
        // One partition, a standby: the holder keeps it whatever the ids.
        let holders = BTreeMap::from([(0, "i1".to_owned())]);
        let plan = assign(1, &ids(2), &holders, 10);
        assert_eq!(plan["i1"], BTreeSet::from([0]));
        assert!(plan["i0"].is_empty());
        // i1 leaves: its partitions go to the survivors, theirs stay put.
        let holders: BTreeMap<u32, String> = (0..6).map(|p| (p, format!("i{}", p % 3))).collect();
        let survivors = vec!["i0".to_owned(), "i2".to_owned()];
        let plan = assign(6, &survivors, &holders, 10);
        check_balanced(6, &plan);
        assert!(plan["i0"].is_superset(&BTreeSet::from([0, 3])));
        assert!(plan["i2"].is_superset(&BTreeSet::from([2, 5])));
    }

    #[test]
    fn holders_outside_the_group_and_extra_instances_are_ignored() {
        let holders = BTreeMap::from([(0, "gone".to_owned()), (9, "i0".to_owned())]);
        let plan = assign(2, &ids(4), &holders, 2);
        assert_eq!(plan.len(), 2, "max_instances");
        check_balanced(2, &plan);
        assert!(assign(3, &[], &holders, 2).is_empty());
    }
}
