//! Which job queue a queued action goes to (`queue = "name"`, `priority = N`) and which queues
//! the workers of `observers run` and `observers worker` serve (`[queue] queues`).

use super::model::{ActionConfig, ActionMode, Config};

/// The queue of a queued action that names none.
pub const DEFAULT_QUEUE: &str = "default";

/// The lowest `priority` an action may take.
pub const MIN_PRIORITY: i32 = -1000;

/// The highest `priority` an action may take.
pub const MAX_PRIORITY: i32 = 1000;

/// Queue names are short and plain: they show in `jobs stats`, metrics labels and logs.
const MAX_QUEUE_NAME: usize = 63;

/// Checks a queue name: 1 to 63 ASCII letters, digits, `_`, `-`, `.` or `:`.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("queue name is empty".into());
    }
    if name.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "queue name `{name}` is longer than {MAX_QUEUE_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "queue name `{name}` holds `{c}`; use ASCII letters, digits, `_`, `-`, `.` or `:`"
        ));
    }
    Ok(())
}

impl ActionConfig {
    /// The `queue` and `priority` keys as written (for the action types that can be queued).
    fn placement(&self) -> (Option<&str>, i32) {
        match self {
            ActionConfig::Webhook(c) => (c.queue.as_deref(), c.priority),
            ActionConfig::Slack(c) => (c.queue.as_deref(), c.priority),
            ActionConfig::Email(c) => (c.queue.as_deref(), c.priority),
            ActionConfig::Nats(c) => (c.queue.as_deref(), c.priority),
            ActionConfig::RabbitMq(c) => (c.queue.as_deref(), c.priority),
            ActionConfig::Log(_) | ActionConfig::Cache(_) => (None, 0),
        }
    }

    /// The job queue this action's jobs go to when it is queued.
    pub fn job_queue(&self) -> &str {
        self.placement().0.unwrap_or(DEFAULT_QUEUE)
    }

    /// The priority of this action's jobs: higher runs first within its queue.
    pub fn job_priority(&self) -> i32 {
        self.placement().1
    }

    /// Checks `queue` and `priority`; the error names the key (`queue` or `priority`).
    pub fn check_placement(&self) -> Result<(), (&'static str, String)> {
        let (queue, priority) = self.placement();
        let queued = self.mode() == ActionMode::Queued;
        if let Some(name) = queue {
            if !queued {
                return Err((
                    "queue",
                    "queue applies only to queued actions; set mode = \"queued\" or remove it"
                        .into(),
                ));
            }
            check_queue_name(name).map_err(|e| ("queue", e))?;
        }
        if priority != 0 && !queued {
            return Err((
                "priority",
                "priority applies only to queued actions; set mode = \"queued\" or remove it"
                    .into(),
            ));
        }
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&priority) {
            return Err((
                "priority",
                format!(
                    "priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {priority}"
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The queues workers serve: `[queue] queues` when it lists any; otherwise `default` and
    /// every queue a queued action of the config names, sorted.
    pub fn served_queues(&self) -> Vec<String> {
        if !self.queue.queues.is_empty() {
            return self.queue.queues.clone();
        }
        let mut queues = vec![DEFAULT_QUEUE.to_owned()];
        for action in self.observers.iter().flat_map(|o| &o.actions) {
            let action = action.get_ref();
            if action.mode() == ActionMode::Queued {
                queues.push(action.job_queue().to_owned());
            }
        }
        queues.sort();
        queues.dedup();
        queues
    }

    /// Queues that queued actions send to but `[queue] queues` leaves out: no worker of this
    /// config serves them (another process must).
    pub fn unserved_queues(&self) -> Vec<String> {
        let served = self.served_queues();
        let mut unserved: Vec<String> = self
            .observers
            .iter()
            .flat_map(|o| &o.actions)
            .map(toml::Spanned::get_ref)
            .filter(|a| a.mode() == ActionMode::Queued)
            .map(|a| a.job_queue().to_owned())
            .filter(|q| !served.contains(q))
            .collect();
        unserved.sort();
        unserved.dedup();
        unserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_checked() {
        for ok in [
            "default",
            "emails",
            "high-priority",
            "tenant.a",
            "a:b",
            "Q_1",
        ] {
            assert_eq!(check_queue_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("has space", "holds ` `"),
            ("naïve", "holds `ï`"),
            (&"q".repeat(64), "longer than 63"),
        ] {
            let err = check_queue_name(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
