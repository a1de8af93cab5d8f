//! The newest-first probe of a full-text query: the newest `rows` events that pass the other
//! filters, read in timestamp order through a B-tree, with the text checked on each row.
//!
//! Why: the GIN index finds every match of a word in heap order, so ordering or grouping the
//! matches of a common word reads one heap page per match (20,000 pages for a word in one
//! event in 50), and its posting list alone is costly for a word in a quarter of the events.
//! Read newest-first instead, a page of a common word costs a few hundred rows, and the count
//! of a query whose other filters select few rows costs those rows. The probe is exact when it
//! is conclusive (see [`Probe::counts_conclusive`], [`Probe::page_conclusive`]); otherwise the
//! caller falls back to the GIN index for the part it could not settle.

use observers_core::stores::search::{Facets, SearchQuery};
use sqlx::{Postgres, QueryBuilder};

use super::{push_filters, tsquery_text};

/// What the newest `rows` filtered events say about a text query.
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// Rows read (fewer than asked: every filtered event was read).
    scanned: i64,
    /// Rows asked for.
    rows: i64,
    /// Matches among them.
    hits: i64,
    /// Facets of the newest `exact_up_to` matches among them.
    facets: Facets,
    /// `(rank, event id)` of the matches on the requested page, in rank order.
    page: Vec<(i64, i64)>,
}

impl Probe {
    /// Every filtered event was read.
    fn exhausted(&self) -> bool {
        self.scanned < self.rows
    }

    /// The total and facets follow from the probe: it read every filtered event, or it found
    /// more than `exact_up_to` matches (the newest ones, since it reads newest first).
    pub(super) fn counts_conclusive(&self, q: &SearchQuery) -> bool {
        self.exhausted() || u64::try_from(self.hits).unwrap_or(0) > q.effective_exact_up_to()
    }

    /// `(total, total_exact, facets)`; only meaningful when [`Self::counts_conclusive`].
    pub(super) fn counts(&self, q: &SearchQuery) -> (u64, bool, Option<Facets>) {
        let cap = q.effective_exact_up_to();
        let hits = u64::try_from(self.hits).unwrap_or(0);
        (
            hits.min(cap),
            hits <= cap,
            q.facets.then(|| self.facets.clone()),
        )
    }

    /// The requested page follows from the probe: it holds every match up to the page's end.
    pub(super) fn page_conclusive(&self, q: &SearchQuery) -> bool {
        let end = q.offset().saturating_add(u64::from(q.effective_per_page()));
        self.exhausted() || u64::try_from(self.hits).unwrap_or(0) >= end
    }

    /// Event ids of the page, newest first; only meaningful when [`Self::page_conclusive`].
    pub(super) fn page_ids(&self) -> Vec<i64> {
        self.page.iter().map(|(_, id)| *id).collect()
    }
}

/// One (entity type, event type) group of the probe: rows read, matches, matches within
/// `exact_up_to`, then the ranks and ids of the page's matches.
type Group = (
    String,
    String,
    i64,
    i64,
    i64,
    Option<Vec<i64>>,
    Option<Vec<i64>>,
);

/// One statement: the filtered events newest first (`LIMIT rows`, an ordered B-tree scan), a
/// running count of matches as each event's rank, then per (entity type, event type) group the
/// rows read, the matches, the matches ranked within `exact_up_to`, and the page's matches.
/// The tsquery is an init plan, built once per statement rather than once per row.
pub(super) async fn probe(
    pool: &observers_postgres::PgPool,
    q: &SearchQuery,
    terms: &[String],
    rows: i64,
) -> Result<Probe, sqlx::Error> {
    let cap = i64::try_from(q.effective_exact_up_to()).unwrap_or(i64::MAX);
    let offset = i64::try_from(q.offset()).unwrap_or(i64::MAX);
    let end = offset.saturating_add(i64::from(q.effective_per_page()));
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT entity_type, event_type, count(*), count(*) FILTER (WHERE hit), \
         count(*) FILTER (WHERE hit AND n <= ",
    );
    qb.push_bind(cap)
        .push("), array_agg(n ORDER BY n) FILTER (WHERE hit AND n > ")
        .push_bind(offset)
        .push(" AND n <= ")
        .push_bind(end)
        .push("), array_agg(event_id ORDER BY n) FILTER (WHERE hit AND n > ")
        .push_bind(offset)
        .push(" AND n <= ")
        .push_bind(end)
        .push(
            ") FROM (SELECT entity_type, event_type, event_id, hit, count(*) FILTER (WHERE hit) \
             OVER (ORDER BY timestamp DESC, event_id DESC ROWS UNBOUNDED PRECEDING) AS n \
             FROM (SELECT entity_type, event_type, event_id, timestamp, \
             ts_match_vq(search, (SELECT ",
        )
        .push_bind(tsquery_text(terms))
        .push("::tsquery)) AS hit FROM observer_events WHERE true");
    push_filters(&mut qb, q);
    qb.push(" ORDER BY timestamp DESC, event_id DESC LIMIT ")
        .push_bind(rows)
        .push(") AS r) AS w GROUP BY entity_type, event_type");
    let groups: Vec<Group> = qb.build_query_as().fetch_all(pool).await?;
    let mut p = Probe {
        rows,
        ..Probe::default()
    };
    for (entity, kind, scanned, hits, counted, ranks, ids) in groups {
        p.scanned += scanned;
        p.hits += hits;
        let counted = u64::try_from(counted).unwrap_or(0);
        if counted > 0 {
            *p.facets.entity_types.entry(entity).or_default() += counted;
            *p.facets.event_types.entry(kind).or_default() += counted;
        }
        p.page.extend(
            ranks
                .unwrap_or_default()
                .into_iter()
                .zip(ids.unwrap_or_default()),
        );
    }
    p.page.sort_unstable();
    Ok(p)
}
