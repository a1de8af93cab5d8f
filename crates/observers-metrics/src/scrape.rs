//! Reading a `/metrics` exposition back: a small parser of the Prometheus/OpenMetrics text
//! format and a summary of the figures an operator looks at first. `observers metrics` and
//! `/status` use it, and so do the tests that compare counters with what happened.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of an exposition, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

/// A line that is not a valid sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ParseError {
    pub line: usize,
    pub problem: String,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut samples = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line).map_err(|problem| ParseError {
                line: i + 1,
                problem,
            })?);
        }
        Ok(Self { samples })
    }

    /// Samples of `name` whose labels include every `(key, value)` of `with`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && with
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// The sum of matching samples (0 when none).
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.select(name, with).map(|s| s.value).sum()
    }

    /// Whether any sample of the family `family` (a name prefix up to `_total`, `_bucket`, ...)
    /// exists.
    pub fn has_family(&self, family: &str) -> bool {
        self.samples.iter().any(|s| {
            s.name == family
                || s.name
                    .strip_prefix(family)
                    .is_some_and(|rest| SUFFIXES.contains(&rest))
        })
    }

    /// The `q` quantile (0..1) of a histogram (summed over all label sets matching `with`),
    /// estimated by linear interpolation within buckets as PromQL's `histogram_quantile` does.
    pub fn quantile(&self, histogram: &str, q: f64, with: &[(&str, &str)]) -> Option<f64> {
        quantile_of(&self.buckets(histogram, with)?, q)
    }

    /// A histogram's cumulative buckets `(upper bound, count)`, ascending, summed over all
    /// label sets matching `with`; `None` when a bucket's bound is unreadable.
    pub fn buckets(&self, histogram: &str, with: &[(&str, &str)]) -> Option<Vec<(f64, f64)>> {
        let bucket_name = format!("{histogram}_bucket");
        let mut buckets: BTreeMap<OrderedF64, f64> = BTreeMap::new();
        for s in self.select(&bucket_name, with) {
            let le = s.labels.get("le")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            *buckets.entry(OrderedF64(bound)).or_default() += s.value;
        }
        Some(buckets.into_iter().map(|(b, c)| (b.0, c)).collect())
    }
}

/// The `q` quantile of cumulative buckets `(upper bound, count)` in ascending order (as
/// [`Scrape::buckets`] gives them, or their difference between two scrapes); `None` when empty.
pub fn quantile_of(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last().map(|b| b.1)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(prev_bound);
            }
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count) / in_bucket
            } else {
                1.0
            };
            return Some(prev_bound + (bound - prev_bound) * frac);
        }
        prev_bound = bound;
        prev_count = count;
    }
    Some(prev_bound)
}

const SUFFIXES: [&str; 6] = ["_total", "_bucket", "_count", "_sum", "_created", "_info"];

#[derive(Debug, Clone, Copy)]
struct OrderedF64(f64);
impl PartialEq for OrderedF64 {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for OrderedF64 {}
impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("missing metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("`{name}` has no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .map_err(|_| format!("`{name}` has the invalid value `{v}`"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let key = s[..eq].trim().to_owned();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label `{key}` has an unquoted value"));
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(eq + 1 + i + 1);
                break;
            } else {
                value.push(c);
            }
        }
        let end = end.ok_or_else(|| format!("label `{key}` has an unterminated value"))?;
        labels.insert(key, value);
        s = &s[end..];
    }
}

/// The figures of seed 003's status tree that a scrape can give.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSummary {
    pub events_processed: f64,
    /// Events with at least one action that failed for good.
    pub events_failed: f64,
    pub events_deduplicated: f64,
    pub events_matched_none: f64,
    /// p50 and p99 of `observer_event_processing_duration_seconds`, in seconds.
    pub event_processing_p50_seconds: Option<f64>,
    pub event_processing_p99_seconds: Option<f64>,
    /// Actions by outcome (`success`, `dead_lettered`, ...).
    pub actions: BTreeMap<String, f64>,
    pub retries: f64,
    pub dlq_items_written: f64,
    pub dlq_pending: f64,
    pub checkpoint_saves: f64,
    pub listener_errors: f64,
    pub cutoff_lag_seconds: f64,
    pub source_backlog: f64,
    pub commit_to_dispatch_p99_seconds: Option<f64>,
    /// Endpoints whose breaker is not closed, with the state's name.
    pub breakers_not_closed: BTreeMap<String, String>,
    pub cache_hit_ratio: Option<f64>,
    pub fallback_active: Vec<String>,
    pub jobs_pending: f64,
}

impl MetricsSummary {
    pub fn from_scrape(s: &Scrape) -> Self {
        let mut actions = BTreeMap::new();
        for sample in s.select("observer_actions_executed_total", &[]) {
            if let Some(o) = sample.labels.get("outcome") {
                *actions.entry(o.clone()).or_default() += sample.value;
            }
        }
        let mut breakers_not_closed = BTreeMap::new();
        for sample in s.select("observer_circuit_breaker_state", &[]) {
            #[allow(clippy::cast_possible_truncation)] // the gauge holds 0, 1 or 2
            let state = match sample.value.round() as i64 {
                1 => "open",
                2 => "half_open",
                _ => continue,
            };
            if let Some(e) = sample.labels.get("endpoint") {
                breakers_not_closed.insert(e.clone(), state.to_owned());
            }
        }
        let hits = s.sum("observer_cache_hits_total", &[]);
        let misses = s.sum("observer_cache_misses_total", &[]);
        let cutoff = s
            .select("observer_cutoff_lag_seconds", &[])
            .map(|x| x.value)
            .fold(0.0, f64::max);
        Self {
            events_processed: s.sum("observer_events_processed_total", &[]),
            events_failed: s.sum("observer_events_failed_total", &[]),
            events_deduplicated: s.sum("observer_events_deduplicated_total", &[]),
            events_matched_none: s.sum("observer_observers_matched_zero_total", &[]),
            event_processing_p50_seconds: s.quantile(
                "observer_event_processing_duration_seconds",
                0.5,
                &[],
            ),
            event_processing_p99_seconds: s.quantile(
                "observer_event_processing_duration_seconds",
                0.99,
                &[],
            ),
            actions,
            retries: s.sum("observer_retries_total", &[]),
            dlq_items_written: s.sum("observer_dlq_items_total", &[]),
            dlq_pending: s.sum("observer_dlq_pending_items", &[]),
            checkpoint_saves: s.sum("observer_checkpoint_saves_total", &[]),
            listener_errors: s.sum("observer_listener_errors_total", &[]),
            cutoff_lag_seconds: cutoff,
            source_backlog: s.sum("observer_source_backlog", &[]),
            commit_to_dispatch_p99_seconds: s.quantile(
                "observer_commit_to_dispatch_seconds",
                0.99,
                &[],
            ),
            breakers_not_closed,
            cache_hit_ratio: (hits + misses > 0.0).then(|| hits / (hits + misses)),
            fallback_active: s
                .select("observer_fallback_active", &[])
                .filter(|x| x.value > 0.0)
                .filter_map(|x| x.labels.get("store").cloned())
                .collect(),
            jobs_pending: s.sum("observer_jobs_pending", &[]),
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact small values
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_values() {
        let s = Scrape::parse(
            "# TYPE a counter\na_total{x=\"1\",y=\"q\\\"uo\\\\te\"} 3\nb 2.5\nc_bucket{le=\"+Inf\"} 4\n# EOF\n",
        )
        .unwrap();
        assert_eq!(s.samples.len(), 3);
        assert_eq!(s.samples[0].labels["y"], "q\"uo\\te");
        assert_eq!(s.sum("a_total", &[("x", "1")]), 3.0);
        assert_eq!(s.sum("b", &[]), 2.5);
        assert!(s.has_family("a"));
        assert!(!s.has_family("zz"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = Scrape::parse("ok 1\nbroken{x=1} 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.problem.contains("unquoted"), "{e}");
    }

    #[test]
    fn quantile_interpolates_within_buckets() {
        let s = Scrape::parse(
            "h_bucket{le=\"0.1\"} 50\nh_bucket{le=\"1.0\"} 100\nh_bucket{le=\"+Inf\"} 100\n",
        )
        .unwrap();
        let p50 = s.quantile("h", 0.5, &[]).unwrap();
        assert!((p50 - 0.1).abs() < 1e-9, "{p50}");
        let p75 = s.quantile("h", 0.75, &[]).unwrap();
        assert!((p75 - 0.55).abs() < 1e-9, "{p75}");
        assert_eq!(s.quantile("missing", 0.5, &[]), None);
    }
}
