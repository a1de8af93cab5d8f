//! The backend suite, table-driven on a generated data set: every backend returns what the
//! reference model (core's `SearchQuery::matches`, newest first) says, with correct totals,
//! pages and facets. Runs against the in-memory backend and PostgreSQL.

use std::sync::Arc;

use observers_core::EventKind;
use observers_core::stores::search::{
    Facets, IndexedEvent, MemorySearchBackend, SearchBackend, SearchQuery,
};
use observers_search::PostgresSearchBackend;
use sqlx::PgPool;

use crate::support::{at, generated, generated_set};

const N: i64 = 300;

/// What a backend must answer: filter with the public matcher, newest first, then page; the
/// total and facets count the newest `exact_up_to` matches, `total_exact` says if that was all.
fn reference(all: &[IndexedEvent], q: &SearchQuery) -> (u64, bool, Vec<i64>, Facets) {
    let mut hits: Vec<&IndexedEvent> = all.iter().filter(|e| q.matches(e)).collect();
    hits.sort_by_key(|e| std::cmp::Reverse((e.timestamp, e.event_id)));
    let counted = hits
        .len()
        .min(usize::try_from(q.effective_exact_up_to()).unwrap());
    let mut facets = Facets::default();
    for e in &hits[..counted] {
        *facets
            .entity_types
            .entry(e.entity_type.clone())
            .or_default() += 1;
        *facets
            .event_types
            .entry(e.event_type.as_str().to_owned())
            .or_default() += 1;
    }
    let ids = hits
        .iter()
        .skip(usize::try_from(q.offset()).unwrap())
        .take(q.effective_per_page() as usize)
        .map(|e| e.event_id)
        .collect();
    (counted as u64, counted == hits.len(), ids, facets)
}

fn queries() -> Vec<(&'static str, SearchQuery)> {
    let q = SearchQuery::new;
    vec![
        ("everything", q()),
        ("entity type", q().with_entity_type("Order")),
        (
            "entity type + facets",
            q().with_entity_type("User").with_facets(),
        ),
        (
            "unknown entity type",
            q().with_entity_type("Nope").with_facets(),
        ),
        (
            "event type",
            q().with_event_type(EventKind::Delete).with_facets(),
        ),
        ("entity id", q().with_entity_id("7")),
        (
            "entity type + id",
            q().with_entity_type("Invoice").with_entity_id("11"),
        ),
        ("tenant", q().with_tenant("acme").with_facets()),
        ("time range", q().since(at(20)).until(at(40))),
        ("empty time range", q().since(at(40)).until(at(20))),
        ("since only", q().since(at(140)).with_facets()),
        ("full text word", q().with_text("refunded")),
        (
            "full text two words, any case",
            q().with_text("GATEWAY timeout").with_facets(),
        ),
        ("full text prefix", q().with_text("gate")),
        ("full text email", q().with_text("customer12@example.com")),
        ("full text observer", q().with_text("notify-invoice")),
        ("full text no match", q().with_text("zebra")),
        ("full text number", q().with_text("363")),
        (
            "text + entity + tenant",
            q().with_text("paid")
                .with_entity_type("Order")
                .with_tenant("globex"),
        ),
        (
            "full text common word, paged",
            q().with_text("example")
                .with_per_page(5)
                .with_page(2)
                .with_facets(),
        ),
        (
            "text + filter without matches",
            q().with_text("zebra").with_tenant("acme").with_facets(),
        ),
        (
            "text + filter, beyond the last page",
            q().with_text("paid")
                .with_entity_type("Order")
                .with_per_page(10)
                .with_page(9)
                .with_facets(),
        ),
        (
            "page 2 of 7",
            q().with_per_page(7).with_page(2).with_facets(),
        ),
        ("last partial page", q().with_per_page(40).with_page(8)),
        (
            "beyond the last page",
            q().with_per_page(50).with_page(99).with_facets(),
        ),
        ("counts only", q().with_per_page(0).with_facets()),
        (
            "paged entity + text",
            q().with_entity_type("User")
                .with_text("example")
                .with_per_page(9)
                .with_page(3)
                .with_facets(),
        ),
    ]
}

pub async fn searches_match_the_reference(backend: Arc<dyn SearchBackend>) {
    let all = generated_set(N);
    // Indexed in several batches, one of them re-indexing events with the same content.
    for chunk in all.chunks(70) {
        backend.index(chunk).await.unwrap();
    }
    backend.index(&all[10..20]).await.unwrap();
    for (name, q) in queries() {
        let (total, exact, ids, facets) = reference(&all, &q);
        let r = backend.search(&q).await.unwrap();
        let got: Vec<i64> = r.results.iter().map(|e| e.event_id).collect();
        assert_eq!(r.total, total, "{name}: total");
        assert!(exact, "{name}: the data set is under the default bound");
        assert_eq!(r.total_exact, exact, "{name}: total_exact");
        assert_eq!(got, ids, "{name}: page");
        assert_eq!(r.facets, q.facets.then_some(facets), "{name}: facets");
        for e in &r.results {
            assert_eq!(
                e,
                &all[usize::try_from(e.event_id - 1).unwrap()],
                "{name}: round trip"
            );
        }
    }
    // The table is not vacuous.
    let r = backend
        .search(&SearchQuery::new().with_text("gateway"))
        .await
        .unwrap();
    assert!(r.total > 10 && r.total < 100, "{}", r.total);
}

/// With a small `exact_up_to`, totals stop at the bound (flagged inexact) and facets count the
/// newest matches only, while pages are still exact. Elasticsearch counts exactly (not run).
pub async fn counts_are_exact_up_to_the_bound(backend: Arc<dyn SearchBackend>) {
    let all = generated_set(N);
    backend.index(&all).await.unwrap();
    let mut capped = 0;
    for (name, q) in queries() {
        for bound in [1, 17, 150] {
            let q = q.clone().with_exact_up_to(bound);
            let (total, exact, ids, facets) = reference(&all, &q);
            let r = backend.search(&q).await.unwrap();
            let got: Vec<i64> = r.results.iter().map(|e| e.event_id).collect();
            assert_eq!(
                (r.total, r.total_exact),
                (total, exact),
                "{name} up to {bound}: total"
            );
            assert_eq!(got, ids, "{name} up to {bound}: page");
            assert_eq!(
                r.facets,
                q.facets.then_some(facets),
                "{name} up to {bound}: facets"
            );
            capped += usize::from(!exact && q.facets);
        }
    }
    assert!(capped > 10, "the bound is exercised with facets: {capped}");
}

pub async fn paging_covers_every_match_once(backend: Arc<dyn SearchBackend>) {
    let all = generated_set(N);
    backend.index(&all).await.unwrap();
    let base = SearchQuery::new()
        .with_entity_type("Order")
        .with_per_page(13);
    let total = backend.search(&base).await.unwrap().total;
    let mut seen = Vec::new();
    for page in 1.. {
        let r = backend.search(&base.clone().with_page(page)).await.unwrap();
        assert_eq!(r.total, total);
        if r.results.is_empty() {
            break;
        }
        seen.extend(r.results.iter().map(|e| e.event_id));
    }
    let mut want: Vec<i64> = all
        .iter()
        .filter(|e| e.entity_type == "Order")
        .map(|e| e.event_id)
        .collect();
    want.reverse();
    assert_eq!(seen.len() as u64, total);
    assert_eq!(seen, want);
}

pub async fn reindex_replaces_and_retention_deletes(backend: Arc<dyn SearchBackend>) {
    backend.index(&generated_set(20)).await.unwrap();
    let mut again = generated(4);
    again.errors = vec!["late SMTP refusal".into()];
    again.timestamp = at(100);
    // Twice in one batch: the last one wins.
    backend.index(&[generated(4), again.clone()]).await.unwrap();
    let r = backend
        .search(&SearchQuery::new().with_text("smtp"))
        .await
        .unwrap();
    assert_eq!(r.results, vec![again]);
    assert_eq!(backend.search(&SearchQuery::new()).await.unwrap().total, 20);
    // Events 1..=9 have timestamps before minute 5 (event 4 moved to minute 100).
    assert_eq!(backend.delete_older_than(at(5)).await.unwrap(), 8);
    assert_eq!(backend.delete_older_than(at(5)).await.unwrap(), 0);
    let left = backend
        .search(&SearchQuery::new().with_per_page(100))
        .await
        .unwrap();
    assert_eq!(left.total, 12);
    assert!(left.results.iter().all(|e| e.timestamp >= at(5)));
    backend.health().await.unwrap();
}

/// An error text holding NUL (a remote body) is stored, through the COPY path and the upsert
/// fallback alike (PostgreSQL rejects NUL in text), with the NUL replaced.
pub async fn nul_in_error_texts_is_stored(backend: Arc<dyn SearchBackend>) {
    let mut e = generated(7);
    e.errors = vec!["gateway\0said \0no".into()];
    backend.index(std::slice::from_ref(&e)).await.unwrap();
    e.errors.push("again\0".into());
    backend.index(std::slice::from_ref(&e)).await.unwrap();
    let r = backend
        .search(&SearchQuery::new().with_text("gateway"))
        .await
        .unwrap();
    assert_eq!(r.total, 1);
    // A backend that can hold NUL (memory) keeps it; PostgreSQL stores U+FFFD in its place.
    let same =
        |v: &[String]| -> Vec<String> { v.iter().map(|t| t.replace('\0', "\u{FFFD}")).collect() };
    assert_eq!(same(&r.results[0].errors), same(&e.errors));
}

/// Values with what SQL text formats reserve (tabs, newlines, backslashes, quotes, braces,
/// `\N`, `NULL`) come back as they went in, and their words are searchable.
pub async fn odd_characters_round_trip(backend: Arc<dyn SearchBackend>) {
    let mut e = generated(1);
    e.entity_id = "a\tb\\N".into();
    e.tenant_id = None;
    e.user_id = Some("NULL".into());
    e.data = serde_json::json!({"note": "tab\there, line\nbreak\r, back\\slash \\N", "q": "say \"hi\" {x,y}"});
    e.matched_observers = vec!["NULL".into(), String::new(), "a,b".into()];
    e.errors = vec!["quote \" and backslash \\ and {brace}".into()];
    e.failed_actions = vec!["\u{1f}sep".into()];
    backend.index(std::slice::from_ref(&e)).await.unwrap();
    let mut want = e.clone();
    // The unnest fallback joins list items with U+001F and drops it from them.
    let found = |r: &observers_core::stores::search::SearchResults| r.results.clone();
    for text in ["brace", "line", "hi", "backslash"] {
        let r = backend
            .search(&SearchQuery::new().with_text(text))
            .await
            .unwrap();
        let got = found(&r);
        assert_eq!(got.len(), 1, "{text}");
        want.failed_actions.clone_from(&got[0].failed_actions);
        assert_eq!(got[0], want, "{text}");
    }
    assert!(want.failed_actions[0].ends_with("sep"));
    // A word longer than PostgreSQL's lexeme limit (2,046 bytes) is not indexed there; asking
    // for one finds nothing rather than failing.
    let long = "x".repeat(3000);
    let r = backend
        .search(&SearchQuery::new().with_text(long.as_str()).with_facets())
        .await
        .unwrap();
    assert_eq!(r.total, 0);
    // Indexed again (the upsert path): the same event comes back.
    backend.index(std::slice::from_ref(&e)).await.unwrap();
    let r = backend
        .search(&SearchQuery::new().with_entity_id("a\tb\\N"))
        .await
        .unwrap();
    assert_eq!(r.total, 1);
}

macro_rules! for_each_backend {
    ($suite:ident) => {
        mod $suite {
            use super::*;

            #[tokio::test]
            async fn memory() {
                super::$suite(Arc::new(MemorySearchBackend::new(100_000))).await;
            }

            #[sqlx::test(migrations = "../../migrations")]
            async fn postgres(pool: PgPool) {
                super::$suite(Arc::new(PostgresSearchBackend::new(pool))).await;
            }

            /// Probes that settle some queries and leave others to the GIN index.
            #[sqlx::test(migrations = "../../migrations")]
            async fn postgres_small_probe(pool: PgPool) {
                let backend = PostgresSearchBackend::new(pool).with_probe_rows(40, 12);
                super::$suite(Arc::new(backend)).await;
            }

            /// Probes that settle nothing: every text query goes through the GIN index.
            #[sqlx::test(migrations = "../../migrations")]
            async fn postgres_without_probe(pool: PgPool) {
                let backend = PostgresSearchBackend::new(pool).with_probe_rows(1, 1);
                super::$suite(Arc::new(backend)).await;
            }
        }
    };
}

for_each_backend!(searches_match_the_reference);
for_each_backend!(paging_covers_every_match_once);
for_each_backend!(counts_are_exact_up_to_the_bound);
for_each_backend!(reindex_replaces_and_retention_deletes);
for_each_backend!(nul_in_error_texts_is_stored);
for_each_backend!(odd_characters_round_trip);
