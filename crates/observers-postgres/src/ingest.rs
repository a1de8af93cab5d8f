//! `PostgresChangeLogSink`: appends externally produced changes (Debezium ingest) to
//! `observer_change_log` in ONE statement, so a batch is written whole or not at all. The
//! change log's statement trigger takes the read-horizon lock, as for captured rows.

use async_trait::async_trait;
use observers_core::Result;
use observers_core::stores::changelog::{ChangeLogSink, NewChange};
use sqlx::PgPool;

use crate::error::PgError;

const APPEND: &str = "INSERT INTO observer_change_log
        (entity_type, entity_id, operation, tenant_id, user_id, before, after, changed)
     SELECT e, i, o, t, u, b::jsonb, a::jsonb,
            CASE WHEN c IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(c::jsonb)) END
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                   $7::text[], $8::text[]) WITH ORDINALITY AS x(e, i, o, t, u, b, a, c, n)
      ORDER BY n
     RETURNING id";

/// Writes changes into the change log.
#[derive(Debug, Clone)]
pub struct PostgresChangeLogSink {
    pool: PgPool,
}

impl PostgresChangeLogSink {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn json_text(v: Option<&serde_json::Value>) -> Option<String> {
    v.map(serde_json::Value::to_string)
}

#[async_trait]
impl ChangeLogSink for PostgresChangeLogSink {
    async fn append(&self, changes: &[NewChange]) -> Result<Vec<i64>> {
        let col = |f: &dyn Fn(&NewChange) -> Option<String>| -> Vec<Option<String>> {
            changes.iter().map(f).collect()
        };
        let mut ids: Vec<i64> = sqlx::query_scalar(APPEND)
            .bind(col(&|c| Some(c.entity_type.clone())))
            .bind(col(&|c| Some(c.entity_id.clone())))
            .bind(col(&|c| Some(c.kind.as_str().to_owned())))
            .bind(col(&|c| c.tenant_id.clone()))
            .bind(col(&|c| c.user_id.clone()))
            .bind(col(&|c| json_text(c.before.as_ref())))
            .bind(col(&|c| json_text(c.after.as_ref())))
            .bind(col(&|c| {
                c.changed
                    .as_ref()
                    .map(|cols| serde_json::Value::from(cols.clone()).to_string())
            }))
            .fetch_all(&self.pool)
            .await
            .map_err(PgError::from)?;
        ids.sort_unstable();
        Ok(ids)
    }
}
