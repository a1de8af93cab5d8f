//! Per-thread shards for the counters and histograms of the hot path (every event and every
//! action touches them). An atomic read-modify-write costs about 5 ns even uncontended, and one
//! event with one action needs seven of them; here each live thread owns a shard (a row of
//! cache lines of its own) and adds with a plain load and store, which no other thread writes.
//! A scrape sums the shards. Threads past `SHARDS` live ones, and threads being torn down, share
//! one extra row with atomic adds, so the values stay exact whatever the thread count.
//!
//! A shard is leased by a thread on its first write and handed back when the thread exits; the
//! next thread to lease it goes on adding to the same cells (values are cumulative, nothing is
//! lost). The lease's mutex orders the old owner's last store before the new owner's first load.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Rows owned by one thread each; row `SHARDS` is the shared one.
pub const SHARDS: usize = 16;
const SHARED: usize = SHARDS;
const UNLEASED: usize = usize::MAX;

/// Shards no live thread holds: how many were ever leased (the rest are fresh), and those
/// handed back by exited threads.
static FREE: Mutex<(usize, Vec<usize>)> = Mutex::new((0, Vec::new()));

thread_local! {
    // This thread's shard. No destructor, so reading it is one load and cannot fail.
    static SHARD: Cell<usize> = const { Cell::new(UNLEASED) };
    // Registered when the shard is leased; hands it back when the thread exits.
    static GIVE_BACK: GiveBack = const { GiveBack };
}

struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        // Writes after this point (other destructors) go to the shared row.
        let shard = SHARD.with(|s| s.replace(SHARED));
        give_back(shard);
    }
}

fn give_back(shard: usize) {
    if shard < SHARDS {
        FREE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .push(shard);
    }
}

/// A thread's shard, looked up once and used for several writes of one telemetry event.
#[derive(Debug, Clone, Copy)]
pub struct Shard(usize);

/// This thread's shard: its own, or the shared one when none is free or the thread is exiting.
#[inline]
pub fn shard() -> Shard {
    let s = SHARD.with(Cell::get);
    if s == UNLEASED { lease() } else { Shard(s) }
}

#[cold]
#[inline(never)]
fn lease() -> Shard {
    let s = {
        let mut free = FREE.lock().unwrap_or_else(PoisonError::into_inner);
        let (fresh, returned) = &mut *free;
        returned.pop().unwrap_or_else(|| {
            let s = (*fresh).min(SHARED);
            *fresh = s + 1;
            s
        })
    };
    if GIVE_BACK.try_with(|_| ()).is_err() {
        // The thread is exiting: it must not keep a shard nobody will hand back.
        give_back(s);
        SHARD.with(|c| c.set(SHARED));
        return Shard(SHARED);
    }
    SHARD.with(|c| c.set(s));
    Shard(s)
}

/// Eight cells on a cache line of their own, so two threads never write the same line.
#[repr(align(64))]
#[derive(Default)]
struct Line([AtomicU64; 8]);

/// `width` cells per shard, `SHARDS + 1` shards. Held by value in the metric (the lines behind
/// one pointer), so a write touches the metric's handle and one line of cells.
#[derive(Clone)]
struct Cells {
    lines: Arc<[Line]>,
    lines_per_shard: usize,
}

impl Cells {
    fn new(width: usize) -> Self {
        let lines_per_shard = width.div_ceil(8).max(1);
        Self {
            lines: (0..lines_per_shard * (SHARDS + 1))
                .map(|_| Line::default())
                .collect(),
            lines_per_shard,
        }
    }

    #[inline]
    fn cell(&self, shard: usize, i: usize) -> Option<&AtomicU64> {
        self.lines
            .get(shard * self.lines_per_shard + i / 8)
            .map(|l| &l.0[i % 8])
    }

    /// Replaces a cell's value `v` with `f(v)`: a plain load and store in the thread's own row,
    /// an atomic update in the shared one.
    #[inline]
    fn update(&self, shard: usize, i: usize, f: impl Fn(u64) -> u64) {
        if shard == SHARED {
            return self.update_shared(i, &f);
        }
        if let Some(c) = self.cell(shard, i) {
            // Only this thread writes this cell: no read-modify-write needed.
            c.store(f(c.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }

    /// Out of line: the shared row is for threads past `SHARDS` and exiting ones.
    #[cold]
    #[inline(never)]
    fn update_shared(&self, i: usize, f: &dyn Fn(u64) -> u64) {
        if let Some(c) = self.cell(SHARED, i) {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(f(v)));
        }
    }

    #[inline]
    fn add(&self, shard: usize, i: usize, n: u64) {
        self.update(shard, i, |v| v.wrapping_add(n));
    }

    /// Adds to a cell holding an `f64`'s bits.
    #[inline]
    fn add_f64(&self, shard: usize, i: usize, x: f64) {
        self.update(shard, i, |v| (f64::from_bits(v) + x).to_bits());
    }

    /// The values of cell `i` in every shard.
    fn values(&self, i: usize) -> impl Iterator<Item = u64> + '_ {
        (0..=SHARDS)
            .filter_map(move |s| self.cell(s, i))
            .map(|c| c.load(Ordering::Relaxed))
    }

    fn sum(&self, i: usize) -> u64 {
        self.values(i).fold(0, u64::wrapping_add)
    }

    fn sum_f64(&self, i: usize) -> f64 {
        self.values(i).map(f64::from_bits).sum()
    }
}

/// A monotonic counter, sharded per thread. Clones share the same series.
#[derive(Clone)]
pub struct ShardedCounter {
    cells: Cells,
    /// Its cell in `cells` (0 unless it shares a histogram's cells).
    cell: usize,
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self {
            cells: Cells::new(1),
            cell: 0,
        }
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

impl ShardedCounter {
    #[inline]
    pub fn inc(&self) {
        self.inc_by(1);
    }

    #[inline]
    pub fn inc_by(&self, n: u64) {
        self.cells.add(shard().0, self.cell, n);
    }

    /// `inc_by` with the shard already looked up (several writes of one event).
    #[inline]
    pub fn inc_by_at(&self, shard: Shard, n: u64) {
        self.cells.add(shard.0, self.cell, n);
    }

    /// The total over every shard.
    pub fn get(&self) -> u64 {
        self.cells.sum(self.cell)
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram with fixed buckets, sharded per thread: one plain add on a bucket and one on the
/// sum per observation. Encodes as an ordinary OpenMetrics histogram; `_count` is the sum of
/// the buckets, so it always equals the `+Inf` bucket. Clones share the same series.
#[derive(Clone)]
pub struct ShardedHistogram {
    bounds: &'static [f64],
    /// Per shard: one cell per bound, one for `+Inf`, then the sum (as `f64` bits).
    cells: Cells,
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedHistogram")
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

impl ShardedHistogram {
    /// `bounds` must be sorted ascending and finite.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self::with_counters::<0>(bounds).0
    }

    /// A histogram and `N` counters in the same cells (the counters right after the sum), for
    /// series written together on every event: one block, fewer cache lines per write.
    pub fn with_counters<const N: usize>(bounds: &'static [f64]) -> (Self, [ShardedCounter; N]) {
        let cells = Cells::new(bounds.len() + 2 + N);
        let counters = std::array::from_fn(|i| ShardedCounter {
            cells: cells.clone(),
            cell: bounds.len() + 2 + i,
        });
        (Self { bounds, cells }, counters)
    }

    #[inline]
    pub fn observe(&self, v: f64) {
        self.observe_at(shard(), v);
    }

    /// `observe` with the shard already looked up (several writes of one event).
    #[inline]
    pub fn observe_at(&self, shard: Shard, v: f64) {
        // A linear scan from the smallest bound: most observations (µs to ms) land in the
        // first few buckets, where it stops after one or two predictable comparisons; a binary
        // search always takes four or five unpredictable ones.
        let bucket = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.cells.add(shard.0, bucket, 1);
        self.cells.add_f64(shard.0, self.bounds.len() + 1, v);
    }

    /// (sum, count, non-cumulative bucket counts including `+Inf`).
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let buckets = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, bound)| {
                let n = self.cells.sum(i);
                count += n;
                (bound, n)
            })
            .collect();
        (self.cells.sum_f64(self.bounds.len() + 1), count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::scrape::Scrape;

    #[test]
    fn counts_from_more_threads_than_shards_add_up_exactly() {
        let c = ShardedCounter::default();
        let h = ShardedHistogram::new(&[0.5]);
        // More threads than shards, all alive at once, so some must share the atomic row.
        let threads = SHARDS * 2 + 3;
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (c, h, barrier) = (c.clone(), h.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..1000 {
                        c.inc();
                        h.observe(if (i + t) % 2 == 0 { 0.25 } else { 1.0 });
                    }
                    barrier.wait();
                })
            })
            .collect();
        for t in handles {
            t.join().unwrap();
        }
        let n = (threads * 1000) as u64;
        assert_eq!(c.get(), n);
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, n);
        assert_eq!(buckets[0].1 + buckets[1].1, n);
        let expected: f64 = (0..threads)
            .flat_map(|t| (0..1000).map(move |i| if (i + t) % 2 == 0 { 0.25 } else { 1.0 }))
            .sum();
        assert!((sum - expected).abs() < 1e-6, "{sum} vs {expected}");
    }

    #[test]
    fn counters_sharing_a_histograms_cells_count_apart_from_it() {
        static BOUNDS: [f64; 2] = [0.1, 1.0];
        let (h, [a, b]) = ShardedHistogram::with_counters(&BOUNDS);
        h.observe(0.5);
        h.observe(5.0);
        a.inc_by(3);
        b.inc();
        let (sum, count, _) = h.snapshot();
        assert_eq!((count, a.get(), b.get()), (2, 3, 1));
        assert!((sum - 5.5).abs() < 1e-9);
    }

    #[test]
    fn a_shard_handed_back_by_an_exited_thread_keeps_its_counts() {
        let c = ShardedCounter::default();
        for _ in 0..(SHARDS * 3) {
            let c = c.clone();
            std::thread::spawn(move || c.inc_by(2)).join().unwrap();
        }
        assert_eq!(c.get(), (SHARDS * 3 * 2) as u64);
    }

    #[test]
    fn encodes_like_a_prometheus_counter_and_histogram() {
        static BOUNDS: [f64; 2] = [0.1, 1.0];
        let h = ShardedHistogram::new(&BOUNDS);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let c = ShardedCounter::default();
        c.inc_by(7);
        let mut r = Registry::default();
        r.register("t", "test", h);
        r.register("c", "test", c);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        let s = Scrape::parse(&out).unwrap();
        let le = |b: &str| s.sum("t_bucket", &[("le", b)]);
        assert_eq!((le("0.1"), le("1.0"), le("+Inf")), (2.0, 3.0, 4.0), "{out}");
        assert!((s.sum("t_count", &[]) - 4.0).abs() < 1e-9);
        assert!((s.sum("t_sum", &[]) - 3.65).abs() < 1e-9);
        assert!((s.sum("c_total", &[]) - 7.0).abs() < 1e-9, "{out}");
    }
}
