//! Keeps secrets inside the process: every text that is logged, stored (DLQ, job errors),
//! indexed or printed and may hold a URL goes through [`text`] (or [`url`] for a lone URL).
//!
//! What is hidden, as `***`:
//! - the password of a URL's userinfo (`postgres://app:***@db/x`), or a lone username, which
//!   is often a token (`https://***@api.example`);
//! - every query value (`?password=***&sslmode=***`): keys stay, values go;
//! - the fragment;
//! - token paths: everything after `/services/` on `hooks.slack.com`, after `/api/webhooks/` on
//!   Discord, and any path segment that looks like a token (20 or more letters, digits, `-`,
//!   `_`, with at least one letter and one digit);
//! - `password=VALUE` in key/value connection strings (`host=db password=*** user=app`).
//!
//! Host, port and the rest of the path stay, so an operator still sees where a call went.

const MASK: &str = "***";

/// A URL with its secrets hidden. Text that is not a URL comes back unchanged except for
/// `password=` values.
pub fn url(input: &str) -> String {
    match url::Url::parse(input) {
        Ok(u) if input.contains("://") => {
            let normalized = u.to_string();
            let redacted = redact_parsed(u);
            // Nothing hidden: the text as written (a template's `{{ }}` stays readable).
            if redacted == normalized {
                input.to_owned()
            } else {
                redacted
            }
        }
        _ => key_values(input),
    }
}

fn redact_parsed(mut u: url::Url) -> String {
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
    } else if !u.username().is_empty() {
        let _ = u.set_username(MASK);
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if v.is_empty() {
                    String::new()
                } else {
                    MASK.to_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        let query = pairs
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        u.set_query(Some(&query));
    }
    if u.fragment().is_some() {
        u.set_fragment(Some(MASK));
    }
    let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
    let path = u.path().to_owned();
    let new_path = if host == "hooks.slack.com" || host.ends_with(".slack.com") {
        after_prefix(&path, &["/services/", "/workflows/", "/triggers/"])
    } else if host == "discord.com" || host.ends_with(".discord.com") || host == "discordapp.com" {
        after_prefix(&path, &["/api/webhooks/"])
    } else {
        None
    }
    .unwrap_or_else(|| {
        path.split('/')
            .map(|seg| if looks_like_token(seg) { MASK } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    });
    if new_path != path {
        u.set_path(&new_path);
    }
    // `set_path` percent-encodes nothing in `***`; the result is the URL as text.
    u.to_string()
}

fn after_prefix(path: &str, prefixes: &[&str]) -> Option<String> {
    prefixes
        .iter()
        .find(|p| path.starts_with(*p) && path.len() > p.len())
        .map(|p| format!("{p}{MASK}"))
}

fn looks_like_token(seg: &str) -> bool {
    seg.len() >= 20
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && seg.bytes().any(|b| b.is_ascii_alphabetic())
        && seg.bytes().any(|b| b.is_ascii_digit())
}

/// `password=VALUE` (any case, also `passwd=`, `pwd=`) in key/value text.
fn key_values(input: &str) -> String {
    let lower = input.to_ascii_lowercase();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let hit = ["password=", "passwd=", "pwd="]
            .iter()
            .filter_map(|k| lower[i..].find(k).map(|at| (i + at, k.len())))
            .min();
        let Some((at, klen)) = hit else {
            out.push_str(&input[i..]);
            break;
        };
        let start = at + klen;
        out.push_str(&input[i..start]);
        let rest = &input[start..];
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            quoted.find('\'').map_or(rest.len(), |e| e + 2)
        } else {
            rest.find(|c: char| c.is_whitespace() || c == '&' || c == ';' || c == ',')
                .unwrap_or(rest.len())
        };
        if end > 0 {
            out.push_str(MASK);
        }
        i = start + end;
    }
    out
}

/// Characters that end a URL inside free text.
fn ends_url(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '`' | '<' | '>' | '(' | ')' | '{' | '}' | '|' | '\\' | '^'
        )
}

/// Free text (an error message) with every URL in it redacted, and `password=` values hidden.
pub fn text(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find("://") {
        // The scheme: letters, digits, `+`, `-`, `.` before `://`.
        let scheme_start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        let end = rest[at + 3..]
            .find(ends_url)
            .map_or(rest.len(), |e| at + 3 + e);
        out.push_str(&key_values(&rest[..scheme_start]));
        let candidate = &rest[scheme_start..end];
        // Trailing punctuation of the sentence is not part of the URL.
        let trimmed = candidate.trim_end_matches(['.', ',', ';', ':']);
        if scheme_start == at {
            out.push_str(&key_values(candidate));
        } else {
            out.push_str(&url_or_crude(trimmed));
            out.push_str(&candidate[trimmed.len()..]);
        }
        rest = &rest[end..];
    }
    out.push_str(&key_values(rest));
    out
}

/// [`url`], or, for text that does not parse as a URL, everything between `://` and `@`, and
/// after `?`, hidden.
fn url_or_crude(candidate: &str) -> String {
    if url::Url::parse(candidate).is_ok() {
        return url(candidate);
    }
    let Some(at) = candidate.find("://") else {
        return key_values(candidate);
    };
    let (scheme, rest) = candidate.split_at(at + 3);
    let rest = match rest.rfind('@') {
        Some(a) => format!("{MASK}{}", &rest[a..]),
        None => rest.to_owned(),
    };
    let rest = match rest.find('?') {
        Some(q) => format!("{}?{MASK}", &rest[..q]),
        None => rest,
    };
    format!("{scheme}{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cases = [
            (
                "https://hooks.slack.com/services/T0001/B0002/XXXXSECRETXXXX",
                "https://hooks.slack.com/services/***",
            ),
            (
                "postgres://app:hunter2@db:5432/shop?sslmode=require&password=pw2",
                "postgres://app:***@db:5432/shop?sslmode=***&password=***",
            ),
            (
                "https://ghp_token@api.example.com/x",
                "https://***@api.example.com/x",
            ),
            (
                "https://discord.com/api/webhooks/123/abcSECRET",
                "https://discord.com/api/webhooks/***",
            ),
            (
                "http://hooks.example/orders/42?sig=abc#frag",
                "http://hooks.example/orders/42?sig=***#***",
            ),
            ("http://h/x/a1b2c3d4e5f6a7b8c9d0e1f2/y", "http://h/x/***/y"),
            (
                "http://127.0.0.1:8080/hooks/orders",
                "http://127.0.0.1:8080/hooks/orders",
            ),
            (
                "http://api/orders/{{ entity_id }}",
                "http://api/orders/{{ entity_id }}",
            ),
            (
                "host=db password=s3cret user=app",
                "host=db password=*** user=app",
            ),
            (
                "host=db PASSWORD='a b' user=app",
                "host=db PASSWORD=*** user=app",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(url(input), want, "{input}");
        }
    }

    #[test]
    fn urls_inside_text() {
        let cases = [
            (
                "slack: error sending request for url (https://hooks.slack.com/services/T1/B2/SECRET99)",
                "slack: error sending request for url (https://hooks.slack.com/services/***)",
            ),
            (
                "cannot connect to postgres://u:pw@h/db?password=x: refused.",
                "cannot connect to postgres://u:***@h/db?password=***: refused.",
            ),
            (
                "url `http://a/b?token=t` and \"redis://:pw@r:6379/0\"",
                "url `http://a/b?token=***` and \"redis://:***@r:6379/0\"",
            ),
            ("no url, password=abc here", "no url, password=*** here"),
            (
                "weird ://x and http://[bad@host?q=1",
                "weird ://x and http://***@host/?q=***",
            ),
            ("bad http://u:p@[::1?q=1 end", "bad http://***@[::1?*** end"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(text(input), want, "{input}");
        }
    }

    #[test]
    fn hostile_text_never_panics() {
        for s in [
            "://",
            "a://",
            "ü://ä@ö?ü=ß",
            "http://ä@ö/ü?x=ß",
            "password=",
            "pwd='",
            "x://@",
            "http://?",
            "PASSWORD=PASSWORD=",
            "http://h/p?ä=ö&=&&",
        ] {
            let _ = text(s);
            let _ = url(s);
        }
    }
}
