//! Config loading: a valid file, and a table of broken ones with where each error points.

use super::*;

fn env(var: &str) -> Option<String> {
    match var {
        "API_KEY" => Some("k-123".into()),
        "SECRET" => Some("whsec_c2VjcmV0".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str("observers.toml", text, &env)
}

const VALID: &str = r#"
[source]
listener_id = "orders"
batch_size = 500
poll_interval = "250ms"

[executor]
max_in_flight = 16
action_timeout = "5s"

[retry]
max_attempts = 4
initial_backoff = "50ms"
max_backoff = "2s"

[[observers]]
name = "big-paid-orders"
entity = "Order"
events = ["insert", "update"]
condition = "total > 100 && status == 'paid'"

  [[observers.actions]]
  type = "webhook"
  url = "http://127.0.0.1:8080/hooks/orders/{{ entity_id }}"
  headers = { "X-Api-Key" = "${API_KEY}" }
  timeout = "5s"
  signing_secret = "${SECRET}"

  [[observers.actions]]
  type = "email"
  to = ["ops@example.com"]
  subject = "Order {{ entity_id }}: {{ new.total }}"
  mode = "queued"

[[observers]]
name = "everything"
entity = "*"
tenants = ["acme"]

  [[observers.actions]]
  type = "log"
"#;

#[test]
fn valid_file_loads_with_defaults_and_secrets() {
    let c = load(VALID).unwrap();
    assert_eq!(c.source.listener_id, "orders");
    assert_eq!(c.source.batch_size, 500);
    assert_eq!(c.source.max_batch_bytes, 16 * 1024 * 1024, "default 16 MiB");
    assert_eq!(
        c.source.poll_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.executor.max_in_flight, 16);
    assert_eq!(
        c.executor.max_concurrent_actions,
        ExecutorConfig::default().max_concurrent_actions
    );
    assert_eq!(c.retry.max_attempts, 4);
    assert_eq!(c.observers.len(), 2);
    let o = &c.observers[0];
    assert_eq!(
        o.kinds(),
        vec![crate::EventKind::Insert, crate::EventKind::Update]
    );
    assert!(o.compiled.is_some());
    let ActionConfig::Webhook(w) = o.actions[0].get_ref() else {
        panic!("webhook expected")
    };
    assert_eq!(w.headers["X-Api-Key"].expose(), "k-123");
    assert_eq!(
        format!("{:?}", w.signing_secret),
        "Some(\"***\")",
        "secrets never print"
    );
    assert_eq!(o.actions[1].get_ref().mode(), ActionMode::Queued);
    assert_eq!(c.observers[1].kinds().len(), 3);
    assert_eq!(
        c.observers[1].tenants.as_deref(),
        Some(&["acme".to_owned()][..])
    );
}

/// (description, file text, expected line, key fragment, message fragments)
fn check(text: &str, line: usize, key: &str, fragments: &[&str]) {
    let err = load(text).expect_err("config should be rejected");
    assert_eq!(err.file, "observers.toml");
    assert_eq!(err.line, line, "line of: {err}");
    assert!(err.column >= 1, "column of: {err}");
    assert!(
        err.key.as_deref().unwrap_or("").contains(key),
        "key `{key}` expected in: {err} (key {:?})",
        err.key
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("observers.toml:{line}:")),
        "{shown}"
    );
    for f in fragments {
        assert!(shown.contains(f), "`{f}` expected in: {shown}");
    }
}

const OBS: &str = "[[observers]]\nname = \"o\"\nentity = \"Order\"\n";

#[test]
fn broken_toml() {
    check("[source\nbatch_size = 1\n", 1, "", &["unclosed table"]);
    check("[source]\nbatch_size = = 1\n", 2, "source.batch_size", &[]);
    check("a = \"unterminated\n", 1, "a", &[]);
}

#[test]
fn unknown_keys_are_errors() {
    check(
        "[source]\nbatch_sise = 10\n",
        2,
        "source.batch_sise",
        &["batch_sise", "batch_size"],
    );
    check("[sources]\nx = 1\n", 1, "sources", &["sources"]);
    check(
        &format!("{OBS}colour = \"red\"\n[[observers.actions]]\ntype = \"log\"\n"),
        4,
        "colour",
        &["colour"],
    );
}

#[test]
fn bad_values_name_the_key() {
    check(
        "[source]\nbatch_size = \"many\"\n",
        2,
        "source.batch_size",
        &["\"many\"", "usize"],
    );
    check(
        "[source]\npoll_interval = \"soon\"\n",
        2,
        "source.poll_interval",
        &["invalid duration", "soon"],
    );
    check("[source]\nbatch_size = 0\n", 1, "source", &["batch_size"]);
    check(
        "[source]\nmax_batch_bytes = 10\n",
        1,
        "source",
        &["max_batch_bytes", "at least 1024"],
    );
    check(
        "[source]\nkind = \"binlog\"\n",
        2,
        "source.kind",
        &["binlog", "trigger", "wal"],
    );
    check(
        "[source]\nkind = \"wal\"\nslot = \"My Slot\"\n",
        1,
        "source",
        &["slot", "My Slot", "lower-case"],
    );
    check(
        "[source]\npublication = \"\"\n",
        1,
        "source",
        &["publication", "1 to 63"],
    );
    check(
        "[source]\nwal_delivery = \"direct\"\n",
        1,
        "source",
        &["wal_delivery", "kind = \"wal\"", "\"trigger\""],
    );
    check(
        "[source]\nkind = \"wal\"\nwal_delivery = \"copy\"\n",
        3,
        "source.wal_delivery",
        &["copy", "change_log", "direct"],
    );
    check("[retry]\nmultiplier = 0.5\n", 1, "retry", &["multiplier"]);
    check(
        &format!("{OBS}events = [\"upsert\"]\n[[observers.actions]]\ntype = \"log\"\n"),
        4,
        "observers.events",
        &["upsert"],
    );
}

#[test]
fn bad_condition_names_the_observer() {
    let text = "[[observers]]\nname = \"big-orders\"\nentity = \"Order\"\ncondition = \"total > \"\n[[observers.actions]]\ntype = \"log\"\n";
    check(
        text,
        4,
        "observers[0].condition",
        &["big-orders", "invalid condition"],
    );
}

#[test]
fn unset_variable_names_the_variable() {
    let text = format!(
        "{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://x/\"\nheaders = {{ \"K\" = \"${{NOT_SET_ANYWHERE}}\" }}\n"
    );
    check(
        &text,
        7,
        "observers.actions.headers",
        &["NOT_SET_ANYWHERE", "not set"],
    );
}

#[test]
fn unknown_action_type_lists_the_valid_ones() {
    let text = format!("{OBS}[[observers.actions]]\ntype = \"pager\"\n");
    check(
        &text,
        5,
        "observers.actions.type",
        &["pager", "webhook", "slack", "email", "log"],
    );
}

#[test]
fn action_validation() {
    let cases = [
        ("type = \"webhook\"\nurl = \"ftp://x/\"", "http or https"),
        ("type = \"webhook\"\nurl = \"not a url\"", "url"),
        (
            "type = \"webhook\"\nurl = \"http://x/\"\nmethod = \"P OST\"",
            "method",
        ),
        ("type = \"webhook\"\nurl = \"http://x/{{ entity_id\"", "url"),
        ("type = \"email\"\nto = []\nsubject = \"s\"", "at least one"),
        (
            "type = \"email\"\nto = [\"not-an-address\"]\nsubject = \"s\"",
            "not-an-address",
        ),
        ("type = \"log\"\nlevel = \"loud\"", "loud"),
        (
            "type = \"slack\"\nwebhook_url = \"nope\"\ntext = \"t\"",
            "webhook_url",
        ),
    ];
    for (action, fragment) in cases {
        let text = format!("{OBS}[[observers.actions]]\n{action}\n");
        let err = load(&text).expect_err(action);
        assert_eq!(err.line, 4, "{err}");
        assert!(err.to_string().contains(fragment), "`{fragment}` in {err}");
    }
}

#[test]
fn observers_need_unique_names_and_actions() {
    let twice = format!(
        "{OBS}[[observers.actions]]\ntype = \"log\"\n{OBS}[[observers.actions]]\ntype = \"log\"\n"
    );
    check(&twice, 7, "observers[1].name", &["used twice"]);
    check(OBS, 2, "observers[0].actions", &["no actions"]);
}

#[test]
fn missing_required_field() {
    check(
        "[[observers]]\nname = \"o\"\n[[observers.actions]]\ntype = \"log\"\n",
        1,
        "observers",
        &["entity"],
    );
}

#[test]
fn ha_settings_are_checked() {
    check(
        "[ha]\nenabled = true\nlease_ttl = \"2s\"\nrenew_interval = \"1500ms\"\n",
        1,
        "ha",
        &["renew_interval", "half of lease_ttl"],
    );
    check("\n[ha]\nlease_ttl = \"10ms\"\n", 2, "ha", &["lease_ttl"]);
    check("[ha]\nmax_instances = 0\n", 1, "ha", &["max_instances"]);
    check("[ha]\ngroup = \" \"\n", 1, "ha", &["group"]);
    let ok = load("[ha]\nenabled = true\nlease_ttl = \"2s\"\nrenew_interval = \"1s\"\n").unwrap();
    assert_eq!(ok.ha.max_instances, 10);
}

#[test]
fn webhook_numbers_option_is_checked_where_it_is_written() {
    let base = "[[observers]]\nname = \"o\"\nentity = \"Order\"\n\n  [[observers.actions]]\n  type = \"webhook\"\n  url = \"http://127.0.0.1:1/h\"\n";
    let ok = load(&format!("{base}  numbers = \"string\"\n")).unwrap();
    let ActionConfig::Webhook(w) = ok.observers[0].actions[0].get_ref() else {
        panic!("a webhook")
    };
    assert_eq!(w.numbers, crate::numbers::NumberFormat::String);
    let default = load(base).unwrap();
    let ActionConfig::Webhook(w) = default.observers[0].actions[0].get_ref() else {
        panic!("a webhook")
    };
    assert_eq!(w.numbers, crate::numbers::NumberFormat::Exact);

    let bad = load(&format!("{base}  numbers = \"float\"\n")).unwrap_err();
    assert_eq!(bad.file, "observers.toml");
    assert!(bad.message.contains("`float`"), "{bad}");
    assert!(bad.message.contains("\"exact\""), "{bad}");
    assert!(bad.line >= 5, "points into the action: {bad}");
    assert!(
        bad.key.as_deref().is_some_and(|k| k.contains("actions")),
        "{bad}"
    );

    let with_body = load(&format!(
        "{base}  numbers = \"string\"\n  body = \"{{{{ new.total }}}}\"\n"
    ))
    .unwrap_err();
    assert_eq!(
        with_body.key.as_deref(),
        Some("observers[0].actions[0]"),
        "{with_body}"
    );
    assert!(with_body.message.contains("body"), "{with_body}");
}

#[test]
fn broker_actions_load_and_bad_ones_name_file_line_and_key() {
    let nats = format!(
        "{OBS}[[observers.actions]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"orders.{{{{ event_type }}}}\"\ntoken = \"${{API_KEY}}\"\nmode = \"queued\"\n"
    );
    let c = load(&nats).unwrap();
    let ActionConfig::Nats(n) = c.observers[0].actions[0].get_ref() else {
        panic!("a nats action")
    };
    assert_eq!(n.token.as_ref().map(Secret::expose), Some("k-123"));
    assert_eq!(
        c.observers[0].actions[0].get_ref().mode(),
        ActionMode::Queued
    );
    let rabbit = format!(
        "{OBS}[[observers.actions]]\ntype = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nexchange = \"orders\"\nrouting_key = \"orders.{{{{ event_type }}}}\"\n"
    );
    let c = load(&rabbit).unwrap();
    let summary = c.observers[0].actions[0].get_ref().summary();
    assert!(summary.contains("guest:***@"), "no password in {summary}");

    let action = |body: &str| format!("{OBS}[[observers.actions]]\n{body}");
    // (action body, key fragment, message fragments)
    let cases: [(&str, &str, &[&str]); 10] = [
        (
            "type = \"nats\"\nurl = \"nats://127.0.0.1\"\n",
            "observers.actions",
            &["missing field `subject`"],
        ),
        (
            "type = \"nats\"\nurl = \"http://127.0.0.1\"\nsubject = \"a\"\n",
            "observers[0].actions[0]",
            &["nats action", "url", "nats:// or tls://"],
        ),
        (
            "type = \"nats\"\nurl = \"not a url\"\nsubject = \"a\"\n",
            "observers[0].actions[0]",
            &["url `not a url`"],
        ),
        (
            "type = \"nats\"\nurl = \"nats://h\"\nsubject = \"orders.*\"\n",
            "observers[0].actions[0]",
            &["subject", "wildcard"],
        ),
        (
            "type = \"nats\"\nurl = \"nats://h\"\nsubject = \"a\"\nheaders = { \"Nats-Msg-Id\" = \"x\" }\n",
            "observers[0].actions[0]",
            &["Nats-Msg-Id", "cannot be configured"],
        ),
        (
            "type = \"nats\"\nurl = \"nats://h\"\nsubject = \"a\"\ncredentials = \"/nonexistent/x.creds\"\n",
            "observers[0].actions[0]",
            &["credentials", "/nonexistent/x.creds"],
        ),
        (
            "type = \"rabbitmq\"\nurl = \"amqp://h\"\nrouting_key = \"k\"\n",
            "observers.actions",
            &["missing field `exchange`"],
        ),
        (
            "type = \"rabbitmq\"\nurl = \"amqp://u:hunter2@h\"\nexchange = \"e\"\n",
            "observers.actions",
            &["missing field `routing_key`"],
        ),
        (
            "type = \"rabbitmq\"\nurl = \"redis://u:hunter2@h\"\nexchange = \"e\"\nrouting_key = \"k\"\n",
            "observers[0].actions[0]",
            &["rabbitmq action", "amqp:// or amqps://", "u:***@h"],
        ),
        (
            "type = \"rabbitmq\"\nurl = \"amqp://h\"\nexchange = \"bad exchange\"\nrouting_key = \"k\"\n",
            "observers[0].actions[0]",
            &["exchange `bad exchange`"],
        ),
    ];
    for (body, key, fragments) in cases {
        check(&action(body), 4, key, fragments);
        let shown = load(&action(body)).unwrap_err().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn retention_ages_are_durations_or_off() {
    let defaults = load("").unwrap().retention;
    assert_eq!(
        defaults.change_log,
        Some(std::time::Duration::from_secs(7 * 24 * 3600))
    );
    assert_eq!(
        defaults.events,
        Some(std::time::Duration::from_secs(30 * 24 * 3600))
    );
    let set = load("[retention]\nchange_log = \"off\"\ndlq_resolved = \"12h\"\n")
        .unwrap()
        .retention;
    assert_eq!(set.change_log, None);
    assert_eq!(
        set.dlq_resolved,
        Some(std::time::Duration::from_secs(12 * 3600))
    );
    let bad = load("[retention]\nevents = \"forever\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        bad.contains("retention") && bad.contains("\"off\""),
        "{bad}"
    );
    check("[retention]\nbatch = 0\n", 1, "retention", &["batch"]);
    check(
        "\n[retention]\ninterval = \"0s\"\n",
        2,
        "retention",
        &["interval"],
    );
}

#[test]
fn queued_actions_take_a_queue_and_a_priority() {
    let text = format!(
        "{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://x/\"\nmode = \"queued\"\nqueue = \"slow-hooks\"\npriority = 7\n\
         [[observers.actions]]\ntype = \"email\"\nto = [\"a@example.com\"]\nsubject = \"s\"\n\
         [[observers.actions]]\ntype = \"log\"\n"
    );
    let c = load(&text).unwrap();
    let actions: Vec<&ActionConfig> = c.observers[0]
        .actions
        .iter()
        .map(toml::Spanned::get_ref)
        .collect();
    assert_eq!(
        (actions[0].job_queue(), actions[0].job_priority()),
        ("slow-hooks", 7)
    );
    assert_eq!(
        (actions[1].job_queue(), actions[1].job_priority()),
        ("default", 0)
    );
    assert_eq!(
        c.served_queues(),
        ["default", "slow-hooks"],
        "every named queue by default"
    );
    assert!(c.unserved_queues().is_empty());

    let only = load(&format!("[queue]\nqueues = [\"slow-hooks\"]\n{text}")).unwrap();
    assert_eq!(only.served_queues(), ["slow-hooks"]);
    assert_eq!(
        only.unserved_queues(),
        ["default"],
        "the email action's queue"
    );
}

#[test]
fn bad_queue_placement_names_file_line_and_key() {
    let webhook = "[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://x/\"\n";
    check(
        &format!("{OBS}{webhook}mode = \"queued\"\nqueue = \"no spaces\"\n"),
        8,
        "observers[0].actions[0].queue",
        &["no spaces", "letters, digits"],
    );
    check(
        &format!("{OBS}{webhook}mode = \"queued\"\npriority = 5000\n"),
        8,
        "observers[0].actions[0].priority",
        &["between -1000 and 1000", "5000"],
    );
    check(
        &format!("{OBS}{webhook}queue = \"fast\"\n"),
        7,
        "observers[0].actions[0].queue",
        &["only to queued actions"],
    );
    check(
        &format!("{OBS}{webhook}  priority = -3\n"),
        7,
        "observers[0].actions[0].priority",
        &["only to queued actions"],
    );
    check(
        "[queue]\nqueues = [\"a\", \"\"]\n",
        1,
        "queue",
        &["queues: queue name is empty"],
    );
}
