//! Templates for URLs, headers, subjects and bodies (minijinja, Jinja2 syntax), compiled once.
//!
//! Variables: `id`, `entity_type`, `entity_id`, `event_type`, `tenant_id`, `user_id`,
//! `timestamp`, `new` (row after), `old` (row before), `changes`, `changed` and `observer`.
//! A template compiled [`Template::compile_as`] an [`Escape`] writes each value encoded for
//! where it lands (JSON bodies, URLs, glob patterns; see `escape`).

mod escape;

use std::sync::{Arc, OnceLock};

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

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

#[derive(Serialize)]
struct ContextFields<'a> {
    id: i64,
    entity_type: &'a str,
    entity_id: &'a str,
    event_type: &'a str,
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
    timestamp: String,
    new: &'a Option<serde_json::Value>,
    old: &'a Option<serde_json::Value>,
    changes: &'a [crate::event::FieldChange],
    changed: Vec<&'a str>,
    observer: &'a str,
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
            Value::from_serialize(&ContextFields {
                id: event.id,
                entity_type: &event.entity_type,
                entity_id: &event.entity_id,
                event_type: event.kind.as_str(),
                tenant_id: event.tenant_id.as_deref(),
                user_id: event.user_id.as_deref(),
                timestamp: event.timestamp.to_rfc3339(),
                new: &event.after,
                old: &event.before,
                changes: &event.changes,
                changed: event.changed_fields(),
                observer: self.observer,
            })
        })
    }
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
    fn syntax_errors_are_reported_at_compile_time() {
        let err = check("{{ entity_id ").unwrap_err();
        assert!(err.contains("{{ entity_id"), "{err}");
        assert!(check("{% if %}").is_err());
        assert!(check("no template").is_ok());
    }
}
