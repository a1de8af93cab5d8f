//! `type = "cache"`: invalidates cached entries (keys, globs, an entity's action results, an
//! action type's results). Globs go through `CacheBackend::delete_pattern` (Redis: `SCAN` +
//! `UNLINK`, never `KEYS`); glob characters from row values in a pattern are escaped, so only
//! the pattern's own `*`, `?` and `[..]` match.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Action, ActionResult, Invocation, render, template, template_as};
use crate::config::CacheActionConfig;
use crate::error::{ObserverError, Result};
use crate::executor::CachedActionExecutor;
use crate::template::{Escape, Template};

pub struct CacheAction {
    keys: Vec<Template>,
    patterns: Vec<Template>,
    entity: bool,
    action_types: Vec<String>,
    cache: Option<Arc<CachedActionExecutor>>,
}

impl CacheAction {
    pub fn new(
        config: &CacheActionConfig,
        cache: Option<Arc<CachedActionExecutor>>,
    ) -> Result<Self> {
        Ok(Self {
            keys: config
                .keys
                .iter()
                .map(|k| template("keys", k))
                .collect::<Result<_>>()?,
            patterns: config
                .patterns
                .iter()
                .map(|p| template_as("patterns", p, Escape::Glob))
                .collect::<Result<_>>()?,
            entity: config.invalidate_entity,
            action_types: config.invalidate_action_types.clone(),
            cache,
        })
    }
}

#[async_trait]
impl Action for CacheAction {
    fn type_name(&self) -> &'static str {
        "cache"
    }

    async fn execute(&self, inv: &Invocation<'_>) -> Result<ActionResult> {
        let cache = self.cache.as_ref().ok_or_else(|| {
            ObserverError::permanent(
                "OBS-CACHE-DISABLED",
                "the cache action needs the action cache; set [cache] enabled = true",
            )
        })?;
        let mut removed = 0;
        for t in &self.keys {
            removed += cache.invalidate_key(&render(t, inv.template)?).await?;
        }
        for t in &self.patterns {
            removed += cache.invalidate_pattern(&render(t, inv.template)?).await?;
        }
        if self.entity {
            removed += cache
                .invalidate_entity(&inv.event.entity_type, &inv.event.entity_id)
                .await?;
        }
        for t in &self.action_types {
            removed += cache.invalidate_action_type(t).await?;
        }
        Ok(ActionResult::new(format!("invalidated {removed} entries")))
    }
}
