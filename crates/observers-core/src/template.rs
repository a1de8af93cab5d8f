//! Templates for URLs, headers, subjects and bodies (minijinja, Jinja2 syntax), compiled once.
//!
//! Variables: `id`, `entity_type`, `entity_id`, `event_type`, `tenant_id`, `user_id`,
//! `timestamp`, `new` (row after), `old` (row before), `changes`, `changed` and `observer`.
//! Numbers render with the digits PostgreSQL wrote (see [`json_value`]).
//! A template compiled [`Template::compile_as`] an [`Escape`] writes each value encoded for
//! where it lands (JSON bodies, URLs, glob patterns; see `escape`).

mod escape;

use std::sync::{Arc, OnceLock};

use minijinja::value::{Kwargs, Object, ObjectRepr, ValueKind};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;
use serde_json::Value as Json;

use crate::event::EntityEvent;

pub use escape::Escape;

const NAME: &str = "t";

/// A compiled template; plain text without `{{`/`{%` renders as itself with no engine work.
#[derive(Clone)]
pub struct Template {
    source: Arc<str>,
    env: Option<Arc<Environment<'static>>>,
    escape: Escape,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Template").field(&self.source).finish()
    }
}

fn is_templated(source: &str) -> bool {
    source.contains("{{") || source.contains("{%")
}

/// Checks a template's syntax, for config validation.
pub fn check(source: &str) -> Result<(), String> {
    Template::compile(source).map(|_| ())
}

impl Template {
    pub fn compile(source: &str) -> Result<Self, String> {
        Self::compile_as(source, Escape::Plain)
    }

    /// Compiles a template whose values are written encoded for `escape`.
    pub fn compile_as(source: &str, escape: Escape) -> Result<Self, String> {
        let env = if is_templated(source) {
            let mut env = Environment::new();
            env.set_undefined_behavior(UndefinedBehavior::Chainable);
            env.add_filter("tojson", tojson);
            env.add_filter("float", float);
            if escape != Escape::Plain {
                env.set_formatter(escape::formatter(escape));
            }
            env.add_template_owned(NAME, source.to_owned())
                .map_err(|e| format!("template `{source}`: {e}"))?;
            Some(Arc::new(env))
        } else {
            None
        };
        Ok(Self {
            source: source.into(),
            env,
            escape,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn render(&self, ctx: &TemplateContext<'_>) -> Result<String, String> {
        let Some(env) = &self.env else {
            return Ok(self.source.to_string());
        };
        let render = || {
            env.get_template(NAME)
                .and_then(|t| t.render(ctx.value()))
                .map_err(|e| format!("template `{}`: {e}", self.source))
        };
        match self.escape {
            Escape::Plain | Escape::Glob => render(),
            Escape::Json | Escape::Url => {
                let (rendered, values) = escape::collect(render);
                escape::finish(self.escape, &rendered?, &values)
                    .map_err(|e| format!("template `{}`: {e}", self.source))
            }
        }
    }
}

/// The variables a template sees, for one event and observer. The engine value is built on
/// first use only, so actions without templates (a fixed URL, the default body) cost nothing.
#[derive(Debug)]
pub struct TemplateContext<'a> {
    event: &'a EntityEvent,
    observer: &'a str,
    value: OnceLock<Value>,
}

impl<'a> TemplateContext<'a> {
    pub fn new(event: &'a EntityEvent, observer: &'a str) -> Self {
        Self {
            event,
            observer,
            value: OnceLock::new(),
        }
    }

    fn value(&self) -> &Value {
        self.value.get_or_init(|| {
            let event = self.event;
            let row = |row: Option<&Json>| row.map_or_else(|| Value::from(()), json_value);
            let changes = event
                .changes
                .iter()
                .map(|c| {
                    Value::from_iter([
                        ("field", Value::from(c.field.as_str())),
                        ("old", json_value(&c.old)),
                        ("new", json_value(&c.new)),
                    ])
                })
                .collect::<Vec<_>>();
            Value::from_iter([
                ("id", Value::from(event.id)),
                ("entity_type", Value::from(event.entity_type.as_str())),
                ("entity_id", Value::from(event.entity_id.as_str())),
                ("event_type", Value::from(event.kind.as_str())),
                ("tenant_id", Value::from(event.tenant_id.as_deref())),
                ("user_id", Value::from(event.user_id.as_deref())),
                ("timestamp", Value::from(event.timestamp.to_rfc3339())),
                ("new", row(event.after.as_ref())),
                ("old", row(event.before.as_ref())),
                ("changes", Value::from(changes)),
                (
                    "changed",
                    event
                        .changes
                        .iter()
                        .map(|c| Value::from(c.field.as_str()))
                        .collect(),
                ),
                ("observer", Value::from(self.observer)),
            ])
        })
    }
}

/// A JSON value as a template value. Numbers stay numbers where the engine can hold them
/// without changing their text (integers up to 128 bits, decimals whose double prints the same
/// digits both when rendered and in `tojson`); any other number (`12345678901234567.89`, `150.50`, a 400-digit numeric) becomes an
/// [`ExactNumber`], which prints PostgreSQL's digits and which `tojson` writes as a JSON number.
fn json_value(value: &Json) -> Value {
    match value {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => number_value(n),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(json_value).collect::<Vec<_>>()),
        Json::Object(fields) => fields
            .iter()
            .map(|(k, v)| (k.as_str(), json_value(v)))
            .collect(),
    }
}

fn number_value(n: &serde_json::Number) -> Value {
    if let Some(i) = n.as_i64() {
        return Value::from(i);
    }
    if let Some(u) = n.as_u64() {
        return Value::from(u);
    }
    let text = n.as_str();
    if let Ok(i) = text.parse::<i128>() {
        return Value::from(i);
    }
    if let Ok(f) = text.parse::<f64>() {
        let native = Value::from(f);
        // Native only if both the engine's printing and `tojson`'s give back the same text.
        let json_text = serde_json::Number::from_f64(f);
        if native.to_string() == text && json_text.is_some_and(|j| j.as_str() == text) {
            return native;
        }
    }
    Value::from_object(ExactNumber(n.clone()))
}

/// A number no engine type holds exactly: it renders as its exact digits. Compare or compute
/// with it through `| float` (a double) in a template; conditions do the same in CEL.
#[derive(Debug)]
pub struct ExactNumber(serde_json::Number);

impl Object for ExactNumber {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// A template value serialized for `tojson`: as the engine does, except that an
/// [`ExactNumber`] is written as the JSON number it is, not as a string.
struct TemplateJson<'v>(&'v Value);

impl Serialize for TemplateJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        let value = self.0;
        if let Some(n) = value.downcast_object_ref::<ExactNumber>() {
            return n.0.serialize(serializer);
        }
        match value.kind() {
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter().map_err(S::Error::custom)?.collect();
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in &items {
                    seq.serialize_element(&TemplateJson(item))?;
                }
                seq.end()
            }
            ValueKind::Map => {
                let keys: Vec<Value> = value.try_iter().map_err(S::Error::custom)?.collect();
                let mut map = serializer.serialize_map(Some(keys.len()))?;
                for key in &keys {
                    let item = value.get_item(key).map_err(S::Error::custom)?;
                    map.serialize_entry(&TemplateJson(key), &TemplateJson(&item))?;
                }
                map.end()
            }
            _ => value.serialize(serializer),
        }
    }
}

/// The `float` filter, which also takes an [`ExactNumber`] (to the nearest double, ±inf beyond
/// the double range), so `{{ new.amount | float > 100 }}` works for any number.
fn float(state: &minijinja::State, value: &Value) -> Result<Value, Error> {
    match value.downcast_object_ref::<ExactNumber>() {
        Some(n) => Ok(Value::from(crate::numbers::to_f64(&n.0))),
        None => minijinja::filters::float(state, value),
    }
}

/// The `tojson` filter, with exact numbers: `{{ new | tojson }}` writes the row with the digits
/// PostgreSQL wrote. Like the built-in filter, its output is safe in HTML and JSON
/// (`<`, `>`, `&` and `'` are escaped) and `indent` pretty-prints.
// minijinja hands keyword arguments over by value.
#[allow(clippy::needless_pass_by_value)]
fn tojson(value: &Value, indent: Option<Value>, args: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => args.get("indent")?,
    };
    args.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) => match bool::try_from(v.clone()) {
            Ok(true) => Some(2),
            Ok(false) => None,
            Err(_) => Some(usize::try_from(v)?),
        },
    };
    let json = match indent {
        Some(n) => {
            let indentation = " ".repeat(n);
            let mut out = Vec::new();
            let formatter = serde_json::ser::PrettyFormatter::with_indent(indentation.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
            TemplateJson(value)
                .serialize(&mut ser)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8(out)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?
        }
        None => serde_json::to_string(&TemplateJson(value))
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
    };
    let mut safe = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => safe.push_str("\\u003c"),
            '>' => safe.push_str("\\u003e"),
            '&' => safe.push_str("\\u0026"),
            '\'' => safe.push_str("\\u0027"),
            _ => safe.push(c),
        }
    }
    Ok(Value::from_safe_string(safe))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use serde_json::json;

    fn event() -> EntityEvent {
        EntityEvent::new(
            7,
            "Order",
            "42",
            EventKind::Update,
            Some(json!({"total": 10, "status": "new"})),
            Some(json!({"total": 150, "status": "paid", "customer": {"email": "a@b.c"}})),
        )
        .with_tenant("acme")
    }

    #[test]
    fn renders_event_variables() {
        let event = event();
        let ctx = TemplateContext::new(&event, "big-orders");
        let cases = [
            ("Order {{ entity_id }}: {{ new.total }}", "Order 42: 150"),
            ("{{ old.status }} -> {{ new.status }}", "new -> paid"),
            (
                "{{ tenant_id }}/{{ observer }}/{{ event_type }}/{{ id }}",
                "acme/big-orders/update/7",
            ),
            ("{{ new.customer.email }}", "a@b.c"),
            ("{{ changed | join(',') }}", "customer,status,total"),
            ("{{ new.missing.deeper }}", ""),
            ("plain text", "plain text"),
        ];
        for (src, want) in cases {
            let t = Template::compile(src).unwrap();
            assert_eq!(t.render(&ctx).unwrap(), want, "template {src}");
        }
    }

    #[test]
    fn numbers_render_with_their_exact_digits() {
        let huge = format!("1{}", "0".repeat(400));
        let row: Json = serde_json::from_str(&format!(
            r#"{{"amount": 12345678901234567.89, "token": 1.123456789012345678, "huge": {huge},
                "price": 150.50, "plain": 150.5, "tiny": 0.000001, "whole": 100.0, "big": 18446744073709551616,
                "min": -9223372036854775808, "nested": {{"n": [0.10, 2]}}, "s": "<a&b>"}}"#
        ))
        .unwrap();
        let event = EntityEvent::new(1, "Order", "1", EventKind::Insert, None, Some(row));
        let ctx = TemplateContext::new(&event, "o");
        let cases = [
            ("{{ new.amount }}", "12345678901234567.89".to_owned()),
            ("{{ new.token }}", "1.123456789012345678".to_owned()),
            ("{{ new.huge }}", huge.clone()),
            ("{{ new.price }}", "150.50".to_owned()),
            ("{{ new.plain }}", "150.5".to_owned()),
            ("{{ new.whole }}", "100.0".to_owned()),
            ("{{ new.tiny }}", "0.000001".to_owned()),
            ("{{ new.tiny | tojson }}", "0.000001".to_owned()),
            ("{{ new.big }}", "18446744073709551616".to_owned()),
            ("{{ new.min }}", "-9223372036854775808".to_owned()),
            ("{{ new.nested.n[0] }}", "0.10".to_owned()),
            ("{{ changes[0].new }}", "12345678901234567.89".to_owned()),
            // Numbers the engine holds natively still compute; exact ones go through `float`.
            ("{{ new.plain + 1 }}", "151.5".to_owned()),
            ("{{ new.amount | float > 1 }}", "True".to_owned()),
            ("{{ new.nested | tojson }}", r#"{"n":[0.10,2]}"#.to_owned()),
            (
                "{{ new.amount | tojson }}",
                "12345678901234567.89".to_owned(),
            ),
            (
                "{{ new.s | tojson }}",
                r#""\u003ca\u0026b\u003e""#.to_owned(),
            ),
            (
                "{{ {'a': new.price} | tojson(indent=1) }}",
                "{\n \"a\": 150.50\n}".to_owned(),
            ),
        ];
        for (src, want) in cases {
            let t = Template::compile(src).unwrap();
            assert_eq!(t.render(&ctx).unwrap(), want, "template {src}");
        }
        // A JSON body: an exact number outside a string is the JSON number, inside one its text.
        let body = Template::compile_as(
            r#"{"a": {{ new.amount }}, "h": {{ new.huge }}, "s": "{{ new.amount }}"}"#,
            Escape::Json,
        )
        .unwrap()
        .render(&ctx)
        .unwrap();
        assert_eq!(
            body,
            format!(r#"{{"a": 12345678901234567.89, "h": {huge}, "s": "12345678901234567.89"}}"#)
        );
        let whole = Template::compile("{{ new | tojson }}")
            .unwrap()
            .render(&ctx)
            .unwrap();
        let back: Json = serde_json::from_str(&whole).unwrap();
        let mut want = event.after.clone().unwrap();
        want["s"] = Json::from("<a&b>");
        assert_eq!(
            back, want,
            "tojson of the row gives the row back, digit for digit"
        );
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = check("{{ entity_id ").unwrap_err();
        assert!(err.contains("{{ entity_id"), "{err}");
        assert!(check("{% if %}").is_err());
        assert!(check("no template").is_ok());
    }
}
