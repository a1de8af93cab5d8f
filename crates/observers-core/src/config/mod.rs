//! The configuration file: one TOML document, `${VAR}` interpolated from the environment,
//! humantime durations, unknown keys rejected, every error located by file, line, column and key.

mod brokers;
mod interpolate;
mod locate;
mod model;
mod queues;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

pub use brokers::{NatsConfig, RabbitMqConfig, nats_subject};
pub use interpolate::interpolate;
pub use model::*;
pub use queues::{DEFAULT_QUEUE, MAX_PRIORITY, MIN_PRIORITY, check_queue_name};

use crate::condition::Condition;

/// A configuration problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path where known, e.g. `observers[1].condition`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn at(file: &str, source: &str, offset: usize, key: Option<String>, message: String) -> Self {
        let (line, column) = locate::line_col(source, offset);
        let key = key.or_else(|| locate::key_at(source, offset));
        Self {
            file: file.to_owned(),
            line,
            column,
            key,
            message,
        }
    }

    fn io(file: &str, message: String) -> Self {
        Self {
            file: file.to_owned(),
            line: 0,
            column: 0,
            key: None,
            message,
        }
    }
}

/// Reads, interpolates, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::io(&name, format!("cannot read config file: {e}")))?;
    load_str(&name, &text, &|var| std::env::var(var).ok())
}

/// Parses and validates config text; `env` resolves `${VAR}`.
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let expanded = interpolate(text, env).map_err(|e| {
        ConfigError::at(
            file,
            text,
            e.offset,
            None,
            format!("environment variable `{}` is not set (used as `${{{}}}`); set it or give a default with `${{{}:-value}}`", e.var, e.var, e.var),
        )
    })?;
    // Interpolation can shift offsets on lines with placeholders; map errors through the
    // expanded text's line/column, which keep the same line numbers (values never add lines).
    let config: Config = toml::from_str(&expanded.text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        ConfigError::at(
            file,
            &expanded.text,
            offset,
            None,
            clean_toml_message(e.message()),
        )
    })?;
    validate(file, &expanded.text, config)
}

/// Where `key = ...` is written in the table whose header `span` covers (up to the next
/// header), else the header's start.
fn key_offset(text: &str, span: std::ops::Range<usize>, key: &str) -> usize {
    let Some(body) = text.get(span.end.min(text.len())..) else {
        return span.start;
    };
    let mut at = span.end;
    for line in body.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            break;
        }
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return at + (line.len() - trimmed.len());
        }
        at += line.len();
    }
    span.start
}

fn clean_toml_message(message: &str) -> String {
    message.trim().replace('\n', " ")
}

fn validate(file: &str, text: &str, mut config: Config) -> Result<Config, ConfigError> {
    let err = |offset: usize, key: String, message: String| {
        ConfigError::at(file, text, offset, Some(key), message)
    };
    let mut names = HashSet::new();
    for (i, observer) in config.observers.iter_mut().enumerate() {
        let name_span = observer.name.span();
        let name = observer.name.get_ref().clone();
        if name.trim().is_empty() {
            return Err(err(
                name_span.start,
                format!("observers[{i}].name"),
                "observer name is empty".into(),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(err(
                name_span.start,
                format!("observers[{i}].name"),
                format!("observer name `{name}` is used twice; names must be unique"),
            ));
        }
        if observer.entity.get_ref().trim().is_empty() {
            return Err(err(
                observer.entity.span().start,
                format!("observers[{i}].entity"),
                format!("observer `{name}`: entity is empty (use \"*\" for every entity)"),
            ));
        }
        if let Some(src) = &observer.condition {
            match Condition::compile(src.get_ref()) {
                Ok(c) => observer.compiled = Some(c),
                Err(e) => {
                    return Err(err(
                        src.span().start,
                        format!("observers[{i}].condition"),
                        format!("observer `{name}`: {e}"),
                    ));
                }
            }
        }
        if observer.actions.is_empty() {
            return Err(err(
                name_span.start,
                format!("observers[{i}].actions"),
                format!("observer `{name}` has no actions; add at least one [[observers.actions]]"),
            ));
        }
        for (j, action) in observer.actions.iter().enumerate() {
            if matches!(action.get_ref(), ActionConfig::Cache(_)) && !config.cache.enabled {
                return Err(err(
                    action.span().start,
                    format!("observers[{i}].actions[{j}]"),
                    format!(
                        "observer `{name}`, cache action: needs the action cache; set [cache] enabled = true"
                    ),
                ));
            }
            if let Err((key, message)) = action.get_ref().check_placement() {
                return Err(err(
                    key_offset(text, action.span(), key),
                    format!("observers[{i}].actions[{j}].{key}"),
                    format!(
                        "observer `{name}`, {} action: {message}",
                        action.get_ref().type_name()
                    ),
                ));
            }
            if let Err(message) = action.get_ref().validate() {
                return Err(err(
                    action.span().start,
                    format!("observers[{i}].actions[{j}]"),
                    format!(
                        "observer `{name}`, {} action: {message}",
                        action.get_ref().type_name()
                    ),
                ));
            }
        }
    }
    let checks = [
        ("breaker", config.breaker.validate()),
        ("executor", config.executor.validate()),
        ("retry", config.retry.validate()),
        ("source", config.source.validate()),
        ("metrics", config.metrics.validate()),
        ("queue", config.queue.validate()),
        ("redis", config.redis.validate()),
        ("dedup", config.dedup.validate()),
        ("cache", config.cache.validate()),
        ("ha", config.ha.validate()),
        ("retention", config.retention.validate()),
    ];
    for (section, result) in checks {
        if let Err(message) = result {
            let offset = text.find(&format!("[{section}]")).unwrap_or(0);
            return Err(err(offset, section.to_owned(), message));
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests;
