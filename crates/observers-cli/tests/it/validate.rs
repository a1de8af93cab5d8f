//! `observers validate-config` and `debug-event` from the command line: exit codes and messages.

use std::io::Write;

use crate::{observers, root};

fn write(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// (config text, expected line, fragments of stderr)
fn check_invalid(text: &str, line: usize, fragments: &[&str]) {
    let f = write(text);
    let path = f.path().to_str().unwrap();
    let out = observers(&["validate-config", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{path}:{line}:")),
        "file and line in: {stderr}"
    );
    for frag in fragments {
        assert!(stderr.contains(frag), "`{frag}` in: {stderr}");
    }
    let json = observers(&["validate-config", path, "--format", "json"]);
    assert_eq!(json.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["error"]["line"], line);
}

const OBS: &str = "[[observers]]\nname = \"orders\"\nentity = \"Order\"\n";

#[test]
fn broken_toml_exits_2() {
    check_invalid("[source\n", 1, &["unclosed table"]);
}

#[test]
fn bad_condition_names_the_observer() {
    check_invalid(
        &format!("{OBS}condition = \"total >> 1\"\n[[observers.actions]]\ntype = \"log\"\n"),
        4,
        &["observers[0].condition", "`orders`"],
    );
}

#[test]
fn bad_queue_or_priority_exits_2_naming_the_key() {
    let queued = "[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nmode = \"queued\"\n";
    check_invalid(
        &format!("{OBS}{queued}queue = \"bulk jobs\"\n"),
        8,
        &["observers[0].actions[0].queue", "`bulk jobs`"],
    );
    check_invalid(
        &format!("{OBS}{queued}priority = 1001\n"),
        8,
        &["observers[0].actions[0].priority", "between -1000 and 1000"],
    );
    let f = write(&format!(
        "[queue]\nworkers = 2\n{OBS}{queued}queue = \"bulk\"\npriority = 3\n"
    ));
    let out = observers(&["validate-config", f.path().to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queues=bulk,default"), "{text}");
    assert!(text.contains("queue bulk priority 3"), "{text}");
}

#[test]
fn unset_variable_is_named() {
    check_invalid(
        &format!(
            "{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"${{OBSERVERS_TEST_UNSET_URL}}\"\n"
        ),
        6,
        &["OBSERVERS_TEST_UNSET_URL", "not set"],
    );
}

#[test]
fn unknown_action_type_lists_valid_ones() {
    check_invalid(
        &format!("{OBS}[[observers.actions]]\ntype = \"carrier-pigeon\"\n"),
        5,
        &["carrier-pigeon", "`webhook`, `slack`, `email`, `log`"],
    );
}

#[test]
fn missing_file_exits_2() {
    let out = observers(&["validate-config", "/nonexistent/observers.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn valid_config_report() {
    let path = root().join("examples/observers.toml");
    let out = observers(&["validate-config", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("big-paid-orders"));
    assert!(text.contains("total > 100 && status == 'paid'"));
    assert!(
        !text.contains("dev-key"),
        "header values are secrets and never printed"
    );
    let out = observers(&[
        "validate-config",
        path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["observers"][0]["actions"][0]["type"], "webhook");
}

#[test]
fn debug_event_explains_each_observer() {
    let config = root().join("examples/observers.toml");
    let event = root().join("examples/event.json");
    let out = observers(&[
        "debug-event",
        "--config",
        config.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let obs = v["observers"].as_array().unwrap();
    assert_eq!(obs[0]["observer"], "big-paid-orders");
    assert_eq!(obs[0]["matched"], true);
    assert_eq!(obs[1]["matched"], true);

    let text = observers(&[
        "debug-event",
        "--config",
        config.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("condition `total > 100 && status == 'paid'` is true"),
        "{text}"
    );

    let small = write("");
    std::fs::write(
        small.path(),
        r#"{"entity_type": "Order", "kind": "insert", "after": {"id": 1, "total": 5, "status": "paid"}}"#,
    )
    .unwrap();
    let out = observers(&[
        "debug-event",
        "--config",
        config.to_str().unwrap(),
        "--event",
        small.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no match big-paid-orders"), "{text}");
    assert!(
        text.contains("is false (status = \"paid\", total = 5)"),
        "{text}"
    );
    assert!(text.contains("no match status-changes"), "{text}");
}

#[test]
fn debug_event_rejects_bad_event_json() {
    let config = root().join("examples/observers.toml");
    let bad = write("");
    std::fs::write(bad.path(), r#"{"entity_type": "Order", "kind": "merge"}"#).unwrap();
    let out = observers(&[
        "debug-event",
        "--config",
        config.to_str().unwrap(),
        "--event",
        bad.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("merge"));
}

fn check_refused(text: &str, fragments: &[&str], absent: &[&str]) {
    let f = write(text);
    let out = observers(&["validate-config", f.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    for frag in fragments {
        assert!(stderr.contains(frag), "`{frag}` in: {stderr}");
    }
    for frag in absent {
        assert!(
            !stderr.contains(frag),
            "`{frag}` must not be printed: {stderr}"
        );
    }
}

/// A `whsec_` secret that does not decode is refused (it used to sign with the raw text).
#[test]
fn an_undecodable_whsec_secret_is_a_config_error() {
    check_refused(
        &format!(
            "{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/h\"\nsigning_secret = \"whsec_not!base64-k3y\"\n"
        ),
        &["signing_secret", "base64"],
        &["not!base64-k3y"],
    );
}

/// Configured headers cannot replace the signature headers or the content type, in any case.
#[test]
fn configured_headers_cannot_override_signature_headers() {
    for name in [
        "webhook-signature",
        "Webhook-Id",
        "WEBHOOK-TIMESTAMP",
        "Content-Type",
    ] {
        check_refused(
            &format!(
                "{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/h\"\nheaders = {{ \"{name}\" = \"x\" }}\n"
            ),
            &[name, "cannot be configured"],
            &[],
        );
    }
}

/// Row data may not choose the scheme, host or port of a webhook unless the action says so.
#[test]
fn a_templated_host_needs_allow_templated_host() {
    for url in [
        "http://{{ new.host }}/hooks",
        "{{ new.url }}",
        "http://api.example:{{ new.port }}/x",
        "{{ new.scheme }}://api.example/x",
    ] {
        check_refused(
            &format!("{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"{url}\"\n"),
            &["allow_templated_host"],
            &[],
        );
        let f = write(&format!(
            "{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"{url}\"\nallow_templated_host = true\n"
        ));
        let out = observers(&["validate-config", f.path().to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let f = write(&format!(
        "{OBS}[[observers.actions]]\ntype = \"webhook\"\nurl = \"http://api.example/o/{{{{ entity_id }}}}?t={{{{ new.t }}}}\"\n"
    ));
    let out = observers(&["validate-config", f.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
