//! Bulk writes of `observer_events`: one `COPY ... FROM STDIN` per batch, falling back to an
//! `INSERT ... ON CONFLICT` upsert when some events are already indexed (a replay).
//!
//! Why COPY: rows stream in PostgreSQL's text format with no statement to plan, no `unnest`
//! and no conflict arbiter per row. Why the `tsvector` arrives ready: the words are already
//! cut by [`search_tokens`], so the server only reads a list of lexemes (no text-search
//! parser, no positions, which queries never use). Why `synchronous_commit = off` for these
//! transactions only: the index is derived data; a server crash may lose the last fraction of
//! a second of index writes, which costs less than waiting for a disk flush per batch (the
//! same trade the indexer already makes by dropping events when its buffer is full).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use observers_core::stores::search::{IndexedEvent, search_tokens};
use observers_postgres::PgPool;

use crate::error::SearchError;

/// The largest text indexed per event (a `tsvector` holds at most 1 MB).
const MAX_TEXT_BYTES: usize = 256 * 1024;
/// The longest lexeme a `tsvector` holds, in bytes (longer words are left out, as the
/// text-search parser does).
pub(super) const MAX_WORD_BYTES: usize = 2046;

const COPY: &str = "COPY observer_events (event_id, entity_type, entity_id, event_type, \
    tenant_id, user_id, timestamp, data, matched_observers, successful_actions, \
    failed_actions, errors, duration_ms, search) FROM STDIN";

/// The fallback: every column travels as one array parameter, and a re-indexed event replaces
/// its row. The `text[]` columns travel as one string per row, their items joined by U+001F;
/// the `tsvector` as its words joined by spaces.
const UPSERT: &str = r"
INSERT INTO observer_events (event_id, entity_type, entity_id, event_type, tenant_id, user_id,
    timestamp, data, matched_observers, successful_actions, failed_actions, errors, duration_ms,
    indexed_at, search)
SELECT d.event_id, d.entity_type, d.entity_id, d.event_type, d.tenant_id, d.user_id,
    d.timestamp, d.data, string_to_array(d.matched, E'\x1f'),
    string_to_array(d.succeeded, E'\x1f'), string_to_array(d.failed, E'\x1f'),
    string_to_array(d.errors, E'\x1f'), d.duration_ms, now(),
    array_to_tsvector(string_to_array(d.words, ' '))
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::timestamptz[], $8::jsonb[], $9::text[], $10::text[], $11::text[], $12::text[],
    $13::bigint[], $14::text[])
    AS d(event_id, entity_type, entity_id, event_type, tenant_id, user_id, timestamp, data,
    matched, succeeded, failed, errors, duration_ms, words)
ON CONFLICT (event_id) DO UPDATE SET
    entity_type = EXCLUDED.entity_type, entity_id = EXCLUDED.entity_id,
    event_type = EXCLUDED.event_type, tenant_id = EXCLUDED.tenant_id,
    user_id = EXCLUDED.user_id, timestamp = EXCLUDED.timestamp, data = EXCLUDED.data,
    matched_observers = EXCLUDED.matched_observers,
    successful_actions = EXCLUDED.successful_actions,
    failed_actions = EXCLUDED.failed_actions, errors = EXCLUDED.errors,
    duration_ms = EXCLUDED.duration_ms, indexed_at = now(), search = EXCLUDED.search";

/// The separator of `text[]` items in [`UPSERT`]'s parameters (removed from the items).
const SEP: char = '\u{1f}';

/// Writes a batch; a re-indexed event replaces its row, and within a batch the last wins.
pub(super) async fn write(pool: &PgPool, events: &[IndexedEvent]) -> Result<(), SearchError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut latest: BTreeMap<i64, &IndexedEvent> = BTreeMap::new();
    for e in events {
        latest.insert(e.event_id, e);
    }
    let rows: Vec<&IndexedEvent> = latest.into_values().collect();
    match copy(pool, &rows).await {
        Err(SearchError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
            upsert(pool, &rows).await
        }
        other => other,
    }
}

/// A transaction that commits with `synchronous_commit = off` (see the module's doc).
async fn begin_unsynced(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, SearchError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn copy(pool: &PgPool, rows: &[&IndexedEvent]) -> Result<(), SearchError> {
    let mut buf = String::with_capacity(rows.len() * 512);
    for e in rows {
        copy_row(&mut buf, e);
    }
    let mut tx = begin_unsynced(pool).await?;
    let mut copy = tx.copy_in_raw(COPY).await?;
    copy.send(buf.as_bytes()).await?;
    copy.finish().await?;
    tx.commit().await?;
    Ok(())
}

async fn upsert(pool: &PgPool, rows: &[&IndexedEvent]) -> Result<(), SearchError> {
    let n = rows.len();
    let mut ids = Vec::with_capacity(n);
    let mut entity_types = Vec::with_capacity(n);
    let mut entity_ids = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut timestamps = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    let mut matched = Vec::with_capacity(n);
    let mut succeeded = Vec::with_capacity(n);
    let mut failed = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut durations = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    for e in rows {
        ids.push(e.event_id);
        entity_types.push(e.entity_type.as_str());
        entity_ids.push(e.entity_id.as_str());
        event_types.push(e.event_type.as_str());
        tenants.push(e.tenant_id.as_deref());
        users.push(e.user_id.as_deref());
        timestamps.push(e.timestamp);
        data.push((!e.data.is_null()).then_some(&e.data));
        matched.push(joined(&e.matched_observers));
        succeeded.push(joined(&e.successful_actions));
        failed.push(joined(&e.failed_actions));
        errors.push(joined(&e.errors));
        durations.push(i64::try_from(e.duration_ms).unwrap_or(i64::MAX));
        texts.push(words(e).join(" "));
    }
    let mut tx = begin_unsynced(pool).await?;
    sqlx::query(UPSERT)
        .bind(ids)
        .bind(entity_types)
        .bind(entity_ids)
        .bind(event_types)
        .bind(tenants)
        .bind(users)
        .bind(timestamps)
        .bind(data)
        .bind(matched)
        .bind(succeeded)
        .bind(failed)
        .bind(errors)
        .bind(durations)
        .bind(texts)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

fn joined(items: &[String]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.extend(item.chars().filter(|c| *c != SEP).map(|c| {
            if c == '\0' {
                observers_core::text::NUL_REPLACEMENT
            } else {
                c
            }
        }));
    }
    out
}

/// The words stored in the `tsvector`: the event's search tokens, bounded in size.
fn words(e: &IndexedEvent) -> Vec<String> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for w in search_tokens(&e.text()) {
        if w.len() > MAX_WORD_BYTES {
            continue;
        }
        if bytes + w.len() + 1 > MAX_TEXT_BYTES {
            break;
        }
        bytes += w.len() + 1;
        out.push(w);
    }
    out
}

/// One row of `COPY ... FROM STDIN` text format, columns in [`COPY`]'s order.
fn copy_row(buf: &mut String, e: &IndexedEvent) {
    let _ = write!(buf, "{}\t", e.event_id);
    copy_text(buf, &e.entity_type);
    buf.push('\t');
    copy_text(buf, &e.entity_id);
    buf.push('\t');
    buf.push_str(e.event_type.as_str());
    buf.push('\t');
    copy_opt(buf, e.tenant_id.as_deref());
    buf.push('\t');
    copy_opt(buf, e.user_id.as_deref());
    buf.push('\t');
    buf.push_str(&e.timestamp.to_rfc3339());
    buf.push('\t');
    if e.data.is_null() {
        buf.push_str("\\N");
    } else {
        // Serialized straight into the buffer, escaped on the way (no JSON string per event).
        let _ = write!(CopyText(buf), "{}", e.data);
    }
    for list in [
        &e.matched_observers,
        &e.successful_actions,
        &e.failed_actions,
        &e.errors,
    ] {
        buf.push('\t');
        copy_text(buf, &array_literal(list));
    }
    let _ = write!(
        buf,
        "\t{}\t",
        i64::try_from(e.duration_ms).unwrap_or(i64::MAX)
    );
    // Lexemes are letters and digits only: quoted, nothing to escape.
    for (i, w) in words(e).iter().enumerate() {
        if i > 0 {
            buf.push(' ');
        }
        buf.push('\'');
        buf.push_str(w);
        buf.push('\'');
    }
    buf.push('\n');
}

fn copy_opt(buf: &mut String, v: Option<&str>) {
    match v {
        Some(v) => copy_text(buf, v),
        None => buf.push_str("\\N"),
    }
}

/// A value in COPY text format: backslash, tab, newline and carriage return escaped, NUL
/// replaced (see `observers_core::text`).
fn copy_text(buf: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            // PostgreSQL cannot store NUL in text; error texts from remote peers may hold one.
            '\0' => buf.push(observers_core::text::NUL_REPLACEMENT),
            c => buf.push(c),
        }
    }
}

/// Appends what is written to it in COPY text format (see [`copy_text`]).
struct CopyText<'a>(&'a mut String);

impl std::fmt::Write for CopyText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        copy_text(self.0, s);
        Ok(())
    }
}

/// `{"a","b"}`: a `text[]` literal, every item quoted (`"` and `\` escaped).
fn array_literal(items: &[String]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_values_escape_what_the_text_format_reserves() {
        let cases = [
            ("plain", "plain"),
            ("tab\there", "tab\\there"),
            ("line\nbreak\r", "line\\nbreak\\r"),
            ("back\\slash", "back\\\\slash"),
            ("\\N", "\\\\N"),
        ];
        for (input, want) in cases {
            let mut buf = String::new();
            copy_text(&mut buf, input);
            assert_eq!(buf, want, "{input:?}");
        }
    }

    #[test]
    fn array_literals_quote_every_item() {
        let cases: [(&[&str], &str); 4] = [
            (&[], "{}"),
            (&["a"], r#"{"a"}"#),
            (&["a b", "NULL"], r#"{"a b","NULL"}"#),
            (
                &[r#"say "hi""#, r"c:\x", "{,}"],
                r#"{"say \"hi\"","c:\\x","{,}"}"#,
            ),
        ];
        for (items, want) in cases {
            let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(array_literal(&items), want, "{items:?}");
        }
    }
}
