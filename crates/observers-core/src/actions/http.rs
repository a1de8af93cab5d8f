//! Shared HTTP plumbing for webhook and Slack actions: one pooled client, the outbound address
//! policy (enforced on the address actually connected, through the client's resolver), and
//! response classification.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Response, StatusCode};

use crate::error::{ObserverError, Result};

/// Which addresses actions may connect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundPolicy {
    /// Also deny RFC 1918, loopback, CGNAT and unique-local ranges.
    pub deny_private_networks: bool,
    /// Allow link-local and cloud-metadata addresses (denied by default).
    pub allow_link_local: bool,
}

impl OutboundPolicy {
    /// Why `ip` is denied, or `None` when allowed.
    pub fn denies(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
            }
        };
        if link_local && !self.allow_link_local {
            return Some("link-local or cloud-metadata address");
        }
        if ip.is_unspecified() || ip.is_multicast() {
            return Some("unspecified or multicast address");
        }
        if self.deny_private_networks {
            let private = match ip {
                IpAddr::V4(v4) => {
                    v4.is_private()
                        || v4.is_loopback()
                        || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                }
                IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
            };
            if private {
                return Some("private-network address (deny_private_networks = true)");
            }
        }
        None
    }

    /// Checks a URL whose host is an IP literal (the resolver is not consulted for those).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<()> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            _ => return Ok(()),
        };
        match self.denies(ip) {
            Some(why) => Err(denied(&ip.to_string(), why)),
            None => Ok(()),
        }
    }
}

fn denied(target: &str, why: &str) -> ObserverError {
    ObserverError::permanent(
        "OBS-OUTBOUND-DENIED",
        format!("refusing to connect to {target}: {why}; see [outbound] in the config reference"),
    )
}

/// Resolves once and filters by policy, so the address connected is the address checked.
#[derive(Debug)]
struct PolicyResolver {
    policy: OutboundPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.denies(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = addrs
                    .first()
                    .and_then(|a| policy.denies(a.ip()))
                    .unwrap_or("no address");
                return Err(
                    Box::new(denied(&host, why)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client every HTTP action shares (connection pooling), redirects off.
#[derive(Debug, Clone)]
pub struct HttpClients {
    pub(crate) client: reqwest::Client,
    pub(crate) policy: OutboundPolicy,
}

impl HttpClients {
    pub fn new(policy: OutboundPolicy) -> Result<Self> {
        // Any process-wide provider already installed wins; ours is only the fallback.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver { policy }))
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("observers/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ObserverError::permanent(
                    "OBS-HTTP-CLIENT",
                    format!("cannot build HTTP client: {e}"),
                )
            })?;
        Ok(Self { client, policy })
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub(crate) fn retry_after(resp: &Response) -> Option<Duration> {
    let value = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Maps a non-2xx response to an error: 408/429/5xx transient, 410 gone, other 4xx permanent.
pub(crate) async fn classify(what: &str, resp: Response) -> ObserverError {
    let status = resp.status();
    let wait = retry_after(&resp);
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let message = crate::redact::text(&format!("{what} answered HTTP {status}: {body}"));
    match status {
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            ObserverError::ActionTransient {
                code: if status == StatusCode::TOO_MANY_REQUESTS {
                    "OBS-HTTP-429"
                } else {
                    "OBS-HTTP-408"
                },
                message,
                retry_after: wait,
            }
        }
        s if s.is_server_error() => ObserverError::ActionTransient {
            code: "OBS-HTTP-5XX",
            message,
            retry_after: wait,
        },
        StatusCode::GONE => ObserverError::permanent("OBS-HTTP-410-GONE", message),
        _ => ObserverError::permanent("OBS-HTTP-4XX", message),
    }
}

/// Maps a transport error: timeouts and connection failures are transient; a policy denial
/// (surfaced through the resolver) is permanent. The client's error text embeds the full URL
/// (a Slack URL is a secret): the URL is dropped and the rest redacted.
pub(crate) fn transport_error(what: &str, err: reqwest::Error) -> ObserverError {
    let err = err.without_url();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    let mut chain = String::new();
    while let Some(e) = source {
        if let Some(obs) = e.downcast_ref::<ObserverError>() {
            return ObserverError::permanent(obs.code(), crate::redact::text(&obs.to_string()));
        }
        let text = e.to_string();
        if !chain.contains(&text) {
            if !chain.is_empty() {
                chain.push_str(": ");
            }
            chain.push_str(&text);
        }
        source = e.source();
    }
    let chain = crate::redact::text(&chain);
    if err.is_timeout() {
        ObserverError::transient(
            "OBS-HTTP-TIMEOUT",
            format!("{what}: request timed out: {chain}"),
        )
    } else if err.is_builder() {
        ObserverError::permanent("OBS-HTTP-REQUEST", format!("{what}: bad request: {chain}"))
    } else {
        ObserverError::transient("OBS-HTTP-CONNECT", format!("{what}: {chain}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        let default = OutboundPolicy::default();
        let strict = OutboundPolicy {
            deny_private_networks: true,
            allow_link_local: false,
        };
        let cases: [(&str, bool, bool); 10] = [
            // ip, denied by default, denied by strict
            ("93.184.216.34", false, false),
            ("127.0.0.1", false, true),
            ("10.1.2.3", false, true),
            ("192.168.1.1", false, true),
            ("100.64.0.1", false, true),
            ("169.254.169.254", true, true),
            ("fe80::1", true, true),
            ("::ffff:169.254.169.254", true, true),
            ("fd12::1", false, true),
            ("0.0.0.0", true, true),
        ];
        for (ip, d, s) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(default.denies(ip).is_some(), d, "default {ip}");
            assert_eq!(strict.denies(ip).is_some(), s, "strict {ip}");
        }
        let allowed = OutboundPolicy {
            allow_link_local: true,
            ..default
        };
        assert!(allowed.denies("169.254.169.254".parse().unwrap()).is_none());
    }
}
