//! Endpoints that answered `410 Gone`. A 410 disables delivery to the URL that answered it (not
//! to the action as a whole: with `url = ".../orders/{{ entity_id }}"` one deleted order must not
//! stop the others). Later events for a disabled URL are dead-lettered, never silently skipped;
//! an operator lists the URLs (`observers status`) and re-enables one
//! (`observers actions enable --url URL`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lock;
use crate::error::Result;

/// One disabled target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoneEndpoint {
    /// The URL that answered 410, without user info, query or fragment (so no secret is kept),
    /// or `type:observer#index` for an action without a URL of its own.
    pub target: String,
    /// The observer and action that first met it.
    pub observer: String,
    pub action_index: usize,
    /// What the endpoint said.
    pub reason: String,
    pub disabled_at: DateTime<Utc>,
}

/// Where disabled targets are kept, shared by every process of a deployment.
#[async_trait]
pub trait GoneEndpoints: Send + Sync {
    /// Records `endpoint` as disabled (keeps the first record when it already is).
    async fn disable(&self, endpoint: &GoneEndpoint) -> Result<()>;
    async fn is_disabled(&self, target: &str) -> Result<bool>;
    /// Re-enables `target`, or every target when `None`; returns how many were disabled.
    async fn enable(&self, target: Option<&str>) -> Result<u64>;
    async fn list(&self) -> Result<Vec<GoneEndpoint>>;
}

/// The in-memory store (one process; forgotten at exit).
#[derive(Debug, Default)]
pub struct MemoryGoneEndpoints {
    map: Mutex<BTreeMap<String, GoneEndpoint>>,
}

#[async_trait]
impl GoneEndpoints for MemoryGoneEndpoints {
    async fn disable(&self, endpoint: &GoneEndpoint) -> Result<()> {
        lock(&self.map)
            .entry(endpoint.target.clone())
            .or_insert_with(|| endpoint.clone());
        Ok(())
    }

    async fn is_disabled(&self, target: &str) -> Result<bool> {
        Ok(lock(&self.map).contains_key(target))
    }

    async fn enable(&self, target: Option<&str>) -> Result<u64> {
        let mut map = lock(&self.map);
        if let Some(t) = target {
            return Ok(u64::from(map.remove(t).is_some()));
        }
        let n = map.len() as u64;
        map.clear();
        Ok(n)
    }

    async fn list(&self) -> Result<Vec<GoneEndpoint>> {
        Ok(lock(&self.map).values().cloned().collect())
    }
}

/// `url` as a disable target: scheme, host, port and path; user info, query and fragment are
/// dropped (they may hold secrets, and a 410 is about the resource, not its parameters).
pub fn url_target(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(target: &str) -> GoneEndpoint {
        GoneEndpoint {
            target: target.into(),
            observer: "o".into(),
            action_index: 0,
            reason: "410".into(),
            disabled_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn disable_enable_list() {
        let s = MemoryGoneEndpoints::default();
        s.disable(&gone("http://a/1")).await.unwrap();
        s.disable(&gone("http://a/2")).await.unwrap();
        assert!(s.is_disabled("http://a/1").await.unwrap());
        assert!(!s.is_disabled("http://a/3").await.unwrap());
        assert_eq!(s.enable(Some("http://a/1")).await.unwrap(), 1);
        assert_eq!(s.enable(Some("http://a/1")).await.unwrap(), 0);
        assert_eq!(s.list().await.unwrap().len(), 1);
        assert_eq!(s.enable(None).await.unwrap(), 1);
        assert!(s.list().await.unwrap().is_empty());
    }

    #[test]
    fn targets_drop_secrets_and_parameters() {
        let cases = [
            (
                "https://u:p@h.example/orders/7?token=s#x",
                "https://h.example/orders/7",
            ),
            ("http://h:8080/a/b", "http://h:8080/a/b"),
        ];
        for (url, want) in cases {
            assert_eq!(url_target(&url::Url::parse(url).unwrap()), want);
        }
    }
}
