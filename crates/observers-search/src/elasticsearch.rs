//! The Elasticsearch backend, over the workspace's `reqwest` and the REST API: an index
//! template with the mapping, `_bulk` NDJSON writes, the search DSL, `_delete_by_query` for
//! retention and `_cluster/health`.
//!
//! Why not the `elasticsearch` crate: it is an alpha (8.x-alpha) that pins an older `reqwest`
//! (a second HTTP/TLS stack in the binary) and gives no typed help for the handful of calls
//! used here; like Vector, we call the stable REST API directly.
//!
//! Failures are never dropped silently: a 429 or 5xx reply (or a connection error) is retried
//! with backoff, honouring `Retry-After`; inside a 200 `_bulk` reply, items refused with 429 or
//! 5xx are sent again (only those), and items refused for good (e.g. a mapping conflict) are
//! reported in a [`SearchError::Rejected`] with the first reason.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use observers_core::error::Result;
use observers_core::stores::search::{
    Facets, IndexedEvent, SearchBackend, SearchQuery, SearchResults, search_tokens,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::error::SearchError;

/// The default index name.
pub const DEFAULT_INDEX: &str = "observer-events";
/// Elasticsearch's default `index.max_result_window`: pages cannot reach past it.
pub const MAX_RESULT_WINDOW: u64 = 10_000;
/// Buckets per facet.
const FACET_SIZE: u32 = 1000;

/// [`SearchBackend`] over an Elasticsearch cluster (7.10+ or 8.x). Its `Debug` leaves the
/// credentials out.
#[derive(Clone)]
pub struct ElasticsearchBackend {
    client: reqwest::Client,
    base: reqwest::Url,
    auth: Option<(String, String)>,
    index: String,
    max_attempts: u32,
    backoff: Duration,
    refresh_on_write: bool,
}

impl std::fmt::Debug for ElasticsearchBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticsearchBackend")
            .field("base", &self.base.as_str())
            .field("user", &self.auth.as_ref().map(|(u, _)| u.as_str()))
            .field("password", &self.auth.as_ref().map(|_| "***"))
            .field("index", &self.index)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("refresh_on_write", &self.refresh_on_write)
            .finish_non_exhaustive()
    }
}

/// An error and its sources, one line (the client's own text says only "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl ElasticsearchBackend {
    /// `url` is the cluster's base URL; credentials in it are sent as HTTP basic auth.
    pub fn new(url: &str, index: &str) -> std::result::Result<Self, SearchError> {
        let mut base = reqwest::Url::parse(url).map_err(|e| {
            SearchError::Invalid(format!(
                "[search] url: `{}` is not a URL: {e}",
                observers_core::redact::text(url)
            ))
        })?;
        let auth = (!base.username().is_empty()).then(|| {
            (
                base.username().to_owned(),
                base.password().unwrap_or_default().to_owned(),
            )
        });
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if index.is_empty()
            || index.starts_with(['-', '_', '+'])
            || index
                .chars()
                .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c))
        {
            return Err(SearchError::Invalid(format!(
                "[search] index: `{index}` is not a valid Elasticsearch index name (lowercase, no \\ / * ? \" < > | , # : or spaces)"
            )));
        }
        // reqwest is built without a default TLS provider in this workspace.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SearchError::Invalid(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            base,
            auth,
            index: index.to_owned(),
            max_attempts: 5,
            backoff: Duration::from_millis(200),
            refresh_on_write: false,
        })
    }

    /// Attempts per request on 429/5xx/connection errors, and the first wait (doubling).
    #[must_use]
    pub fn with_retries(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Makes every `_bulk` write wait until its documents are searchable
    /// (`refresh=wait_for`): slower writes, no up-to-1 s refresh delay before they show.
    #[must_use]
    pub fn with_refresh_on_write(mut self, on: bool) -> Self {
        self.refresh_on_write = on;
        self
    }

    pub fn index_name(&self) -> &str {
        &self.index
    }

    /// The index template: settings and the mapping of an indexed event.
    pub fn template(&self) -> Value {
        json!({
            "index_patterns": [self.index],
            "template": {
                "settings": {"number_of_shards": 1},
                "mappings": {
                    "dynamic": false,
                    "properties": {
                        "event_id": {"type": "long"},
                        "entity_type": {"type": "keyword"},
                        "entity_id": {"type": "keyword"},
                        "event_type": {"type": "keyword"},
                        "tenant_id": {"type": "keyword"},
                        "user_id": {"type": "keyword"},
                        "timestamp": {"type": "date"},
                        "data": {"type": "object", "enabled": false},
                        "matched_observers": {"type": "keyword"},
                        "successful_actions": {"type": "keyword"},
                        "failed_actions": {"type": "keyword"},
                        "errors": {"type": "text"},
                        "duration_ms": {"type": "long"},
                        "words": {"type": "text", "analyzer": "whitespace"}
                    }
                }
            }
        })
    }

    /// Creates (or updates) the index template, then the index if it does not exist.
    pub async fn ensure_index(&self) -> std::result::Result<(), SearchError> {
        self.request(
            Method::PUT,
            &format!("_index_template/{}", self.index),
            &[],
            Body::Json(self.template()),
        )
        .await?;
        match self
            .request(Method::PUT, &self.index, &[], Body::Json(json!({})))
            .await
        {
            Ok(_) => Ok(()),
            Err(SearchError::Status {
                status: 400, body, ..
            }) if body.contains("resource_already_exists_exception") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The NDJSON body of a `_bulk` request indexing `events` (document id = event id).
    pub fn bulk_body(&self, events: &[&IndexedEvent]) -> String {
        let mut out = String::new();
        for e in events {
            let action = json!({"index": {"_index": self.index, "_id": e.event_id.to_string()}});
            let mut doc = serde_json::to_value(e).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut doc {
                map.insert("timestamp".into(), Value::String(time(e.timestamp)));
                map.insert(
                    "words".into(),
                    Value::String(search_tokens(&e.text()).join(" ")),
                );
            }
            out.push_str(&action.to_string());
            out.push('\n');
            out.push_str(&doc.to_string());
            out.push('\n');
        }
        out
    }

    /// The `_search` body of a query.
    pub fn search_body(&self, q: &SearchQuery) -> Value {
        let mut filter = Vec::new();
        for (field, value) in [
            ("entity_type", q.entity_type.as_deref()),
            ("entity_id", q.entity_id.as_deref()),
            (
                "event_type",
                q.event_type.map(observers_core::EventKind::as_str),
            ),
            ("tenant_id", q.tenant_id.as_deref()),
        ] {
            if let Some(v) = value {
                filter.push(json!({"term": {field: v}}));
            }
        }
        if q.from.is_some() || q.to.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(from) = q.from {
                range.insert("gte".into(), Value::String(time(from)));
            }
            if let Some(to) = q.to {
                range.insert("lt".into(), Value::String(time(to)));
            }
            filter.push(json!({"range": {"timestamp": range}}));
        }
        for term in q.terms() {
            filter.push(json!({"prefix": {"words": term}}));
        }
        let mut body = json!({
            "from": q.offset(),
            "size": q.effective_per_page(),
            "track_total_hits": true,
            "sort": [{"timestamp": "desc"}, {"event_id": "desc"}],
            "query": {"bool": {"filter": filter}}
        });
        if q.facets {
            body["aggs"] = json!({
                "entity_types": {"terms": {"field": "entity_type", "size": FACET_SIZE}},
                "event_types": {"terms": {"field": "event_type", "size": 10}}
            });
        }
        body
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Body,
    ) -> std::result::Result<Value, SearchError> {
        let mut url = self
            .base
            .join(path)
            .map_err(|e| SearchError::Invalid(format!("bad path `{path}`: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let what = format!("Elasticsearch {method} /{path}");
        let mut delay = self.backoff;
        let mut attempt = 1;
        loop {
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some((user, pass)) = &self.auth {
                req = req.basic_auth(user, Some(pass));
            }
            req = match &body {
                Body::None => req,
                Body::Json(v) => req
                    .header("content-type", "application/json")
                    .body(v.to_string()),
                Body::NdJson(s) => req
                    .header("content-type", "application/x-ndjson")
                    .body(s.clone()),
            };
            let (err, retry_after) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = resp.text().await.map_err(|e| SearchError::Unreachable {
                        what: what.clone(),
                        message: e.without_url().to_string(),
                    })?;
                    if status.is_success() {
                        return serde_json::from_str(&text).map_err(|e| SearchError::BadReply {
                            what,
                            message: format!("{e}: {}", truncate(&text)),
                        });
                    }
                    let err = SearchError::Status {
                        what: what.clone(),
                        status: status.as_u16(),
                        body: truncate(&text),
                    };
                    if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                        return Err(err);
                    }
                    (err, retry_after)
                }
                Err(e) => (
                    SearchError::Unreachable {
                        what: what.clone(),
                        message: observers_core::redact::text(&error_chain(&e.without_url())),
                    },
                    None,
                ),
            };
            if attempt >= self.max_attempts {
                return Err(err);
            }
            let wait = retry_after.map_or(delay, |r| r.min(Duration::from_secs(30)));
            tracing::warn!(error = %err, attempt, ?wait, "Elasticsearch request failed; retrying");
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            attempt += 1;
        }
    }

    fn bad(&self, message: impl Into<String>) -> SearchError {
        SearchError::BadReply {
            what: format!("Elasticsearch index `{}`", self.index),
            message: message.into(),
        }
    }

    async fn bulk(&self, events: &[IndexedEvent]) -> std::result::Result<(), SearchError> {
        let mut latest: BTreeMap<i64, &IndexedEvent> = BTreeMap::new();
        for e in events {
            latest.insert(e.event_id, e);
        }
        let total = latest.len();
        let mut pending: Vec<&IndexedEvent> = latest.into_values().collect();
        let mut refused: Vec<String> = Vec::new();
        let mut delay = self.backoff;
        let mut attempt = 1;
        while !pending.is_empty() {
            let reply = self
                .request(
                    Method::POST,
                    "_bulk",
                    &[],
                    Body::NdJson(self.bulk_body(&pending)),
                )
                .await?;
            if reply["errors"] == false {
                return finish(&refused, 0, total);
            }
            let items = reply["items"]
                .as_array()
                .ok_or_else(|| self.bad("a _bulk reply with errors has no `items`"))?;
            if items.len() != pending.len() {
                return Err(self.bad(format!(
                    "_bulk answered {} items for {} documents",
                    items.len(),
                    pending.len()
                )));
            }
            let mut again = Vec::new();
            for (item, doc) in items.iter().zip(&pending) {
                let result = item
                    .as_object()
                    .and_then(|m| m.values().next())
                    .ok_or_else(|| self.bad(format!("bad _bulk item {item}")))?;
                let status = result["status"].as_u64().unwrap_or(0);
                if result.get("error").is_none() && (200..300).contains(&status) {
                    continue;
                }
                let reason = format!(
                    "event {}: HTTP {status} {} ({})",
                    doc.event_id,
                    result["error"]["type"].as_str().unwrap_or("unknown"),
                    result["error"]["reason"]
                        .as_str()
                        .unwrap_or("no reason given")
                );
                if status == 429 || status >= 500 {
                    again.push(*doc);
                    if attempt >= self.max_attempts {
                        refused.push(reason);
                    }
                } else {
                    refused.push(reason);
                }
            }
            if again.is_empty() || attempt >= self.max_attempts {
                let transient = refused.len() == again.len() && !again.is_empty();
                return finish(&refused, usize::from(transient), total);
            }
            tracing::warn!(
                retrying = again.len(),
                refused = refused.len(),
                attempt,
                "Elasticsearch refused some documents of a _bulk write"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            attempt += 1;
            pending = again;
        }
        finish(&refused, 0, total)
    }
}

/// `Ok` when nothing was refused; else the report (`transient` = 1 when only 429/5xx
/// refusals remained after the last attempt).
fn finish(
    refused: &[String],
    transient: usize,
    total: usize,
) -> std::result::Result<(), SearchError> {
    match refused.first() {
        None => Ok(()),
        Some(first) => Err(SearchError::Rejected {
            failed: refused.len(),
            total,
            first: first.clone(),
            transient: transient == 1,
        }),
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 2000;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

enum Body {
    None,
    Json(Value),
    NdJson(String),
}

fn buckets(aggs: &Value, name: &str) -> BTreeMap<String, u64> {
    aggs[name]["buckets"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| Some((b["key"].as_str()?.to_owned(), b["doc_count"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl SearchBackend for ElasticsearchBackend {
    async fn index(&self, events: &[IndexedEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        Ok(self.bulk(events).await?)
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchResults> {
        if let (Some(from), Some(to)) = (q.from, q.to)
            && from >= to
        {
            return Ok(SearchResults {
                facets: q.facets.then(Facets::default),
                ..SearchResults::default()
            });
        }
        if q.offset() + u64::from(q.effective_per_page()) > MAX_RESULT_WINDOW {
            return Err(SearchError::Invalid(format!(
                "Elasticsearch pages stop at result {MAX_RESULT_WINDOW}: narrow the query (time range, entity) instead of paging further"
            ))
            .into());
        }
        let path = format!("{}/_search", self.index);
        let reply = self
            .request(Method::POST, &path, &[], Body::Json(self.search_body(q)))
            .await?;
        let total = reply["hits"]["total"]["value"]
            .as_u64()
            .or_else(|| reply["hits"]["total"].as_u64())
            .ok_or_else(|| self.bad("no hits.total in the _search reply"))?;
        // `track_total_hits: true`: Elasticsearch counts every match ("eq").
        let total_exact = reply["hits"]["total"]["relation"].as_str() != Some("gte");
        let hits = reply["hits"]["hits"]
            .as_array()
            .ok_or_else(|| self.bad("no hits.hits in the _search reply"))?;
        let results = hits
            .iter()
            .map(|h| {
                observers_core::numbers::from_json::<IndexedEvent>(&h["_source"])
                    .map_err(|e| self.bad(format!("document {}: {e}", h["_id"])))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let facets = q.facets.then(|| Facets {
            entity_types: buckets(&reply["aggregations"], "entity_types"),
            event_types: buckets(&reply["aggregations"], "event_types"),
        });
        Ok(SearchResults {
            total,
            total_exact,
            results,
            facets,
        })
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let path = format!("{}/_delete_by_query", self.index);
        let body = json!({"query": {"range": {"timestamp": {"lt": time(cutoff)}}}});
        let reply = self
            .request(
                Method::POST,
                &path,
                &[("conflicts", "proceed"), ("refresh", "true")],
                Body::Json(body),
            )
            .await?;
        if let Some(failures) = reply["failures"].as_array()
            && let Some(first) = failures.first()
        {
            return Err(self
                .bad(format!(
                    "{} deletions failed; first: {first}",
                    failures.len()
                ))
                .into());
        }
        reply["deleted"].as_u64().ok_or_else(|| {
            self.bad("no `deleted` in the _delete_by_query reply")
                .into()
        })
    }

    async fn health(&self) -> Result<()> {
        let reply = self
            .request(Method::GET, "_cluster/health", &[], Body::None)
            .await?;
        match reply["status"].as_str() {
            Some("green" | "yellow") => Ok(()),
            Some(other) => Err(SearchError::Status {
                what: "Elasticsearch cluster health".into(),
                status: 503,
                body: format!("cluster status is {other}"),
            }
            .into()),
            None => Err(self.bad("no status in the _cluster/health reply").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_out_of_debug_and_errors() {
        let es =
            ElasticsearchBackend::new("http://elastic:s3cret-pw@127.0.0.1:9200", "idx").unwrap();
        let debug = format!("{es:?}");
        assert!(!debug.contains("s3cret-pw"), "{debug}");
        assert!(debug.contains("elastic"), "{debug}");
        let err = ElasticsearchBackend::new("http://elastic:s3cret-pw@[::1", "idx").unwrap_err();
        assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    }
}
