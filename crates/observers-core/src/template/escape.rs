//! Context-aware output of template values, so a row value can never reshape what it lands in.
//!
//! - [`Escape::Json`] (webhook bodies): every `{{ value }}` becomes JSON. Inside a JSON string
//!   of the template (`"customer": "{{ new.customer }}"`) it is the value's text, JSON-escaped
//!   (quotes, backslashes, control characters), so it stays inside that string. Outside a
//!   string (`"total": {{ new.total }}`) it is the value as a JSON value: numbers and booleans
//!   as they are, strings quoted, objects and arrays as JSON, none and undefined as `null`.
//!   A value marked safe (`| tojson`, `| safe`) outside a string goes in as written.
//! - [`Escape::Url`] (webhook URLs): in the path, query and fragment every byte of a value but
//!   the unreserved ones (`A-Z a-z 0-9 - . _ ~`) is percent-encoded, so `/`, `?`, `&`, `=`, `#`
//!   from row data stay data. Before the path (scheme, host, port: refused by validation unless
//!   `allow_templated_host = true`) and for values marked safe, the text goes in as written.
//! - [`Escape::Glob`] (cache invalidation patterns): `*`, `?`, `[`, `]`, `\` in values are
//!   escaped, so a value matches only itself.
//!
//! Json and Url need to know where a value lands, which only the whole output says: the
//! formatter writes a placeholder per value and keeps the value aside; [`finish`] then walks the
//! output once and puts each value in, encoded for its position.

use std::cell::RefCell;
use std::fmt::Write as _;

use minijinja::{Error, Output, State, Value};

/// How the values of a template are written out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Escape {
    /// As text (subjects, messages, header values, cache keys).
    #[default]
    Plain,
    /// As JSON, by position (webhook bodies).
    Json,
    /// Percent-encoded in the path, query and fragment (webhook URLs).
    Url,
    /// With glob metacharacters escaped (cache invalidation patterns).
    Glob,
}

const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

thread_local! {
    /// The values of the render in progress on this thread (rendering is synchronous).
    static PENDING: RefCell<Vec<Value>> = const { RefCell::new(Vec::new()) };
}

/// The value as text, as the default formatter would write it.
fn text(value: &Value) -> String {
    if value.is_undefined() {
        String::new()
    } else {
        value.to_string()
    }
}

/// The formatter of an environment compiled for `escape`.
pub(super) fn formatter(
    escape: Escape,
) -> impl Fn(&mut Output, &State, &Value) -> Result<(), Error> + Send + Sync + 'static {
    move |out, _state, value| {
        match escape {
            Escape::Plain => out.write_str(&text(value))?,
            Escape::Glob => out.write_str(&crate::executor::escape_glob(&text(value)))?,
            Escape::Json | Escape::Url => {
                let index = PENDING.with(|p| {
                    let mut p = p.borrow_mut();
                    p.push(value.clone());
                    p.len() - 1
                });
                write!(out, "{OPEN}{index}{CLOSE}")?;
            }
        }
        Ok(())
    }
}

/// Runs one render with a fresh set of pending values and returns them with the output.
pub(super) fn collect<T>(render: impl FnOnce() -> T) -> (T, Vec<Value>) {
    PENDING.with(|p| p.borrow_mut().clear());
    let out = render();
    let values = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    (out, values)
}

/// Puts the values kept aside back into `rendered`, each encoded for where it landed.
pub(super) fn finish(escape: Escape, rendered: &str, values: &[Value]) -> Result<String, String> {
    let mut out = String::with_capacity(rendered.len());
    let mut state = Position::default();
    let mut chars = rendered.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != OPEN {
            state.step(escape, c, &out);
            out.push(c);
            continue;
        }
        let rest = &rendered[i + OPEN.len_utf8()..];
        let Some(end) = rest.find(CLOSE) else {
            return Err("a template placeholder was not closed".into());
        };
        let value = rest[..end]
            .parse::<usize>()
            .ok()
            .and_then(|n| values.get(n))
            .ok_or("a template placeholder names no value")?;
        for _ in 0..=rest[..end].chars().count() {
            chars.next();
        }
        let piece = match escape {
            Escape::Json => state.json(value)?,
            Escape::Url => state.url(value),
            Escape::Plain | Escape::Glob => Piece::Encoded(text(value)),
        };
        let raw = matches!(piece, Piece::Raw(_));
        let piece = piece.into_string();
        if raw {
            // Text the template author let in as written: it moves the position like literal
            // text does.
            for c in piece.chars() {
                state.step(escape, c, &out);
                out.push(c);
            }
        } else {
            out.push_str(&piece);
        }
    }
    Ok(out)
}

enum Piece {
    /// Encoded for its position: does not move it.
    Encoded(String),
    /// As written.
    Raw(String),
}

impl Piece {
    fn into_string(self) -> String {
        match self {
            Piece::Encoded(s) | Piece::Raw(s) => s,
        }
    }
}

/// Where in the output the walk is.
#[derive(Debug, Default)]
struct Position {
    // JSON
    in_string: bool,
    escaped: bool,
    // URL
    url_part: UrlPart,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum UrlPart {
    #[default]
    Authority,
    Path,
    Query,
    Fragment,
}

impl Position {
    fn step(&mut self, escape: Escape, c: char, before: &str) {
        match escape {
            Escape::Json => {
                if self.in_string {
                    if self.escaped {
                        self.escaped = false;
                    } else if c == '\\' {
                        self.escaped = true;
                    } else if c == '"' {
                        self.in_string = false;
                    }
                } else if c == '"' {
                    self.in_string = true;
                }
            }
            Escape::Url => {
                self.url_part = match (self.url_part, c) {
                    // The path starts at the first `/` after `scheme://host`.
                    (UrlPart::Authority, '/') if past_authority_start(before) => UrlPart::Path,
                    (UrlPart::Authority | UrlPart::Path, '?') => UrlPart::Query,
                    (UrlPart::Authority | UrlPart::Path | UrlPart::Query, '#') => UrlPart::Fragment,
                    (part, _) => part,
                };
            }
            Escape::Plain | Escape::Glob => {}
        }
    }

    fn json(&self, value: &Value) -> Result<Piece, String> {
        if self.in_string {
            let quoted = serde_json::to_string(&text(value)).map_err(|e| e.to_string())?;
            let inner = &quoted[1..quoted.len() - 1];
            return Ok(Piece::Encoded(inner.to_owned()));
        }
        if value.is_safe() {
            return Ok(Piece::Raw(text(value)));
        }
        if value.is_undefined() || value.is_none() {
            return Ok(Piece::Encoded("null".into()));
        }
        // As `tojson` writes it: an exact number (more digits than a double) stays a number.
        serde_json::to_string(&super::TemplateJson(value))
            .map(Piece::Encoded)
            .map_err(|e| format!("a value cannot be written as JSON: {e}"))
    }

    fn url(&self, value: &Value) -> Piece {
        if self.url_part == UrlPart::Authority || value.is_safe() {
            return Piece::Raw(text(value));
        }
        let mut out = String::new();
        for b in text(value).bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        Piece::Encoded(out)
    }
}

/// Whether `before` (the output so far) holds `scheme://` and at least one character of host,
/// so a `/` now starts the path.
fn past_authority_start(before: &str) -> bool {
    before
        .find("://")
        .is_some_and(|at| before.len() > at + "://".len())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::Escape;
    use crate::event::{EntityEvent, EventKind};
    use crate::template::{Template, TemplateContext};

    fn render(escape: Escape, source: &str, row: Json) -> String {
        let event = EntityEvent::new(1, "Order", "o/1?x#", EventKind::Insert, None, Some(row));
        let ctx = TemplateContext::new(&event, "obs");
        Template::compile_as(source, escape)
            .unwrap()
            .render(&ctx)
            .unwrap()
    }

    fn json_body(source: &str, row: Json) -> Json {
        let out = render(Escape::Json, source, row);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    #[test]
    fn a_row_value_cannot_add_json_members() {
        let hostile = r#"x", "role": "admin"#;
        let body = json_body(
            r#"{"role": "user", "customer": "{{ new.customer }}"}"#,
            json!({"customer": hostile}),
        );
        assert_eq!(body, json!({"role": "user", "customer": hostile}));
    }

    #[test]
    fn values_inside_strings_are_escaped_and_outside_are_json_values() {
        let row = json!({
            "s": "a\\b\"c\n\u{1}d \u{E000}0\u{E001}",
            "n": 150,
            "f": 1.5,
            "b": true,
            "o": {"k": [1, "two"]},
            "z": null,
        });
        let cases = [
            (r#"{"v": "{{ new.s }}"}"#, json!({"v": row["s"]})),
            (
                r#"{"v": "pre \"{{ new.s }}\" post"}"#,
                json!({"v": format!("pre \"{}\" post", row["s"].as_str().unwrap())}),
            ),
            (r#"{"v": {{ new.s }}}"#, json!({"v": row["s"]})),
            (
                r#"{"v": {{ new.n }}, "f": {{ new.f }}, "b": {{ new.b }}}"#,
                json!({"v": 150, "f": 1.5, "b": true}),
            ),
            (r#"{"v": {{ new.o }}}"#, json!({"v": {"k": [1, "two"]}})),
            (
                r#"{"v": {{ new.z }}, "w": {{ new.missing }}}"#,
                json!({"v": null, "w": null}),
            ),
            (
                r#"{"v": {{ new.o | tojson }}}"#,
                json!({"v": {"k": [1, "two"]}}),
            ),
            (r#"{"v": "{{ new.n }} items"}"#, json!({"v": "150 items"})),
            (
                r#"{"id": "{{ entity_id }}", "list": [{% for c in new.o.k %}{{ c }}{% if not loop.last %}, {% endif %}{% endfor %}]}"#,
                json!({"id": "o/1?x#", "list": [1, "two"]}),
            ),
        ];
        for (source, want) in cases {
            assert_eq!(json_body(source, row.clone()), want, "{source}");
        }
    }

    #[test]
    fn url_values_are_percent_encoded_in_path_and_query() {
        let row = json!({"q": "a&b=c d/e?#%", "base": "http://api.example:8080"});
        let out = render(
            Escape::Url,
            "http://api/orders/{{ entity_id }}/x?q={{ new.q }}&k=1#{{ new.q }}",
            row.clone(),
        );
        assert_eq!(
            out,
            "http://api/orders/o%2F1%3Fx%23/x?q=a%26b%3Dc%20d%2Fe%3F%23%25&k=1#a%26b%3Dc%20d%2Fe%3F%23%25"
        );
        let url = url::Url::parse(&out).unwrap();
        assert_eq!(url.path_segments().unwrap().count(), 3);
        assert_eq!(
            url.query_pairs().collect::<Vec<_>>(),
            [
                ("q".into(), "a&b=c d/e?#%".into()),
                ("k".into(), "1".into())
            ]
        );
        // Before the path (only with allow_templated_host), as written.
        assert_eq!(
            render(Escape::Url, "{{ new.base }}/o/{{ entity_id }}", row),
            "http://api.example:8080/o/o%2F1%3Fx%23"
        );
    }

    #[test]
    fn glob_characters_from_rows_are_escaped() {
        assert_eq!(
            render(
                Escape::Glob,
                "product:{{ new.sku }}:*",
                json!({"sku": "a*b?[c]\\"})
            ),
            "product:a\\*b\\?\\[c\\]\\\\:*"
        );
    }

    #[test]
    fn plain_templates_are_unchanged() {
        assert_eq!(
            render(
                Escape::Plain,
                "{{ new.s }} {{ new.n }}",
                json!({"s": "x\"y", "n": 2})
            ),
            "x\"y 2"
        );
    }
}
