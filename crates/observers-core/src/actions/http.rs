//! Shared HTTP plumbing for webhook and Slack actions: one pooled client, the outbound address
//! policy (enforced on the address actually connected, through the client's resolver), and
//! response classification.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Response, StatusCode};

use crate::error::{ObserverError, Result};

/// Which addresses actions may connect to, and through which proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundPolicy {
    /// Also deny RFC 1918, loopback, CGNAT, unique-local, NAT64, 6to4, IPv4-compatible IPv6,
    /// broadcast and `192.0.0.0/24` addresses.
    pub deny_private_networks: bool,
    /// Allow link-local and cloud-metadata addresses (denied by default).
    pub allow_link_local: bool,
    /// The proxy every action request goes through (`http://host:port`). Unset, the
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` environment variables are ignored. Set, the
    /// target's addresses are resolved and checked before each request.
    pub proxy: Option<String>,
}

/// Cloud metadata endpoints outside the link-local ranges: Alibaba (100.100.100.200), Oracle
/// (192.0.0.192).
const METADATA_V4: [[u8; 4]; 2] = [[100, 100, 100, 200], [192, 0, 0, 192]];

/// The IPv4 address an IPv6 address carries: mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<(std::net::Ipv4Addr, &'static str)> {
    let seg = v6.segments();
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some((v4, "mapped"));
    }
    if seg[..6] == [0; 6] && !(seg[6] == 0 && seg[7] <= 1) {
        return Some((
            std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]),
            "IPv4-compatible IPv6",
        ));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some((
            std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]),
            "NAT64 (64:ff9b::/96)",
        ));
    }
    if seg[0] == 0x2002 {
        return Some((
            std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5]),
            "6to4 (2002::/16)",
        ));
    }
    None
}

impl OutboundPolicy {
    /// Why `ip` is denied, or `None` when allowed.
    pub fn denies(&self, ip: IpAddr) -> Option<&'static str> {
        if let IpAddr::V6(v6) = ip
            && let Some((v4, kind)) = embedded_v4(v6)
        {
            if kind != "mapped" && self.deny_private_networks {
                return Some(match kind {
                    "NAT64 (64:ff9b::/96)" => "NAT64 address (deny_private_networks = true)",
                    "6to4 (2002::/16)" => "6to4 address (deny_private_networks = true)",
                    _ => "IPv4-compatible IPv6 address (deny_private_networks = true)",
                });
            }
            // The IPv4 address inside is what a translator would reach: check it too.
            return self.denies_v4(v4);
        }
        match ip {
            IpAddr::V4(v4) => self.denies_v4(v4),
            IpAddr::V6(v6) => {
                let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254];
                if link_local && !self.allow_link_local {
                    return Some("link-local or cloud-metadata address");
                }
                if v6.is_unspecified() || v6.is_multicast() {
                    return Some("unspecified or multicast address");
                }
                if self.deny_private_networks
                    && (v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00)
                {
                    return Some("private-network address (deny_private_networks = true)");
                }
                None
            }
        }
    }

    fn denies_v4(&self, v4: std::net::Ipv4Addr) -> Option<&'static str> {
        if (v4.is_link_local() || METADATA_V4.contains(&v4.octets())) && !self.allow_link_local {
            return Some("link-local or cloud-metadata address");
        }
        if v4.is_unspecified() || v4.is_multicast() {
            return Some("unspecified or multicast address");
        }
        if self.deny_private_networks {
            let o = v4.octets();
            let private = v4.is_private()
                || v4.is_loopback()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || v4.is_broadcast()
                || (o[0] == 192 && o[1] == 0 && o[2] == 0);
            if private {
                return Some("private-network address (deny_private_networks = true)");
            }
        }
        None
    }

    /// With a proxy, the client never resolves the target: resolve it here and check every
    /// address before the request is sent.
    pub(crate) async fn check_target(&self, url: &reqwest::Url) -> Result<()> {
        self.check_url(url)?;
        if self.proxy.is_none() {
            return Ok(());
        }
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| {
                ObserverError::transient("OBS-HTTP-CONNECT", format!("cannot resolve {host}: {e}"))
            })?
            .collect();
        for a in &addrs {
            if let Some(why) = self.denies(a.ip()) {
                return Err(denied(host, why));
            }
        }
        Ok(())
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
        let policy = self.policy.clone();
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
        let builder = reqwest::Client::builder();
        // reqwest reads HTTP(S)_PROXY by default, which would bypass the address policy:
        // only a configured proxy is used, and targets are then checked before sending.
        let builder = match &policy.proxy {
            None => builder.no_proxy(),
            Some(p) => builder.proxy(reqwest::Proxy::all(p.as_str()).map_err(|e| {
                ObserverError::permanent(
                    "OBS-CONFIG",
                    crate::redact::text(&format!("[outbound] proxy: {e}")),
                )
            })?),
        };
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
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

/// The most of an error response's body that is read (the error keeps its first 200
/// characters); the rest is never downloaded.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Up to `cap` bytes of a response body; a failing read keeps what arrived.
pub(crate) async fn read_capped(mut resp: Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - out.len();
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Maps a non-2xx response to an error: 408/429/5xx transient, 410 gone, other 4xx permanent.
pub(crate) async fn classify(what: &str, resp: Response) -> ObserverError {
    let status = resp.status();
    let wait = retry_after(&resp);
    let body: String = String::from_utf8_lossy(&read_capped(resp, MAX_ERROR_BODY).await)
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
            ..OutboundPolicy::default()
        };
        let cases: [(&str, bool, bool); 22] = [
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
            // Cloud metadata outside link-local: Alibaba, Oracle.
            ("100.100.100.200", true, true),
            ("192.0.0.192", true, true),
            ("192.0.0.8", false, true),
            ("255.255.255.255", false, true),
            // NAT64, 6to4 and IPv4-compatible forms: denied in strict mode; the IPv4 inside is
            // checked always.
            ("64:ff9b::5db8:d822", false, true),
            ("64:ff9b::a9fe:a9fe", true, true),
            ("2002:5db8:d822::1", false, true),
            ("2002:a9fe:a9fe::1", true, true),
            ("::5db8:d822", false, true),
            ("::a9fe:a9fe", true, true),
            ("::1", false, true),
            ("2606:4700::1111", false, false),
        ];
        for (ip, d, s) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(default.denies(ip).is_some(), d, "default {ip}");
            assert_eq!(strict.denies(ip).is_some(), s, "strict {ip}");
        }
        let allowed = OutboundPolicy {
            allow_link_local: true,
            ..default.clone()
        };
        assert!(allowed.denies("169.254.169.254".parse().unwrap()).is_none());
    }
}
