//! Batch scheduling for listeners: events of one entity run one after another in cursor order,
//! different entities run concurrently (up to `max_in_flight`), and a tracker reports the
//! contiguous completed prefix: the only position a checkpoint may move to.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream;

use crate::event::{Cursor, EntityEvent, EventKind};

/// Tracks completion of a batch's positions `0..n` and the cursor of the longest completed
/// prefix.
#[derive(Debug)]
pub struct ProgressTracker {
    inner: Mutex<TrackerState>,
}

#[derive(Debug)]
struct TrackerState {
    cursors: Vec<Cursor>,
    done: Vec<bool>,
    /// Number of positions in the completed prefix.
    prefix: usize,
}

impl ProgressTracker {
    /// `cursors` in batch order (ascending).
    pub fn new(cursors: Vec<Cursor>) -> Self {
        let n = cursors.len();
        Self {
            inner: Mutex::new(TrackerState {
                cursors,
                done: vec![false; n],
                prefix: 0,
            }),
        }
    }

    /// Marks position `pos` done.
    pub fn complete(&self, pos: usize) {
        let mut s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(d) = s.done.get_mut(pos) {
            *d = true;
        }
        while s.prefix < s.done.len() && s.done[s.prefix] {
            s.prefix += 1;
        }
    }

    /// The cursor of the last position of the completed prefix, if any is complete.
    pub fn committed(&self) -> Option<Cursor> {
        let s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.prefix.checked_sub(1).map(|i| s.cursors[i])
    }

    /// How many positions are in the completed prefix.
    pub fn prefix_len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prefix
    }

    pub fn is_complete(&self) -> bool {
        let s = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.prefix == s.done.len()
    }
}

/// Groups batch positions by (entity type, entity id), keeping cursor order inside each group
/// and first-appearance order between groups.
pub fn group_by_entity(events: &[EntityEvent]) -> Vec<Vec<usize>> {
    group_range(events, 0..events.len())
}

fn group_range(events: &[EntityEvent], range: std::ops::Range<usize>) -> Vec<Vec<usize>> {
    let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(range.len());
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for pos in range {
        let g = *index.entry(events[pos].ordering_key()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(pos);
    }
    groups
}

/// Runs `handle(pos, event)` for every event: per entity in order, entities concurrently up to
/// `max_in_flight`. `handle` returns whether the event is done; on `false` the rest of that
/// entity's events are not started (ordering) and `on_done` is not called for them.
/// `keep_going` is checked before each event: once it says stop, no new event starts and
/// events already running finish.
///
/// A `truncate` event is a barrier: every event before it finishes first, it runs alone, and
/// the events after it start only once it is done (so no copy sees a row change on the wrong
/// side of the truncate). After an event that is not done, nothing beyond the next barrier
/// starts.
pub async fn run_batch<'a, F, Fut>(
    events: &'a [EntityEvent],
    max_in_flight: usize,
    on_done: &(dyn Fn(usize) + Sync),
    keep_going: &(dyn Fn() -> bool + Sync),
    handle: F,
) where
    F: Fn(usize, &'a EntityEvent) -> Fut,
    Fut: Future<Output = bool>,
{
    let handle = &handle;
    let mut start = 0;
    while start < events.len() {
        let end = events[start..]
            .iter()
            .position(|e| e.kind == EventKind::Truncate)
            .map_or(events.len(), |p| start + p);
        let all_done = AtomicBool::new(true);
        let all_done = &all_done;
        stream::iter(group_range(events, start..end))
            .map(|group| async move {
                for pos in group {
                    if !keep_going() {
                        all_done.store(false, Ordering::Relaxed);
                        return;
                    }
                    if !handle(pos, &events[pos]).await {
                        all_done.store(false, Ordering::Relaxed);
                        return;
                    }
                    on_done(pos);
                }
            })
            .buffer_unordered(max_in_flight.max(1))
            .for_each(|()| async {})
            .await;
        if end == events.len() || !all_done.load(Ordering::Relaxed) || !keep_going() {
            return;
        }
        if !handle(end, &events[end]).await {
            return;
        }
        on_done(end);
        start = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn ev(id: i64, entity: &str) -> EntityEvent {
        EntityEvent::new(id, "T", entity, EventKind::Update, None, None)
            .with_cursor(Cursor::new(id))
    }

    #[test]
    fn prefix_only_moves_over_contiguous_completions() {
        let t = ProgressTracker::new((1..=4).map(Cursor::new).collect());
        assert_eq!(t.committed(), None);
        t.complete(1);
        t.complete(3);
        assert_eq!(t.committed(), None);
        t.complete(0);
        assert_eq!(t.committed(), Some(Cursor::new(2)));
        t.complete(2);
        assert_eq!(t.committed(), Some(Cursor::new(4)));
        assert!(t.is_complete());
    }

    #[test]
    fn groups_keep_order() {
        let events = vec![ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "c"), ev(5, "b")];
        assert_eq!(
            group_by_entity(&events),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
    }

    #[tokio::test]
    async fn same_entity_in_order_different_entities_concurrently() {
        let events: Vec<_> = (1..=40).map(|i| ev(i, &(i % 4).to_string())).collect();
        let tracker = ProgressTracker::new(events.iter().map(EntityEvent::cursor).collect());
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        run_batch(&events, 8, &|p| tracker.complete(p), &|| true, |_, e| {
            let log = log.clone();
            let running = running.clone();
            let peak = peak.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                log.lock().unwrap().push((e.entity_id.clone(), e.id));
                running.fetch_sub(1, Ordering::SeqCst);
                true
            }
        })
        .await;
        assert!(tracker.is_complete());
        let log = log.lock().unwrap();
        for entity in ["0", "1", "2", "3"] {
            let ids: Vec<i64> = log
                .iter()
                .filter(|(e, _)| e == entity)
                .map(|(_, i)| *i)
                .collect();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "entity {entity} out of order: {ids:?}"
            );
        }
        assert_eq!(
            peak.load(Ordering::SeqCst),
            4,
            "four entities run at once, never more"
        );
    }

    #[tokio::test]
    async fn a_failed_event_stops_its_entity_and_holds_the_prefix() {
        let events = vec![ev(1, "a"), ev(2, "b"), ev(3, "a"), ev(4, "b")];
        let tracker = ProgressTracker::new(events.iter().map(EntityEvent::cursor).collect());
        let seen = Mutex::new(Vec::new());
        run_batch(&events, 4, &|p| tracker.complete(p), &|| true, |_, e| {
            seen.lock().unwrap().push(e.id);
            let ok = e.id != 1;
            async move { ok }
        })
        .await;
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        assert_eq!(
            seen,
            [1, 2, 4],
            "event 3 (same entity as failed 1) never starts"
        );
        assert_eq!(tracker.committed(), None);
    }

    #[tokio::test]
    async fn stop_prevents_new_events() {
        let events: Vec<_> = (1..=10).map(|i| ev(i, "same")).collect();
        let tracker = ProgressTracker::new(events.iter().map(EntityEvent::cursor).collect());
        let count = AtomicUsize::new(0);
        let keep = || count.load(Ordering::SeqCst) < 3;
        run_batch(&events, 4, &|p| tracker.complete(p), &keep, |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
            async { true }
        })
        .await;
        assert_eq!(tracker.prefix_len(), 3);
        assert_eq!(tracker.committed(), Some(Cursor::new(3)));
    }

    #[tokio::test]
    async fn a_truncate_is_a_barrier() {
        let truncate = EntityEvent::new(3, "T", "", EventKind::Truncate, None, None)
            .with_cursor(Cursor::new(3));
        let events = vec![ev(1, "a"), ev(2, "b"), truncate, ev(4, "a"), ev(5, "c")];
        let tracker = ProgressTracker::new(events.iter().map(EntityEvent::cursor).collect());
        let log = Mutex::new(Vec::new());
        run_batch(&events, 8, &|p| tracker.complete(p), &|| true, |_, e| {
            log.lock().unwrap().push(format!("start {}", e.id));
            let log = &log;
            async move {
                // The first events take longest: without the barrier the truncate would start
                // (and finish) before them.
                let ms = if e.id < 3 { 20 } else { 1 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                log.lock().unwrap().push(format!("end {}", e.id));
                true
            }
        })
        .await;
        assert!(tracker.is_complete());
        let log = log.into_inner().unwrap();
        let at = |s: &str| log.iter().position(|l| l == s).unwrap();
        assert!(
            at("start 3") > at("end 1") && at("start 3") > at("end 2"),
            "{log:?}"
        );
        assert!(
            at("start 4") > at("end 3") && at("start 5") > at("end 3"),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn nothing_passes_a_truncate_after_an_event_that_is_not_done() {
        let truncate = EntityEvent::new(2, "T", "", EventKind::Truncate, None, None)
            .with_cursor(Cursor::new(2));
        let events = vec![ev(1, "a"), truncate, ev(3, "b")];
        let tracker = ProgressTracker::new(events.iter().map(EntityEvent::cursor).collect());
        let seen = Mutex::new(Vec::new());
        run_batch(&events, 4, &|p| tracker.complete(p), &|| true, |_, e| {
            seen.lock().unwrap().push(e.id);
            let ok = e.id != 1;
            async move { ok }
        })
        .await;
        assert_eq!(seen.into_inner().unwrap(), [1]);
        assert_eq!(tracker.committed(), None);
    }
}
