//! The default search backend: `observer_events` in PostgreSQL, with a `tsvector` column (the
//! indexer's words, GIN index) for full text and B-tree indexes for the filters. Writes are in
//! [`write`], the newest-first probe of text queries in [`probe`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use observers_core::EventKind;
use observers_core::error::Result;
use observers_core::stores::search::{
    Facets, IndexedEvent, SearchBackend, SearchQuery, SearchResults,
};
use observers_postgres::PgPool;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use crate::error::SearchError;

mod probe;
mod write;

/// Rows deleted per statement by retention.
const DELETE_BATCH: i64 = 10_000;

const COLUMNS: &str = "event_id, entity_type, entity_id, event_type, tenant_id, user_id, \
    timestamp, data, matched_observers, successful_actions, failed_actions, errors, duration_ms";

/// [`SearchBackend`] over `observer_events` (migration `20260101000005_search_fulltext`).
#[derive(Debug, Clone)]
pub struct PostgresSearchBackend {
    pool: PgPool,
    probe_rows: i64,
    page_probe_rows: i64,
}

impl PostgresSearchBackend {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            probe_rows: DEFAULT_PROBE_ROWS,
            page_probe_rows: DEFAULT_PAGE_PROBE_ROWS,
        }
    }

    /// Moves the probe's row budgets (with other filters, text alone; at least 1 each), so
    /// that tests exercise both the probe and the GIN fallback on small data sets.
    #[must_use]
    pub fn with_probe_rows(mut self, with_filters: i64, text_alone: i64) -> Self {
        self.probe_rows = with_filters.max(1);
        self.page_probe_rows = text_alone.max(1);
        self
    }
}

/// `'word':* & 'word':*` for the query's words, read with `::tsquery` (no text-search
/// parser: the lexemes are the words as [`search_tokens`] cut them, on both sides). Words are
/// letters and digits only, so nothing needs escaping.
///
/// [`search_tokens`]: observers_core::stores::search::search_tokens
pub(crate) fn tsquery_text(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("'{t}':*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// The filters other than the text, ANDed after a `WHERE true`.
fn push_filters(qb: &mut QueryBuilder<Postgres>, q: &SearchQuery) {
    if let Some(v) = &q.entity_type {
        qb.push(" AND entity_type = ").push_bind(v.clone());
    }
    if let Some(v) = &q.entity_id {
        qb.push(" AND entity_id = ").push_bind(v.clone());
    }
    if let Some(v) = q.event_type {
        qb.push(" AND event_type = ").push_bind(v.as_str());
    }
    if let Some(v) = &q.tenant_id {
        qb.push(" AND tenant_id = ").push_bind(v.clone());
    }
    if let Some(v) = q.from {
        qb.push(" AND timestamp >= ").push_bind(v);
    }
    if let Some(v) = q.to {
        qb.push(" AND timestamp < ").push_bind(v);
    }
}

/// ` WHERE ...`: every filter, and the text through the GIN index.
fn push_where(qb: &mut QueryBuilder<Postgres>, q: &SearchQuery) {
    qb.push(" WHERE true");
    push_filters(qb, q);
    let terms = q.terms();
    if !terms.is_empty() {
        qb.push(" AND search @@ ")
            .push_bind(tsquery_text(&terms))
            .push("::tsquery");
    }
}

/// A text query whose other filters select at most this many events reads them all newest
/// first in one probe (see [`probe`]) instead of going through the GIN index.
pub const DEFAULT_PROBE_ROWS: i64 = 20_000;
/// Rows the page probe reads when more events match than are counted exactly (a common
/// word): a first page of 20 for a word in one event in 250 or more.
pub const DEFAULT_PAGE_PROBE_ROWS: i64 = 5_000;

#[derive(sqlx::FromRow)]
struct Row {
    event_id: i64,
    entity_type: String,
    entity_id: String,
    event_type: String,
    tenant_id: Option<String>,
    user_id: Option<String>,
    timestamp: DateTime<Utc>,
    data: Option<Value>,
    matched_observers: Vec<String>,
    successful_actions: Vec<String>,
    failed_actions: Vec<String>,
    errors: Vec<String>,
    duration_ms: i64,
}

impl Row {
    fn into_event(self) -> std::result::Result<IndexedEvent, SearchError> {
        let event_type: EventKind = self.event_type.parse().map_err(|_| SearchError::BadReply {
            what: "observer_events".into(),
            message: format!(
                "event {} has an unknown event_type `{}`",
                self.event_id, self.event_type
            ),
        })?;
        Ok(IndexedEvent {
            event_id: self.event_id,
            entity_type: self.entity_type,
            entity_id: self.entity_id,
            event_type,
            tenant_id: self.tenant_id,
            user_id: self.user_id,
            timestamp: self.timestamp,
            data: self.data.unwrap_or(Value::Null),
            matched_observers: self.matched_observers,
            successful_actions: self.successful_actions,
            failed_actions: self.failed_actions,
            errors: self.errors,
            duration_ms: u64::try_from(self.duration_ms).unwrap_or(0),
        })
    }
}

impl PostgresSearchBackend {
    /// The page through the best index for the filters, the text (if any) through GIN.
    async fn page(&self, q: &SearchQuery) -> std::result::Result<Vec<IndexedEvent>, SearchError> {
        let per_page = i64::from(q.effective_per_page());
        if per_page == 0 {
            return Ok(Vec::new());
        }
        let mut qb =
            QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM observer_events"));
        push_where(&mut qb, q);
        qb.push(" ORDER BY timestamp DESC, event_id DESC LIMIT ")
            .push_bind(per_page)
            .push(" OFFSET ")
            .push_bind(i64::try_from(q.offset()).unwrap_or(i64::MAX));
        let rows: Vec<Row> = qb.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(Row::into_event).collect()
    }

    /// The events of `ids`, in that order (a primary-key lookup each).
    async fn events(&self, ids: &[i64]) -> std::result::Result<Vec<IndexedEvent>, SearchError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM observer_events WHERE event_id = ANY($1)"
        )))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_id: BTreeMap<i64, Row> = rows.into_iter().map(|r| (r.event_id, r)).collect();
        ids.iter()
            .filter_map(|id| by_id.remove(id))
            .map(Row::into_event)
            .collect()
    }

    /// The total (exact up to `exact_up_to`) and the facets, from at most `exact_up_to + 1`
    /// matches: the count stops there, and facets group the newest `exact_up_to` matches.
    async fn counts(
        &self,
        q: &SearchQuery,
    ) -> std::result::Result<(u64, bool, Option<Facets>), SearchError> {
        let cap = q.effective_exact_up_to();
        let limit = i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX);
        if !q.facets {
            let mut qb = QueryBuilder::<Postgres>::new(
                "SELECT count(*) FROM (SELECT 1 FROM observer_events",
            );
            push_where(&mut qb, q);
            qb.push(" LIMIT ").push_bind(limit).push(") AS m");
            let n: i64 = qb.build_query_scalar().fetch_one(&self.pool).await?;
            let n = u64::try_from(n).unwrap_or(0);
            return Ok((n.min(cap), n <= cap, None));
        }
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT entity_type, event_type, count(*) FILTER (WHERE rank <= ",
        );
        qb.push_bind(limit - 1).push(
            "), count(*) FROM (SELECT entity_type, event_type, \
             row_number() OVER (ORDER BY timestamp DESC, event_id DESC) AS rank \
             FROM observer_events",
        );
        push_where(&mut qb, q);
        qb.push(" ORDER BY timestamp DESC, event_id DESC LIMIT ")
            .push_bind(limit)
            .push(") AS m GROUP BY entity_type, event_type");
        let groups: Vec<(String, String, i64, i64)> =
            qb.build_query_as().fetch_all(&self.pool).await?;
        let mut facets = Facets::default();
        let mut seen = 0;
        for (entity, kind, counted, n) in groups {
            seen += u64::try_from(n).unwrap_or(0);
            let counted = u64::try_from(counted).unwrap_or(0);
            if counted > 0 {
                *facets.entity_types.entry(entity).or_default() += counted;
                *facets.event_types.entry(kind).or_default() += counted;
            }
        }
        Ok((seen.min(cap), seen <= cap, Some(facets)))
    }

    /// Whether the filters other than the text select at most `limit` events (counted in the
    /// B-tree indexes, bounded).
    async fn few_filtered(
        &self,
        q: &SearchQuery,
        limit: i64,
    ) -> std::result::Result<bool, SearchError> {
        let filtered = q.entity_type.is_some()
            || q.entity_id.is_some()
            || q.event_type.is_some()
            || q.tenant_id.is_some()
            || q.from.is_some()
            || q.to.is_some();
        if !filtered {
            return Ok(false);
        }
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT count(*) FROM (SELECT 1 FROM observer_events WHERE true",
        );
        push_filters(&mut qb, q);
        qb.push(" LIMIT ").push_bind(limit + 1).push(") AS f");
        let n: i64 = qb.build_query_scalar().fetch_one(&self.pool).await?;
        Ok(n <= limit)
    }

    /// A text query. When the other filters select at most `probe_rows` events, one probe
    /// reads them all, newest first, and settles the count, the facets and the page. Otherwise
    /// the count goes through the GIN index; then the page too when every match was counted
    /// (their heap pages were just read), else (more matches than `exact_up_to`: a common
    /// word, whose page the newest rows hold) through a `page_probe_rows` probe, and through
    /// the GIN index only if that probe falls short.
    async fn text_search(
        &self,
        q: &SearchQuery,
        terms: &[String],
    ) -> std::result::Result<SearchResults, SearchError> {
        if self.few_filtered(q, self.probe_rows).await? {
            let p = probe::probe(&self.pool, q, terms, self.probe_rows).await?;
            if p.counts_conclusive(q) && p.page_conclusive(q) {
                let (total, total_exact, facets) = p.counts(q);
                return Ok(SearchResults {
                    total,
                    total_exact,
                    results: self.events(&p.page_ids()).await?,
                    facets,
                });
            }
        }
        let (total, total_exact, facets) = self.counts(q).await?;
        let results = if q.effective_per_page() == 0 || (total_exact && q.offset() >= total) {
            Vec::new()
        } else if total_exact {
            self.page(q).await?
        } else {
            let p = probe::probe(&self.pool, q, terms, self.page_probe_rows).await?;
            if p.page_conclusive(q) {
                self.events(&p.page_ids()).await?
            } else {
                self.page(q).await?
            }
        };
        Ok(SearchResults {
            total,
            total_exact,
            results,
            facets,
        })
    }
}

#[async_trait]
impl SearchBackend for PostgresSearchBackend {
    async fn index(&self, events: &[IndexedEvent]) -> Result<()> {
        Ok(write::write(&self.pool, events).await?)
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchResults> {
        let terms = q.terms();
        let empty_range = matches!((q.from, q.to), (Some(from), Some(to)) if from >= to);
        // No indexed word is longer than a lexeme, and a `tsquery` cannot hold one.
        if empty_range || terms.iter().any(|t| t.len() > write::MAX_WORD_BYTES) {
            return Ok(SearchResults {
                facets: q.facets.then(Facets::default),
                ..SearchResults::default()
            });
        }
        if !terms.is_empty() {
            return Ok(self.text_search(q, &terms).await?);
        }
        let ((total, total_exact, facets), results) =
            tokio::try_join!(self.counts(q), self.page(q))?;
        Ok(SearchResults {
            total,
            total_exact,
            results,
            facets,
        })
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        self.delete_older_than_reporting(cutoff, &mut |_| {}).await
    }

    async fn delete_older_than_reporting(
        &self,
        cutoff: DateTime<Utc>,
        on_batch: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM observer_events WHERE event_id IN \
                 (SELECT event_id FROM observer_events WHERE timestamp < $1 LIMIT $2)",
            )
            .bind(cutoff)
            .bind(DELETE_BATCH)
            .execute(&self.pool)
            .await
            .map_err(SearchError::from)?;
            deleted += done.rows_affected();
            on_batch(done.rows_affected());
            if done.rows_affected() < u64::try_from(DELETE_BATCH).unwrap_or(u64::MAX) {
                return Ok(deleted);
            }
        }
    }

    async fn health(&self) -> Result<()> {
        sqlx::query("SELECT 1 FROM observer_events LIMIT 1")
            .execute(&self.pool)
            .await
            .map_err(SearchError::from)?;
        Ok(())
    }
}
