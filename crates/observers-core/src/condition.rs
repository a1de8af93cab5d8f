//! Observer conditions: CEL expressions compiled once at config load and evaluated per event.
//!
//! An expression sees these variables (built once per event by [`ConditionContext::new`], or
//! only those the event's conditions read by [`ConditionContext::for_variables`]):
//!
//! | name | value |
//! |---|---|
//! | `new` | the row after the change; an empty map for a delete, so `new.x` is a clean "no such key" error and `has(new.x)` is false |
//! | `old` | the row before the change; an empty map for an insert |
//! | `changed` | list of the names of the changed columns (`'total' in changed`) |
//! | `event` | map of `entity_type`, `entity_id`, `kind` (`"insert"`, `"update"`, `"delete"`), `tenant_id`, `user_id` (string or null), `timestamp` (a CEL timestamp, compare with `timestamp('2024-01-01T00:00:00Z')`), `id` (the change-log id, int) |
//! | every top-level column | the current row's value: `new`'s, or `old`'s for a delete (what [`EntityEvent::current_row`] returns); a column named like one of the four names above is only reachable as `new.<name>` or `old.<name>` |
//!
//! JSON numbers become CEL `int` when they are integers that fit an i64, `uint` when they only
//! fit a u64, and `double` (the nearest f64) otherwise: a value beyond the double range is
//! ±infinity, so `amount > 1` holds for `1e400`, and digits beyond a double's 15–17 significant
//! ones are rounded (`12345678901234567.89` is compared as `12345678901234568.0`). Only the
//! condition sees these conversions; actions get the exact digits. The cel crate compares numbers across these types by value (as the CEL
//! spec asks), so `total > 100` and `total == 100` hold whether PostgreSQL wrote `150` or
//! `150.5`, `100` or `100.0`. Arithmetic stays strict, as in CEL: `total * 2` fails on a
//! double `total`; write `double(total) * 2.0` when a column may hold either.
//!
//! Besides the CEL standard library, the strings extension (`lowerAscii()`, `trim()`,
//! `split()`, ...) and the math extension (`math.greatest(...)`, ...) are available.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
    CelUInt,
};
use cel::common::value::Val;
use cel::objects::ValueType;
use cel::{Context, Env, ExecutionError, ParseErrors, Program};
use serde_json::Value as Json;

use crate::event::EntityEvent;

/// The names bound by the context itself; a column with one of these names does not shadow it.
const RESERVED: [&str; 4] = ["new", "old", "changed", "event"];

/// The one environment every condition is compiled and evaluated with: the standard library
/// plus the strings and math extensions. Built once; each context only clones the `Arc`.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(build_env()));

fn build_env() -> Env {
    fn extended() -> Result<Env, cel::DeclarationError> {
        let mut env = Env::stdlib();
        env.add_extension(cel::extensions::strings)?;
        env.add_extension(cel::extensions::math)?;
        Ok(env)
    }
    // The extensions declare nothing the standard library has; should that ever change, the
    // conditions still work with the standard library alone.
    extended().unwrap_or_else(|_| Env::stdlib())
}

/// Deepest bracket (`(`, `[`, `{`) nesting a condition may use.
pub const MAX_NESTING: usize = 32;
/// Most operators (other than `&&` and `||`) a condition may use.
pub const MAX_OPERATORS: usize = 1_000;
/// Deepest expression tree a condition may compile to.
pub const MAX_DEPTH: usize = 32;
/// Stack of the thread that parses a condition (reserved address space, touched only as used).
const COMPILE_STACK: usize = 64 << 20;

/// Refuses, before parsing, a condition whose nesting or operator count could exhaust the
/// parser's stack. String literals are skipped; `&&` and `||` are not counted (the parser
/// balances them).
fn precheck(src: &str) -> Result<(), String> {
    let bytes = src.as_bytes();
    let (mut depth, mut operators, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\'' | b'"' => {
                // Skip the literal (escapes included); a triple quote reads as an empty
                // literal followed by a quoted one, which skips the same text.
                i += 1;
                while i < bytes.len() && bytes[i] != b {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "column {}: brackets nested more than {MAX_NESTING} deep; split the condition",
                        src[..i].chars().count() + 1
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b'!' | b'?' | b'.' => {
                operators += 1;
                if operators > MAX_OPERATORS {
                    return Err(format!(
                        "more than {MAX_OPERATORS} operators; split the condition"
                    ));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Parses `src` and checks the tree's depth; runs on the large-stack compiler thread, where a
/// too-deep tree is also dropped.
fn compile_checked(src: &str) -> Result<(Program, Vec<String>), ConditionError> {
    let program = ENV.compile(src).map_err(|errors| ConditionError::Parse {
        expr: src.to_owned(),
        message: parse_message(src, &errors),
    })?;
    let depth = tree_depth(program.expression());
    if depth > MAX_DEPTH {
        return Err(ConditionError::Parse {
            expr: src.to_owned(),
            message: format!(
                "the expression is nested {depth} levels deep, more than {MAX_DEPTH}; split long operator chains"
            ),
        });
    }
    let variables = free_variables(program.expression());
    Ok((program, variables))
}

/// The depth of an expression tree, walked without recursion.
fn tree_depth(root: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(root, 1usize)];
    while let Some((expr, depth)) = todo.pop() {
        deepest = deepest.max(depth);
        let children: Vec<&IdedExpr> = match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => Vec::new(),
            Expr::Select(select) => vec![&*select.operand],
            Expr::Call(call) => call
                .target
                .as_deref()
                .into_iter()
                .chain(&call.args)
                .collect(),
            Expr::List(list) => list.elements.iter().collect(),
            Expr::Map(map) => entry_children(map.entries.iter().map(|e| &e.expr)),
            Expr::Struct(st) => entry_children(st.entries.iter().map(|e| &e.expr)),
            Expr::Comprehension(comp) => vec![
                &comp.iter_range,
                &comp.accu_init,
                &comp.loop_cond,
                &comp.loop_step,
                &comp.result,
            ],
        };
        todo.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    deepest
}

fn entry_children<'e>(entries: impl Iterator<Item = &'e EntryExpr>) -> Vec<&'e IdedExpr> {
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            EntryExpr::StructField(field) => out.push(&field.value),
            EntryExpr::MapEntry(entry) => {
                out.push(&entry.key);
                out.push(&entry.value);
            }
        }
    }
    out
}

/// Why a condition could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// The expression is not valid CEL; `message` gives the position (`column 8: ...`).
    #[error("invalid condition `{expr}`: {message}")]
    Parse { expr: String, message: String },

    /// The expression failed on this event (an unknown name, a missing key, a type mismatch).
    #[error("condition `{expr}` failed: {message}")]
    Eval { expr: String, message: String },

    /// The expression evaluated to something other than a bool.
    #[error("condition `{expr}` evaluated to {got}, not a bool")]
    NotBoolean { expr: String, got: String },
}

impl ConditionError {
    /// The reason without the expression, for output that already shows the expression.
    fn reason(&self) -> String {
        match self {
            ConditionError::Parse { message, .. } | ConditionError::Eval { message, .. } => {
                message.clone()
            }
            ConditionError::NotBoolean { got, .. } => format!("evaluated to {got}, not a bool"),
        }
    }
}

/// A compiled condition. Cheap to clone (the program is shared) and safe to share across
/// threads.
#[derive(Clone)]
pub struct Condition {
    source: Arc<str>,
    program: Arc<Program>,
    variables: Arc<[String]>,
}

impl Condition {
    /// Compiles `src`; done once, when the config is loaded.
    ///
    /// Deep nesting and long operator chains are refused with a clear error rather than
    /// handed to the CEL parser and evaluator, which recurse once per level: brackets nest at
    /// most [`MAX_NESTING`] deep, at most [`MAX_OPERATORS`] operators other than `&&`/`||`
    /// (which the parser balances) appear, and the expression tree is at most [`MAX_DEPTH`]
    /// deep, so evaluation fits a 2 MB worker stack. Parsing itself runs on a thread of its own
    /// with a large stack.
    pub fn compile(src: &str) -> Result<Condition, ConditionError> {
        let too_complex = |message: String| ConditionError::Parse {
            expr: src.to_owned(),
            message,
        };
        precheck(src).map_err(too_complex)?;
        let compiled = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("cel-compile".into())
                .stack_size(COMPILE_STACK)
                .spawn_scoped(scope, || compile_checked(src))
                .map_err(|e| too_complex(format!("cannot start the compiler thread: {e}")))?
                .join()
                .map_err(|_| too_complex("the CEL compiler failed".into()))?
        })?;
        let (program, variables) = compiled;
        Ok(Condition {
            source: src.into(),
            program: Arc::new(program),
            variables: variables.into(),
        })
    }

    /// The expression as written in the config.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The top-level variables the expression reads (`new`, `total`, ...), sorted; the
    /// variables that macros such as `exists(x, ...)` bind are left out.
    pub fn variables(&self) -> Vec<String> {
        self.variables.to_vec()
    }

    /// Evaluates the condition against one event's context.
    pub fn evaluate(&self, ctx: &ConditionContext) -> Result<bool, ConditionError> {
        match self.program.execute(&ctx.inner) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(ConditionError::NotBoolean {
                expr: self.source.to_string(),
                got: describe(&other),
            }),
            Err(err) => Err(ConditionError::Eval {
                expr: self.source.to_string(),
                message: eval_message(&err),
            }),
        }
    }

    /// Evaluates the condition and reports the values of the top-level variables it reads, to
    /// show why it was true or false (`observers debug-event`). Names the event does not bind
    /// are left out of `bindings`; the result then says which one was missing.
    pub fn explain(&self, ctx: &ConditionContext) -> Explanation {
        let result = self.evaluate(ctx).map_err(|err| err.reason());
        let bindings = self
            .variables
            .iter()
            .filter_map(|name| {
                let value = ctx.inner.get_variable(name)?;
                Some((name.clone(), val_to_json(&*value)))
            })
            .collect();
        Explanation { result, bindings }
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&&*self.source).finish()
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Two conditions are equal when they were compiled from the same text (config reload diffs).
impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Condition {}

/// The outcome of [`Condition::explain`].
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The condition's value, or why it could not be evaluated.
    pub result: Result<bool, String>,
    /// Each top-level variable the condition reads, with its value for this event, sorted by
    /// name. Timestamps appear as RFC 3339 strings.
    pub bindings: Vec<(String, Json)>,
}

/// Renders as `true (status = "paid", total = 150)` or `error: ... (total = null)`.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(b) => write!(f, "{b}")?,
            Err(reason) => write!(f, "error: {reason}")?,
        }
        if !self.bindings.is_empty() {
            f.write_str(" (")?;
            for (i, (name, value)) in self.bindings.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{name} = {value}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// One event's variables, converted to CEL values once and read by every observer's condition.
///
/// Build it once per event, on the task that evaluates that event's observers, and pass it by
/// reference to each [`Condition::evaluate`]. It owns its values (no borrow of the event) and
/// is `Send + Sync`.
pub struct ConditionContext {
    inner: Context<'static, 'static>,
}

impl ConditionContext {
    /// Every variable of the table above: for explaining a decision (`debug-event`), where any
    /// condition may be asked about the event.
    pub fn new(event: &EntityEvent) -> ConditionContext {
        let mut inner = Context::with_env(Arc::clone(&ENV));
        if let Some(Json::Object(columns)) = event.current_row() {
            for (name, value) in columns {
                if !RESERVED.contains(&name.as_str()) {
                    inner.add_variable_as_val(name.clone(), json_to_val(value));
                }
            }
        }
        for name in RESERVED {
            bind_reserved(&mut inner, name, event);
        }
        ConditionContext { inner }
    }

    /// Only the variables `variables` names (what a set of conditions reads), each converted
    /// once: a condition on two columns of a wide row converts two values, not the row three
    /// times over (as columns, `new` and `old`). A condition evaluates the same against this
    /// context as against [`ConditionContext::new`]'s, provided `variables` covers it.
    pub fn for_variables(event: &EntityEvent, variables: &Variables) -> ConditionContext {
        let mut inner = Context::with_env(Arc::clone(&ENV));
        let row = match event.current_row() {
            Some(Json::Object(columns)) => Some(columns),
            _ => None,
        };
        for name in variables.names.iter() {
            if RESERVED.contains(&name.as_str()) {
                bind_reserved(&mut inner, name, event);
            } else if let Some(value) = row.and_then(|r| r.get(name.as_str())) {
                inner.add_variable_as_val(name.clone(), json_to_val(value));
            }
        }
        ConditionContext { inner }
    }
}

/// Binds one of [`RESERVED`] for `event`.
fn bind_reserved(inner: &mut Context<'static, 'static>, name: &str, event: &EntityEvent) {
    let value = match name {
        "new" => row_to_val(event.after.as_ref()),
        "old" => row_to_val(event.before.as_ref()),
        "changed" => {
            let changed: Vec<Box<dyn Val>> = event
                .changes
                .iter()
                .map(|change| Box::new(CelString::from(change.field.clone())) as Box<dyn Val>)
                .collect();
            Box::new(CelList::from(changed))
        }
        _ => event_to_val(event),
    };
    inner.add_variable_as_val(name.to_owned(), value);
}

/// The top-level variables a set of conditions reads (the union of their
/// [`Condition::variables`]): what [`ConditionContext::for_variables`] binds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    names: Arc<[String]>,
}

impl Variables {
    pub fn of<'c>(conditions: impl IntoIterator<Item = &'c Condition>) -> Variables {
        let mut names: Vec<String> = conditions
            .into_iter()
            .flat_map(|c| c.variables.iter().cloned())
            .collect();
        names.sort_unstable();
        names.dedup();
        Variables {
            names: names.into(),
        }
    }
}

impl ConditionContext {
    /// A context that binds each key of `fields` as a variable: for filter expressions over
    /// records other than events (e.g. `observers dlq list --filter`).
    pub fn from_fields(fields: &serde_json::Map<String, Json>) -> ConditionContext {
        let mut inner = Context::with_env(Arc::clone(&ENV));
        for (name, value) in fields {
            inner.add_variable_as_val(name.clone(), json_to_val(value));
        }
        ConditionContext { inner }
    }
}

impl fmt::Debug for ConditionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionContext").finish_non_exhaustive()
    }
}

/// A row as a CEL map; a missing or null row is an empty map, so `new.x` on a delete fails
/// with "no such key" and `has(new.x)` is false.
fn row_to_val(row: Option<&Json>) -> Box<dyn Val> {
    match row {
        None | Some(Json::Null) => Box::new(CelMap::from(HashMap::new())),
        Some(value) => json_to_val(value),
    }
}

fn event_to_val(event: &EntityEvent) -> Box<dyn Val> {
    fn optional(value: Option<&String>) -> Box<dyn Val> {
        match value {
            Some(s) => Box::new(CelString::from(s.clone())),
            None => Box::new(CelNull),
        }
    }
    let fields: [(&str, Box<dyn Val>); 7] = [
        (
            "entity_type",
            Box::new(CelString::from(event.entity_type.clone())),
        ),
        (
            "entity_id",
            Box::new(CelString::from(event.entity_id.clone())),
        ),
        (
            "kind",
            Box::new(CelString::from(event.kind.as_str().to_owned())),
        ),
        ("tenant_id", optional(event.tenant_id.as_ref())),
        ("user_id", optional(event.user_id.as_ref())),
        (
            "timestamp",
            Box::new(CelTimestamp::from(event.timestamp.fixed_offset())),
        ),
        ("id", Box::new(CelInt::from(event.id))),
    ];
    let map: HashMap<CelMapKey<'static>, Box<dyn Val>> = fields
        .into_iter()
        .map(|(key, value)| (CelMapKey::from(key.to_owned()), value))
        .collect();
    Box::new(CelMap::from(map))
}

/// Converts JSON straight to CEL values (not through `cel::Value`, which would copy twice).
fn json_to_val(value: &Json) -> Box<dyn Val> {
    match value {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => {
            // The number is its text (exact digits): parse it once as what it looks like.
            let text = n.as_str();
            let integer = text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
            if let Some(i) = integer.then(|| text.parse::<i64>().ok()).flatten() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = integer.then(|| text.parse::<u64>().ok()).flatten() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(crate::numbers::to_f64(n)))
            }
        }
        Json::String(s) => Box::new(CelString::from(s.clone())),
        Json::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_val).collect::<Vec<_>>(),
        )),
        Json::Object(fields) => Box::new(CelMap::from(
            fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.clone()), json_to_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

fn val_to_json(value: &dyn Val) -> Json {
    cel::Value::try_from(value)
        .ok()
        .and_then(|v| v.json().ok())
        .unwrap_or(Json::Null)
}

/// `int 151`, `string "x"`, `map {"a":1}`: the type first, so a reader sees why it is no bool.
fn describe(value: &cel::Value) -> String {
    const MAX_CHARS: usize = 80;
    let shown = value
        .json()
        .map_or_else(|_| format!("{value:?}"), |json| json.to_string());
    let mut short: String = shown.chars().take(MAX_CHARS).collect();
    if short.len() < shown.len() {
        short.push('…');
    }
    let type_name = match value.type_of() {
        ValueType::Float => "double".to_owned(),
        other => other.to_string(),
    };
    format!("{type_name} {short}")
}

fn eval_message(err: &ExecutionError) -> String {
    match err {
        ExecutionError::UndeclaredReference(name) => format!(
            "`{name}` is not defined: it is not a column of this row, nor one of new, old, \
             changed, event, nor a known function"
        ),
        ExecutionError::NoSuchKey(key) => {
            format!("no key `{key}` (the row may not have that column; test with has(...) first)")
        }
        ExecutionError::UnsupportedBinaryOperator(op, lhs, rhs) => {
            let symbol = match *op {
                "add" => "+",
                "sub" => "-",
                "mul" => "*",
                "div" => "/",
                "rem" => "%",
                other => other,
            };
            format!(
                "cannot apply `{symbol}` to {} and {} (CEL arithmetic does not mix int and \
                 double; convert one side with double(...) or int(...))",
                describe(lhs),
                describe(rhs)
            )
        }
        other => other.to_string(),
    }
}

/// What cel's parser lists where any operand would do; shortened to "a value".
const ANY_OPERAND: &str = "{'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, \
                           NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER}";

/// One line per cel error, each with its position, plus a hint for the classic `=` slip.
fn parse_message(src: &str, errors: &ParseErrors) -> String {
    let multiline = src.contains('\n');
    let mut parts: Vec<String> = errors
        .errors
        .iter()
        .map(|e| {
            let msg = e.msg.strip_prefix("Syntax error: ").unwrap_or(&e.msg);
            let msg = msg.replace(ANY_OPERAND, "a value");
            let (line, column) = e.pos;
            if line <= 0 || column <= 0 {
                msg
            } else if multiline {
                format!("line {line}, column {column}: {msg}")
            } else {
                format!("column {column}: {msg}")
            }
        })
        .collect();
    if parts.is_empty() {
        parts.push("not a valid expression".to_owned());
    }
    let mut message = parts.join("; ");
    if has_single_equals(src) {
        message.push_str(" (to compare, write `==`; `=` is not an operator)");
    }
    message
}

/// Whether `src` has an `=` outside quotes that is not part of `==`, `!=`, `<=` or `>=`.
fn has_single_equals(src: &str) -> bool {
    let chars: Vec<char> = src.chars().collect();
    let mut quote: Option<char> = None;
    for (i, &c) in chars.iter().enumerate() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '=' {
            let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
            let after = chars.get(i + 1).copied();
            let paired = matches!(before, Some('=' | '!' | '<' | '>')) || after == Some('=');
            if !paired {
                return true;
            }
        }
    }
    false
}

/// The identifiers the expression reads from its context, sorted: not the ones a macro's
/// comprehension binds (`x` in `items.exists(x, x > 1)`), nor the interpreter's `@` names.
fn free_variables(expr: &IdedExpr) -> Vec<String> {
    fn walk<'e>(expr: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut HashSet<&'e str>) {
        match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                if !name.starts_with('@') && !bound.contains(&name.as_str()) {
                    out.insert(name);
                }
            }
            Expr::Select(select) => walk(&select.operand, bound, out),
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    walk(target, bound, out);
                }
                for arg in &call.args {
                    walk(arg, bound, out);
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    walk(element, bound, out);
                }
            }
            Expr::Map(map) => walk_entries(map.entries.iter().map(|e| &e.expr), bound, out),
            Expr::Struct(st) => walk_entries(st.entries.iter().map(|e| &e.expr), bound, out),
            Expr::Comprehension(comp) => {
                walk(&comp.iter_range, bound, out);
                walk(&comp.accu_init, bound, out);
                let depth = bound.len();
                bound.push(&comp.iter_var);
                if let Some(second) = &comp.iter_var2 {
                    bound.push(second);
                }
                bound.push(&comp.accu_var);
                walk(&comp.loop_cond, bound, out);
                walk(&comp.loop_step, bound, out);
                walk(&comp.result, bound, out);
                bound.truncate(depth);
            }
        }
    }
    fn walk_entries<'e>(
        entries: impl Iterator<Item = &'e EntryExpr>,
        bound: &mut Vec<&'e str>,
        out: &mut HashSet<&'e str>,
    ) {
        for entry in entries {
            match entry {
                EntryExpr::StructField(field) => walk(&field.value, bound, out),
                EntryExpr::MapEntry(entry) => {
                    walk(&entry.key, bound, out);
                    walk(&entry.value, bound, out);
                }
            }
        }
    }
    let mut out = HashSet::new();
    walk(expr, &mut Vec::new(), &mut out);
    let mut names: Vec<String> = out.into_iter().map(str::to_owned).collect();
    names.sort();
    names
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is the test failing
mod tests {
    use super::*;
    use crate::event::EventKind;
    use serde_json::json;

    fn insert(row: Json) -> EntityEvent {
        EntityEvent::new(7, "Order", "42", EventKind::Insert, None, Some(row))
            .with_tenant("acme")
            .with_user("u1")
    }

    fn update(before: Json, after: Json) -> EntityEvent {
        EntityEvent::new(
            8,
            "Order",
            "42",
            EventKind::Update,
            Some(before),
            Some(after),
        )
    }

    fn delete(row: Json) -> EntityEvent {
        EntityEvent::new(9, "Order", "42", EventKind::Delete, Some(row), None)
    }

    /// `expected`: `Ok(bool)`, or `Err(text)` that the error's message must contain.
    fn check(expr: &str, event: &EntityEvent, expected: Result<bool, &str>) {
        let condition =
            Condition::compile(expr).unwrap_or_else(|e| panic!("`{expr}` should compile: {e}"));
        let actual = condition.evaluate(&ConditionContext::new(event));
        // The executor's context binds only what the conditions read (here this one and an
        // unrelated one): it must decide, and fail, exactly as the full context does.
        let other = Condition::compile("status == 'x' && size(changed) > 0").unwrap();
        let only = ConditionContext::for_variables(event, &Variables::of([&condition, &other]));
        assert_eq!(
            condition.evaluate(&only).map_err(|e| e.to_string()),
            actual.as_ref().map(|b| *b).map_err(ToString::to_string),
            "`{expr}`: the executor's context disagrees with the full one"
        );
        match (&actual, expected) {
            (Ok(got), Ok(want)) => assert_eq!(*got, want, "`{expr}` on {event:?}"),
            (Err(err), Err(want)) => assert!(
                err.to_string().contains(want),
                "`{expr}`: error `{err}` should contain `{want}`"
            ),
            _ => panic!("`{expr}`: got {actual:?}, want {expected:?}"),
        }
    }

    fn order() -> Json {
        json!({
            "total": 150, "status": "paid", "email": "ann@example.com",
            "items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 3}, {"sku": "C", "qty": 2}],
            "note": null, "event": "shadowed?", "big": u64::MAX,
        })
    }

    /// An update that moved the status from pending to paid.
    fn paid() -> EntityEvent {
        update(
            json!({"total": 150, "status": "pending"}),
            json!({"total": 150, "status": "paid"}),
        )
    }

    fn check_all(cases: &[(&str, EntityEvent, Result<bool, &str>)]) {
        for (expr, event, expected) in cases {
            check(expr, event, *expected);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn numbers_compare_by_value_across_int_and_double() {
        check_all(&[
            ("total > 100", insert(json!({"total": 150})), Ok(true)),
            ("total > 100", insert(json!({"total": 150.5})), Ok(true)),
            ("total > 100", insert(json!({"total": 99.9})), Ok(false)),
            ("total == 100", insert(json!({"total": 100})), Ok(true)),
            ("total == 100", insert(json!({"total": 100.0})), Ok(true)),
            ("total == 100.0", insert(json!({"total": 100})), Ok(true)),
            ("total >= 99.5 && total < 100.5", insert(json!({"total": 100})), Ok(true)),
            ("big > 0 && big == 18446744073709551615u", insert(order()), Ok(true)),
            ("double(total) * 2.0 > 300.0", insert(json!({"total": 151})), Ok(true)),
            // CEL arithmetic does not mix int and double
            ("total * 2 > 300", insert(json!({"total": 150.5})),
                Err("cannot apply `*` to double 150.5 and int 2")),
        ]);
    }

    /// Numbers as the change log holds them: exact digits beyond what CEL's int and double hold.
    fn exact(text: &str) -> EntityEvent {
        let row: Json = serde_json::from_str(&format!(r#"{{"amount": {text}}}"#)).unwrap();
        insert(row)
    }

    #[test]
    #[rustfmt::skip]
    fn numbers_beyond_double_precision_compare_predictably() {
        let huge = format!("1{}", "0".repeat(400)); // numeric 1e400 as to_jsonb spells it
        check_all(&[
            ("amount > 1", exact(&huge), Ok(true)),
            ("amount > 1", exact("1e400"), Ok(true)),
            ("amount < -1", exact("-1e400"), Ok(true)),
            ("amount == double('inf')", exact(&huge), Ok(true)),
            ("amount > 1", exact("12345678901234567.89"), Ok(true)),
            // Rounded to the nearest double: digits beyond 15–17 significant ones are lost.
            ("amount == 12345678901234568.0", exact("12345678901234567.89"), Ok(true)),
            ("amount > 1.1234567890123456", exact("1.123456789012345678"), Ok(false)),
            ("amount > 1.12345678901234", exact("1.123456789012345678"), Ok(true)),
            // Integers that fit an i64 stay exact ints; beyond it, u64, then double.
            ("amount == 9223372036854775807", exact("9223372036854775807"), Ok(true)),
            ("amount == -9223372036854775808", exact("-9223372036854775808"), Ok(true)),
            ("amount == 18446744073709551615u", exact("18446744073709551615"), Ok(true)),
            ("amount > 1.8e19", exact("18446744073709551616"), Ok(true)),
            // Across types the comparison is in doubles, where 2^64 - 1 and 2^64 are one value.
            ("amount > 18446744073709551615u", exact("18446744073709551616"), Ok(false)),
            ("amount == 100", exact("100.000"), Ok(true)),
            ("amount * 2 > 0", exact(&huge), Err("cannot apply `*` to double")),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn strings_and_boolean_operators() {
        check_all(&[
            ("status == 'paid'", insert(order()), Ok(true)),
            ("status == \"paid\"", insert(order()), Ok(true)),
            ("total > 100 && status == 'paid'", insert(order()), Ok(true)),
            ("total > 100 && status == 'paid'", insert(json!({"total": 150, "status": "open"})), Ok(false)),
            ("total > 200 || status == 'paid'", insert(order()), Ok(true)),
            ("!(status == 'paid')", insert(order()), Ok(false)),
            ("total > 100 ? status == 'refunded' : true", insert(order()), Ok(false)),
            ("email.endsWith('@example.com')", insert(order()), Ok(true)),
            ("email.startsWith('bob') || email.contains('ann')", insert(order()), Ok(true)),
            ("email.upperAscii() == 'ANN@EXAMPLE.COM'", insert(order()), Ok(true)),
            ("note == null && status != null", insert(order()), Ok(true)),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn rows_before_after_and_changed_columns() {
        let repriced = update(json!({"total": 90.5, "status": "paid"}), json!({"total": 120, "status": "paid"}));
        check_all(&[
            ("'status' in changed", paid(), Ok(true)),
            ("'total' in changed", paid(), Ok(false)),
            ("old.status != new.status", paid(), Ok(true)),
            ("old.status == 'pending' && new.status == 'paid'", paid(), Ok(true)),
            ("old.total < 100 && new.total > 100", repriced, Ok(true)),
            ("size(changed) == 0", insert(json!({})), Ok(true)),
            ("has(new.email)", insert(order()), Ok(true)),
            ("has(new.phone)", insert(order()), Ok(false)),
            ("new.items.size() > 2", insert(order()), Ok(true)),
            ("size(new.items) == 3 && new.items[1].qty == 3", insert(order()), Ok(true)),
            ("new.items.exists(i, i.sku == 'B' && i.qty > 2)", insert(order()), Ok(true)),
            ("new.items.all(i, i.qty > 1)", insert(order()), Ok(false)),
            ("new.items.map(i, i.qty).exists(q, q == 2)", insert(order()), Ok(true)),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn event_fields() {
        check_all(&[
            ("event.kind == 'update'", paid(), Ok(true)),
            ("event.kind == 'insert'", insert(order()), Ok(true)),
            ("event.tenant_id == 'acme'", insert(order()), Ok(true)),
            ("event.tenant_id == null && event.user_id == null", paid(), Ok(true)),
            ("event.user_id == 'u1' && event.id == 7", insert(order()), Ok(true)),
            ("event.entity_type == 'Order' && event.entity_id == '42'", paid(), Ok(true)),
            ("event.timestamp > timestamp('2020-01-01T00:00:00Z')", paid(), Ok(true)),
            // a column named `event` does not hide the event; it is reachable through `new`
            ("event.kind == 'insert' && new.event == 'shadowed?'", insert(order()), Ok(true)),
        ]);
    }

    #[test]
    #[rustfmt::skip]
    fn deletes_inserts_and_evaluation_errors() {
        check_all(&[
            // deletes: `new` is empty, bare columns are the deleted row's
            ("event.kind == 'delete' && old.total > 100", delete(order()), Ok(true)),
            ("total > 100", delete(order()), Ok(true)),
            ("has(new.total)", delete(order()), Ok(false)),
            ("new.total > 100", delete(order()), Err("no key `total`")),
            // inserts: `old` is empty
            ("has(old.status)", insert(order()), Ok(false)),
            ("old.status == 'paid'", insert(order()), Err("no key `status`")),
            ("missing > 1", insert(order()), Err("`missing` is not defined")),
            ("new.missing > 1", insert(order()), Err("no key `missing`")),
            ("total + 1", insert(order()), Err("evaluated to int 151, not a bool")),
            ("total + 0.5", insert(json!({"total": 1.5})), Err("evaluated to double 2.0, not a bool")),
            ("status", insert(order()), Err("evaluated to string \"paid\"")),
            ("status > 1", insert(order()), Err("no matching overload")),
        ]);
    }

    #[test]
    fn parse_errors_say_where_and_what() {
        let cases: &[(&str, &[&str])] = &[
            (
                "total >",
                &[
                    "invalid condition `total >`",
                    "column 8",
                    "mismatched input '<EOF>' expecting a value",
                ],
            ),
            ("status = 'paid'", &["column 8", "write `==`"]),
            ("(total > 100", &["column 13", "missing ')'"]),
            ("total > 100)", &["column 12", "extraneous input ')'"]),
            ("total >\n  && x", &["line 2, column 3"]),
            ("", &["column"]),
        ];
        for (expr, wanted) in cases {
            let err = Condition::compile(expr).expect_err(expr);
            assert!(matches!(err, ConditionError::Parse { .. }), "{err:?}");
            let text = err.to_string();
            for want in *wanted {
                assert!(
                    text.contains(want),
                    "`{expr}`: `{text}` should contain `{want}`"
                );
            }
        }
        // `==`, `!=`, `<=`, `>=` and quoted `=` are no slip
        let err = Condition::compile("a <= 1 && b != 'x=y' &&").expect_err("incomplete");
        assert!(!err.to_string().contains("write `==`"), "{err}");
    }

    #[test]
    fn explain_shows_the_values_the_condition_read() {
        let event = insert(json!({"total": 150, "status": "paid", "email": "a@b.c"}));
        let ctx = ConditionContext::new(&event);

        let condition = Condition::compile("total > 100 && status == 'paid'").expect("compiles");
        let explanation = condition.explain(&ctx);
        assert_eq!(explanation.result, Ok(true));
        assert_eq!(
            explanation.bindings,
            [
                ("status".to_owned(), json!("paid")),
                ("total".to_owned(), json!(150))
            ]
        );
        assert_eq!(
            explanation.to_string(),
            "true (status = \"paid\", total = 150)"
        );

        let condition =
            Condition::compile("new.total > 200 || event.kind == 'delete'").expect("compiles");
        let explanation = condition.explain(&ctx);
        assert_eq!(explanation.result, Ok(false));
        let names: Vec<&str> = explanation
            .bindings
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["event", "new"]);
        assert_eq!(explanation.bindings[0].1["kind"], json!("insert"));
        assert!(
            explanation.bindings[0].1["timestamp"].is_string(),
            "timestamps as RFC 3339"
        );
        assert_eq!(
            explanation.bindings[1].1,
            json!({"total": 150, "status": "paid", "email": "a@b.c"})
        );

        let condition = Condition::compile("nope == 1 && total > 1").expect("compiles");
        let explanation = condition.explain(&ctx);
        assert!(
            explanation
                .result
                .as_ref()
                .is_err_and(|e| e.contains("`nope`")),
            "{explanation}"
        );
        assert_eq!(explanation.bindings, [("total".to_owned(), json!(150))]);
    }

    #[test]
    fn variables_leave_out_macro_bindings() {
        let condition =
            Condition::compile("new.items.exists(i, i.qty > limit) && total > 1 && total < 9")
                .expect("compiles");
        assert_eq!(condition.variables(), ["limit", "new", "total"]);
        assert_eq!(
            condition.source(),
            "new.items.exists(i, i.qty > limit) && total > 1 && total < 9"
        );
    }

    #[test]
    fn condition_is_shareable_and_context_is_reusable() {
        fn shareable<T: Send + Sync + Clone + fmt::Debug>() {}
        fn sendable<T: Send + Sync + fmt::Debug>() {}
        shareable::<Condition>();
        sendable::<ConditionContext>();
        shareable::<ConditionError>();

        let a = Condition::compile("total > 100").expect("compiles");
        let b = Condition::compile("status == 'paid'").expect("compiles");
        let ctx = ConditionContext::new(&insert(json!({"total": 150, "status": "open"})));
        for _ in 0..3 {
            assert_eq!(a.evaluate(&ctx), Ok(true));
            assert_eq!(b.clone().evaluate(&ctx), Ok(false));
        }
        assert_eq!(a, Condition::compile("total > 100").expect("compiles"));
        assert_eq!(format!("{a:?}"), "Condition(\"total > 100\")");
    }

    /// Compiles and evaluates `src` on a thread with a 2 MB stack (a tokio worker's), so a
    /// stack overflow aborts the test instead of passing unnoticed on a bigger stack.
    fn on_small_stack(src: String) -> Result<bool, ConditionError> {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let mut fields = serde_json::Map::new();
                fields.insert("a".into(), 1.into());
                let ctx = ConditionContext::from_fields(&fields);
                Condition::compile(&src)?.evaluate(&ctx)
            })
            .expect("thread starts")
            .join()
            .expect("no panic")
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        for (name, src) in [
            (
                "parens",
                format!("{}a{} == 1", "(".repeat(10_000), ")".repeat(10_000)),
            ),
            (
                "lists",
                format!("{}1{} == 1", "[".repeat(10_000), "]".repeat(10_000)),
            ),
            (
                "calls",
                format!("{}a{} == 1", "int(".repeat(10_000), ")".repeat(10_000)),
            ),
            (
                "plus chain",
                format!("{} == 1", vec!["a"; 100_000].join("+")),
            ),
            ("select chain", format!("a{} == 1", ".b".repeat(100_000))),
            (
                "ternary chain",
                format!("{}true", "a == 1 ? true : ".repeat(10_000)),
            ),
            (
                "plus chain past the tree limit",
                format!("{} == 1", vec!["a"; 200].join("+")),
            ),
        ] {
            let err = on_small_stack(src).expect_err(name);
            let ConditionError::Parse { message, .. } = &err else {
                panic!("{name}: {err}");
            };
            assert!(
                message.contains("nested") || message.contains("operators"),
                "{name}: {message}"
            );
        }
    }

    #[test]
    fn conditions_at_the_limits_compile_and_evaluate_on_a_small_stack() {
        let parens = format!(
            "{}a{} == 1",
            "(".repeat(MAX_NESTING),
            ")".repeat(MAX_NESTING)
        );
        assert!(on_small_stack(parens).expect("nesting at the limit"));
        // `a+a+...+a == n`: the tree is one level per `+`, plus `==` and the leaves.
        let terms = MAX_DEPTH - 2;
        let chain = format!("{} == {terms}", vec!["a"; terms].join("+"));
        assert!(on_small_stack(chain).expect("chain at the limit"));
        // `||` chains are balanced by the parser: long ones stay shallow.
        let ors = vec!["a == 2"; 300].join(" || ") + " || a == 1";
        assert!(on_small_stack(ors).expect("long || chain"));
        // Operators inside string literals are not counted.
        let quoted = format!("'{}' != '' && a == 1", "(+".repeat(5_000));
        assert!(on_small_stack(quoted).expect("operators in a string"));
    }
}
