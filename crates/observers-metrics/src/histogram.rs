//! A lock-free histogram with fixed buckets: one relaxed `fetch_add` on the bucket and a
//! compare-and-swap on the sum per observation, instead of prometheus-client's mutex. It
//! encodes as an ordinary OpenMetrics histogram; `_count` is the sum of the buckets read at
//! encoding time, so it always equals the `+Inf` bucket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// One per bound plus `+Inf`; not cumulative.
    buckets: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

/// Clones share the same series (as prometheus-client's metrics do).
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<Inner>,
}

impl AtomicHistogram {
    /// `bounds` must be sorted ascending and finite.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            inner: Arc::new(Inner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.inner.bounds.partition_point(|b| *b < v);
        if let Some(b) = self.inner.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut count = 0;
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.inner.buckets.iter())
            .map(|(bound, n)| {
                let n = n.load(Ordering::Relaxed);
                count += n;
                (bound, n)
            })
            .collect();
        let sum = f64::from_bits(self.inner.sum.load(Ordering::Relaxed));
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
    fn encodes_like_a_prometheus_histogram() {
        static BOUNDS: [f64; 2] = [0.1, 1.0];
        let h = AtomicHistogram::new(&BOUNDS);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let mut r = Registry::default();
        r.register("t", "test", h);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        let s = Scrape::parse(&out).unwrap();
        let le = |b: &str| s.sum("t_bucket", &[("le", b)]);
        assert_eq!((le("0.1"), le("1.0"), le("+Inf")), (2.0, 3.0, 4.0), "{out}");
        assert!((s.sum("t_count", &[]) - 4.0).abs() < 1e-9);
        assert!((s.sum("t_sum", &[]) - 3.65).abs() < 1e-9);
    }
}
