//! The searchable audit trail of processed events: the `SearchBackend` trait, the query and
//! result types the API and CLI exchange, a bounded in-memory index and a no-op backend.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lock;
use crate::error::Result;
use crate::event::{EntityEvent, EventKind};

/// Results per page when the query does not say.
pub const DEFAULT_PER_PAGE: u32 = 20;
/// The largest page a query may ask for.
pub const MAX_PER_PAGE: u32 = 1000;
/// Matches counted exactly (total and facets) when the query does not say; beyond this the
/// total is reported as this bound with `total_exact: false` (as Elasticsearch's
/// `track_total_hits` does) and facets count the newest this-many matches.
pub const DEFAULT_EXACT_UP_TO: u64 = 10_000;

/// One processed event as the audit trail keeps it: the change plus what the observers did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedEvent {
    pub event_id: i64,
    pub entity_type: String,
    pub entity_id: String,
    pub event_type: EventKind,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    pub timestamp: DateTime<Utc>,
    /// The row as it is now (`after`, or `before` for a delete).
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub matched_observers: Vec<String>,
    #[serde(default)]
    pub successful_actions: Vec<String>,
    #[serde(default)]
    pub failed_actions: Vec<String>,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub duration_ms: u64,
}

impl IndexedEvent {
    /// The event with no processing outcome yet; fill the outcome fields in afterwards.
    pub fn from_event(event: &EntityEvent) -> Self {
        Self {
            event_id: event.id,
            entity_type: event.entity_type.clone(),
            entity_id: event.entity_id.clone(),
            event_type: event.kind,
            tenant_id: event.tenant_id.clone(),
            user_id: event.user_id.clone(),
            timestamp: event.timestamp,
            data: event.current_row().cloned().unwrap_or(Value::Null),
            matched_observers: Vec::new(),
            successful_actions: Vec::new(),
            failed_actions: Vec::new(),
            errors: Vec::new(),
            duration_ms: 0,
        }
    }

    /// The text full-text search looks at, space-separated: entity type and id, event type,
    /// tenant, user, observer and action names, error messages, then every scalar value in
    /// `data` (object keys are left out: every row of a table has the same ones).
    pub fn text(&self) -> String {
        let mut parts: Vec<&str> =
            vec![&self.entity_type, &self.entity_id, self.event_type.as_str()];
        parts.extend(self.tenant_id.as_deref());
        parts.extend(self.user_id.as_deref());
        for list in [
            &self.matched_observers,
            &self.successful_actions,
            &self.failed_actions,
            &self.errors,
        ] {
            parts.extend(list.iter().map(String::as_str));
        }
        let mut text = parts.join(" ");
        push_scalars(&self.data, &mut text);
        text
    }
}

fn push_scalars(value: &Value, out: &mut String) {
    let mut push = |s: &str| {
        if !s.is_empty() {
            out.push(' ');
            out.push_str(s);
        }
    };
    match value {
        Value::Null => {}
        Value::String(s) => push(s),
        Value::Bool(b) => push(if *b { "true" } else { "false" }),
        Value::Number(n) => push(&n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| push_scalars(v, out)),
        Value::Object(map) => map.values().for_each(|v| push_scalars(v, out)),
    }
}

/// What to look for. Every field set must match; `from` is inclusive, `to` exclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchQuery {
    /// Words; each must be a prefix of a word of [`IndexedEvent::text`], case-insensitively
    /// (words are the runs of letters and digits: see [`search_tokens`]). Every backend
    /// implements these semantics.
    pub text: Option<String>,
    pub entity_type: Option<String>,
    pub event_type: Option<EventKind>,
    pub entity_id: Option<String>,
    pub tenant_id: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// 1-based; 0 reads as 1.
    pub page: u32,
    /// At most [`MAX_PER_PAGE`]; 0 returns only the total (and facets).
    pub per_page: u32,
    /// Whether to count matches by entity type and event type.
    pub facets: bool,
    /// Count at most this many matches (at least 1): when more match, `total` is this bound
    /// with `total_exact: false`, and facets count the newest this-many matches only.
    pub exact_up_to: u64,
}

impl Default for SearchQuery {
    fn default() -> Self {
        Self {
            text: None,
            entity_type: None,
            event_type: None,
            entity_id: None,
            tenant_id: None,
            from: None,
            to: None,
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            facets: false,
            exact_up_to: DEFAULT_EXACT_UP_TO,
        }
    }
}

impl SearchQuery {
    /// Everything, first page.
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    #[must_use]
    pub fn with_entity_type(mut self, entity_type: impl Into<String>) -> Self {
        self.entity_type = Some(entity_type.into());
        self
    }

    #[must_use]
    pub fn with_event_type(mut self, kind: EventKind) -> Self {
        self.event_type = Some(kind);
        self
    }

    #[must_use]
    pub fn with_entity_id(mut self, entity_id: impl Into<String>) -> Self {
        self.entity_id = Some(entity_id.into());
        self
    }

    #[must_use]
    pub fn with_tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Events at or after `from`.
    #[must_use]
    pub fn since(mut self, from: DateTime<Utc>) -> Self {
        self.from = Some(from);
        self
    }

    /// Events strictly before `to`.
    #[must_use]
    pub fn until(mut self, to: DateTime<Utc>) -> Self {
        self.to = Some(to);
        self
    }

    #[must_use]
    pub fn with_page(mut self, page: u32) -> Self {
        self.page = page.max(1);
        self
    }

    #[must_use]
    pub fn with_per_page(mut self, per_page: u32) -> Self {
        self.per_page = per_page.min(MAX_PER_PAGE);
        self
    }

    #[must_use]
    pub fn with_facets(mut self) -> Self {
        self.facets = true;
        self
    }

    /// Counts exactly up to `n` matches (see [`SearchQuery::exact_up_to`]).
    #[must_use]
    pub fn with_exact_up_to(mut self, n: u64) -> Self {
        self.exact_up_to = n.max(1);
        self
    }

    /// The counting bound actually used (at least 1).
    pub fn effective_exact_up_to(&self) -> u64 {
        self.exact_up_to.max(1)
    }

    /// The page size actually used (deserialized queries are not clamped on the way in).
    pub fn effective_per_page(&self) -> u32 {
        self.per_page.min(MAX_PER_PAGE)
    }

    /// How many matches precede the requested page.
    pub fn offset(&self) -> u64 {
        u64::from(self.page.max(1) - 1) * u64::from(self.effective_per_page())
    }

    /// The full-text terms: the words of `text`, lowercased (see [`search_tokens`]).
    pub fn terms(&self) -> Vec<String> {
        search_tokens(self.text.as_deref().unwrap_or_default())
    }

    /// Whether the event passes every filter except the text terms.
    pub fn matches_filters(&self, e: &IndexedEvent) -> bool {
        fn eq(want: Option<&str>, have: &str) -> bool {
            want.is_none_or(|w| w == have)
        }
        eq(self.entity_type.as_deref(), &e.entity_type)
            && eq(self.entity_id.as_deref(), &e.entity_id)
            && self.event_type.is_none_or(|k| k == e.event_type)
            && self
                .tenant_id
                .as_ref()
                .is_none_or(|t| e.tenant_id.as_ref() == Some(t))
            && self.from.is_none_or(|from| e.timestamp >= from)
            && self.to.is_none_or(|to| e.timestamp < to)
    }

    /// Whether the event matches the whole query, text included.
    pub fn matches(&self, e: &IndexedEvent) -> bool {
        self.matches_filters(e) && terms_match(&self.terms(), &search_tokens(&e.text()))
    }
}

/// The words full-text search works on: maximal runs of letters and digits, lowercased, in
/// order (`"[OBS-5XX] user2@Example.com"` gives `obs 5xx user2 example com`). Backends index
/// these words and match each query word as a prefix of an indexed word.
pub fn search_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn terms_match(terms: &[String], words: &[String]) -> bool {
    terms
        .iter()
        .all(|t| words.iter().any(|w| w.starts_with(t.as_str())))
}

/// Match counts by entity type and by event type, over every match (not only the page), or
/// over the newest [`SearchQuery::exact_up_to`] matches when more match
/// (`SearchResults::total_exact` is then false).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facets {
    pub entity_types: BTreeMap<String, u64>,
    pub event_types: BTreeMap<String, u64>,
}

impl Facets {
    fn count(&mut self, e: &IndexedEvent) {
        *self.entity_types.entry(e.entity_type.clone()).or_default() += 1;
        *self
            .event_types
            .entry(e.event_type.as_str().to_owned())
            .or_default() += 1;
    }
}

/// One page of matches, newest first, with the total number of matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// The number of matches, or [`SearchQuery::exact_up_to`] when more match.
    pub total: u64,
    /// False when more than [`SearchQuery::exact_up_to`] events match: `total` is then a lower
    /// bound and facets cover the newest `total` matches only.
    #[serde(default = "yes")]
    pub total_exact: bool,
    pub results: Vec<IndexedEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facets: Option<Facets>,
}

impl Default for SearchResults {
    fn default() -> Self {
        Self {
            total: 0,
            total_exact: true,
            results: Vec::new(),
            facets: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Where processed events are indexed for search. Indexing an event whose `event_id` is
/// already indexed replaces it.
#[async_trait]
pub trait SearchBackend: Send + Sync {
    async fn index(&self, events: &[IndexedEvent]) -> Result<()>;
    /// Matches newest first (timestamp, then event id), paged.
    async fn search(&self, q: &SearchQuery) -> Result<SearchResults>;
    /// Removes events with a timestamp before `cutoff` (retention); returns how many.
    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64>;
    /// [`delete_older_than`](Self::delete_older_than), calling `on_batch` with what each batch
    /// removed (progress output); a backend that deletes in one request reports once.
    async fn delete_older_than_reporting(
        &self,
        cutoff: DateTime<Utc>,
        on_batch: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64> {
        let n = self.delete_older_than(cutoff).await?;
        on_batch(n);
        Ok(n)
    }
    async fn health(&self) -> Result<()>;
}

struct Stored {
    event: IndexedEvent,
    /// The words of `event.text()`, sorted and deduplicated once at index time.
    words: Vec<String>,
}

#[derive(Default)]
struct SearchState {
    by_time: BTreeMap<(DateTime<Utc>, i64), Stored>,
    by_id: HashMap<i64, DateTime<Utc>>,
}

impl SearchState {
    fn insert(&mut self, event: IndexedEvent) {
        if let Some(old) = self.by_id.insert(event.event_id, event.timestamp) {
            self.by_time.remove(&(old, event.event_id));
        }
        let mut words = search_tokens(&event.text());
        words.sort_unstable();
        words.dedup();
        self.by_time
            .insert((event.timestamp, event.event_id), Stored { event, words });
    }
}

/// A bounded in-memory index: when full, the oldest events (by timestamp) are dropped.
/// Searches scan the matching time range.
pub struct MemorySearchBackend {
    state: Mutex<SearchState>,
    max_events: usize,
}

impl std::fmt::Debug for MemorySearchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySearchBackend")
            .field("max_events", &self.max_events)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemorySearchBackend {
    /// An index holding at most `max_events` (at least one).
    pub fn new(max_events: usize) -> Self {
        Self {
            state: Mutex::new(SearchState::default()),
            max_events: max_events.max(1),
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.state).by_time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SearchBackend for MemorySearchBackend {
    async fn index(&self, events: &[IndexedEvent]) -> Result<()> {
        let mut state = lock(&self.state);
        for event in events {
            state.insert(event.clone());
        }
        while state.by_time.len() > self.max_events {
            if let Some(((_, id), _)) = state.by_time.pop_first() {
                state.by_id.remove(&id);
            }
        }
        Ok(())
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchResults> {
        let mut facets = q.facets.then(Facets::default);
        if let (Some(from), Some(to)) = (q.from, q.to)
            && from >= to
        {
            return Ok(SearchResults {
                facets,
                ..SearchResults::default()
            });
        }
        let lower = q
            .from
            .map_or(Bound::Unbounded, |from| Bound::Included((from, i64::MIN)));
        let upper =
            q.to.map_or(Bound::Unbounded, |to| Bound::Excluded((to, i64::MIN)));
        let terms = q.terms();
        let offset = q.offset();
        let per_page = u64::from(q.effective_per_page());
        let cap = q.effective_exact_up_to();

        let state = lock(&self.state);
        let mut total = 0_u64;
        let mut total_exact = true;
        let mut results = Vec::new();
        let matching = state
            .by_time
            .range((lower, upper))
            .rev()
            .map(|(_, stored)| stored)
            .filter(|s| q.matches_filters(&s.event) && terms_match(&terms, &s.words));
        for stored in matching {
            if (offset..offset.saturating_add(per_page)).contains(&total) {
                results.push(stored.event.clone());
            }
            if total < cap {
                if let Some(f) = facets.as_mut() {
                    f.count(&stored.event);
                }
            } else {
                total_exact = false;
            }
            total += 1;
            if !total_exact && total >= offset.saturating_add(per_page) {
                break;
            }
        }
        Ok(SearchResults {
            total: total.min(cap),
            total_exact,
            results,
            facets,
        })
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let mut state = lock(&self.state);
        let kept = state.by_time.split_off(&(cutoff, i64::MIN));
        let dropped = std::mem::replace(&mut state.by_time, kept);
        for (_, id) in dropped.keys() {
            state.by_id.remove(id);
        }
        Ok(u64::try_from(dropped.len()).unwrap_or(u64::MAX))
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

/// `search.backend = "none"`: indexing drops events and every search is empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopSearchBackend;

#[async_trait]
impl SearchBackend for NoopSearchBackend {
    async fn index(&self, _events: &[IndexedEvent]) -> Result<()> {
        Ok(())
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchResults> {
        Ok(SearchResults {
            facets: q.facets.then(Facets::default),
            ..SearchResults::default()
        })
    }

    async fn delete_older_than(&self, _cutoff: DateTime<Utc>) -> Result<u64> {
        Ok(0)
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, minute, 0).unwrap()
    }

    fn ev(id: i64, entity_type: &str, kind: EventKind, minute: u32) -> IndexedEvent {
        let mut e = IndexedEvent::from_event(&EntityEvent::new(
            id,
            entity_type,
            format!("{entity_type}-{id}"),
            kind,
            None,
            Some(json!({"email": format!("user{id}@example.com"), "total": id * 10})),
        ));
        e.timestamp = at(minute);
        e
    }

    fn ids(r: &SearchResults) -> Vec<i64> {
        r.results.iter().map(|e| e.event_id).collect()
    }

    async fn sample() -> MemorySearchBackend {
        let s = MemorySearchBackend::new(100);
        let mut failed = ev(3, "order", EventKind::Update, 3);
        failed.failed_actions = vec!["webhook".into()];
        failed.errors = vec!["[OBS-WEBHOOK-5XX] Gateway Timeout from hooks.example.com".into()];
        failed.tenant_id = Some("acme".into());
        s.index(&[
            ev(1, "user", EventKind::Insert, 1),
            ev(2, "user", EventKind::Update, 2),
            failed,
            ev(4, "order", EventKind::Insert, 4),
            ev(5, "user", EventKind::Delete, 5),
        ])
        .await
        .unwrap();
        s
    }

    #[test]
    fn text_covers_metadata_outcome_and_data_values() {
        let mut e = ev(7, "user", EventKind::Update, 0);
        e.user_id = Some("admin-1".into());
        e.matched_observers = vec!["notify-sales".into()];
        e.errors = vec!["SMTP refused".into()];
        let text = e.text();
        for part in [
            "user",
            "user-7",
            "update",
            "admin-1",
            "notify-sales",
            "SMTP refused",
            "user7@example.com",
            "70",
        ] {
            assert!(text.contains(part), "`{part}` missing from {text:?}");
        }
        assert!(!text.contains("email"), "keys are not indexed: {text:?}");
    }

    #[tokio::test]
    async fn filters_and_newest_first_order() {
        let s = sample().await;
        let cases: Vec<(SearchQuery, Vec<i64>)> = vec![
            (SearchQuery::new(), vec![5, 4, 3, 2, 1]),
            (SearchQuery::new().with_entity_type("user"), vec![5, 2, 1]),
            (
                SearchQuery::new().with_event_type(EventKind::Insert),
                vec![4, 1],
            ),
            (SearchQuery::new().with_entity_id("order-4"), vec![4]),
            (SearchQuery::new().with_tenant("acme"), vec![3]),
            (SearchQuery::new().since(at(2)).until(at(4)), vec![3, 2]),
            (SearchQuery::new().since(at(4)).until(at(2)), vec![]),
            (SearchQuery::new().with_text("GATEWAY timeout"), vec![3]),
            (SearchQuery::new().with_text("timeout insert"), vec![]),
            (SearchQuery::new().with_text("user2@EXAMPLE"), vec![2]),
            (SearchQuery::new().with_text("gate TIME"), vec![3]),
            (SearchQuery::new().with_text("ateway"), vec![]),
            (
                SearchQuery::new()
                    .with_entity_type("user")
                    .with_text("delete"),
                vec![5],
            ),
        ];
        for (q, want) in cases {
            let r = s.search(&q).await.unwrap();
            assert_eq!(ids(&r), want, "{q:?}");
            assert_eq!(r.total, want.len() as u64);
            assert!(q.facets || r.facets.is_none());
            for e in &r.results {
                assert!(q.matches(e), "public matcher agrees for {q:?}");
            }
        }
    }

    #[tokio::test]
    async fn pages_and_facets_cover_all_matches() {
        let s = sample().await;
        let q = SearchQuery::new()
            .with_per_page(2)
            .with_page(2)
            .with_facets();
        let r = s.search(&q).await.unwrap();
        assert_eq!(ids(&r), vec![3, 2]);
        assert_eq!(r.total, 5);
        let facets = r.facets.unwrap();
        assert_eq!(
            facets.entity_types,
            BTreeMap::from([("order".into(), 2), ("user".into(), 3)])
        );
        assert_eq!(
            facets.event_types,
            BTreeMap::from([
                ("delete".into(), 1),
                ("insert".into(), 2),
                ("update".into(), 2)
            ])
        );
        let beyond = s.search(&SearchQuery::new().with_page(9)).await.unwrap();
        assert_eq!((beyond.total, beyond.results.len()), (5, 0));
        let counts_only = s
            .search(&SearchQuery::new().with_per_page(0))
            .await
            .unwrap();
        assert_eq!((counts_only.total, counts_only.results.len()), (5, 0));
    }

    #[tokio::test]
    async fn totals_and_facets_are_exact_up_to_the_bound() {
        let s = sample().await;
        let q = SearchQuery::new()
            .with_facets()
            .with_per_page(2)
            .with_page(2)
            .with_exact_up_to(3);
        let r = s.search(&q).await.unwrap();
        assert_eq!((r.total, r.total_exact, ids(&r)), (3, false, vec![3, 2]));
        // Facets count the newest three matches: 5 (user delete), 4 and 3 (orders).
        let facets = r.facets.unwrap();
        assert_eq!(
            facets.entity_types,
            BTreeMap::from([("order".into(), 2), ("user".into(), 1)])
        );
        assert_eq!(facets.event_types.values().sum::<u64>(), 3);
        let wire = serde_json::to_value(SearchResults {
            total_exact: false,
            ..SearchResults::default()
        })
        .unwrap();
        assert_eq!(
            wire,
            json!({"total": 0, "total_exact": false, "results": []})
        );
        let exact = s
            .search(&SearchQuery::new().with_exact_up_to(5))
            .await
            .unwrap();
        assert_eq!((exact.total, exact.total_exact), (5, true));
    }

    #[test]
    fn query_defaults_clamps_and_wire_form() {
        let q: SearchQuery =
            serde_json::from_value(json!({"entity_type": "user", "per_page": 5000})).unwrap();
        assert_eq!(
            (q.page, q.per_page, q.effective_per_page()),
            (1, 5000, MAX_PER_PAGE)
        );
        assert_eq!(
            SearchQuery::new().with_per_page(5000).per_page,
            MAX_PER_PAGE
        );
        assert_eq!(SearchQuery::new().with_page(0).page, 1);
        assert_eq!(
            SearchQuery::new().with_page(3).with_per_page(20).offset(),
            40
        );
        let q: SearchQuery =
            serde_json::from_value(json!({"event_type": "delete", "page": 0})).unwrap();
        assert_eq!((q.event_type, q.offset()), (Some(EventKind::Delete), 0));
        let results = SearchResults::default();
        assert_eq!(
            serde_json::to_value(&results).unwrap(),
            json!({"total": 0, "total_exact": true, "results": []})
        );
    }

    #[tokio::test]
    async fn bounded_reindex_replaces_and_retention() {
        let s = MemorySearchBackend::new(3);
        for m in 1..=5 {
            s.index(&[ev(i64::from(m), "user", EventKind::Insert, m)])
                .await
                .unwrap();
        }
        // An event older than everything kept is dropped at once.
        s.index(&[ev(0, "user", EventKind::Insert, 0)])
            .await
            .unwrap();
        assert_eq!(
            ids(&s.search(&SearchQuery::new()).await.unwrap()),
            vec![5, 4, 3]
        );
        // Re-indexing event 4 with its outcome replaces it, even at a new timestamp.
        let mut again = ev(4, "user", EventKind::Insert, 6);
        again.errors = vec!["late failure".into()];
        s.index(&[again]).await.unwrap();
        assert_eq!(s.len(), 3);
        let r = s
            .search(&SearchQuery::new().with_text("late"))
            .await
            .unwrap();
        assert_eq!(ids(&r), vec![4]);
        assert_eq!(s.delete_older_than(at(5)).await.unwrap(), 1);
        assert_eq!(
            ids(&s.search(&SearchQuery::new()).await.unwrap()),
            vec![4, 5]
        );
        assert_eq!(s.delete_older_than(at(5)).await.unwrap(), 0);
        s.health().await.unwrap();
    }

    #[tokio::test]
    async fn noop_backend_drops_everything() {
        let s = NoopSearchBackend;
        s.index(&[ev(1, "user", EventKind::Insert, 1)])
            .await
            .unwrap();
        let r = s.search(&SearchQuery::new().with_facets()).await.unwrap();
        assert_eq!(r.total, 0);
        assert!(r.results.is_empty());
        assert_eq!(r.facets, Some(Facets::default()));
        assert_eq!(s.delete_older_than(at(59)).await.unwrap(), 0);
        s.health().await.unwrap();
    }
}
