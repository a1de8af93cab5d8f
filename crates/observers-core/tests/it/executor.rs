//! The executor against a real local HTTP server: concurrency, retries, classification,
//! Retry-After, signatures, circuit breaking, 410 Gone.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use observers_core::actions::{ActionFactory, signing};
use observers_core::breaker::BreakerRegistry;
use observers_core::clock::system_clock;
use observers_core::config::{self, Config};
use observers_core::stores::dlq::{DeadLetterQueue, DlqFilter, MemoryDeadLetterQueue};
use observers_core::telemetry::{ActionOutcome, CountingTelemetry};
use observers_core::{EntityEvent, EventKind, ObserverExecutor, ObserverSet};
use serde_json::json;

use crate::support::Receiver;

pub struct Harness {
    pub executor: ObserverExecutor,
    pub dlq: Arc<MemoryDeadLetterQueue>,
    pub telemetry: Arc<CountingTelemetry>,
}

pub fn load(text: &str) -> Config {
    config::load_str("test.toml", text, &|v| std::env::var(v).ok())
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn harness(text: &str) -> Harness {
    let config = load(text);
    let factory = ActionFactory::new(config.outbound.clone()).unwrap();
    let set = ObserverSet::from_config(&config, &factory).unwrap();
    let dlq = Arc::new(MemoryDeadLetterQueue::default());
    let telemetry = CountingTelemetry::new();
    let breakers = Arc::new(BreakerRegistry::new(
        config.breaker.clone(),
        system_clock(),
        telemetry.clone(),
    ));
    let executor = ObserverExecutor::builder(set)
        .dlq(dlq.clone())
        .telemetry(telemetry.clone())
        .breakers(breakers)
        .max_concurrent_actions(config.executor.max_concurrent_actions)
        .build();
    Harness {
        executor,
        dlq,
        telemetry,
    }
}

pub fn order(id: i64, total: f64, status: &str) -> EntityEvent {
    EntityEvent::new(
        id,
        "Order",
        id.to_string(),
        EventKind::Insert,
        None,
        Some(json!({"id": id, "total": total, "status": status})),
    )
}

fn webhook_observer(name: &str, urls: &[String], retry: &str) -> String {
    let mut s = format!("{retry}\n[[observers]]\nname = \"{name}\"\nentity = \"Order\"\n");
    for url in urls {
        let _ = write!(
            s,
            "[[observers.actions]]
type = \"webhook\"
url = \"{url}\"
"
        );
    }
    s
}

const FAST_RETRY: &str =
    "[retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"2s\"\njitter = false\n";

#[tokio::test]
async fn actions_of_one_event_run_concurrently() {
    let rx = Receiver::start().await;
    let urls = [
        rx.url("/delay/500"),
        rx.url("/delay/10"),
        rx.url("/delay/100"),
    ];
    let h = harness(&webhook_observer("three", &urls, FAST_RETRY));
    let summary = h.executor.process(&order(1, 10.0, "new")).await.unwrap();
    assert_eq!(summary.succeeded(), 3, "{summary:?}");
    assert_eq!(
        rx.peak_in_flight(),
        3,
        "all three requests were in flight at once"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_dead_lettered() {
    let rx = Receiver::start().await;
    let h = harness(&webhook_observer(
        "fails",
        &[rx.url("/status/503")],
        FAST_RETRY,
    ));
    let summary = h.executor.process(&order(7, 10.0, "new")).await.unwrap();
    assert_eq!(rx.count("/status/503"), 3, "three attempts");
    assert_eq!(summary.actions[0].outcome, ActionOutcome::DeadLettered);
    assert_eq!(summary.actions[0].attempts, 3);
    let items = h.dlq.list(&DlqFilter::default()).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].entry.observer, "fails");
    assert_eq!(items[0].entry.event.id, 7);
    assert_eq!(items[0].entry.error_code, "OBS-HTTP-5XX");
    assert_eq!(h.telemetry.count("action_retried"), 2);
}

#[tokio::test]
async fn flaky_endpoint_succeeds_on_retry() {
    let rx = Receiver::start().await;
    let h = harness(&webhook_observer(
        "flaky",
        &[rx.url("/flaky/2")],
        FAST_RETRY,
    ));
    let summary = h.executor.process(&order(1, 10.0, "new")).await.unwrap();
    assert_eq!(summary.actions[0].outcome, ActionOutcome::Success);
    assert_eq!(summary.actions[0].attempts, 3);
    assert_eq!(h.dlq.count(None).await.unwrap(), 0);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let rx = Receiver::start().await;
    let h = harness(&webhook_observer(
        "bad-request",
        &[rx.url("/status/400")],
        FAST_RETRY,
    ));
    let summary = h.executor.process(&order(1, 10.0, "new")).await.unwrap();
    assert_eq!(rx.count("/status/400"), 1);
    assert_eq!(summary.actions[0].error_code, Some("OBS-HTTP-4XX"));
    assert_eq!(h.dlq.count(None).await.unwrap(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let rx = Receiver::start().await;
    let h = harness(&webhook_observer(
        "limited",
        &[rx.url("/retry-after/1")],
        FAST_RETRY,
    ));
    let summary = h.executor.process(&order(1, 10.0, "new")).await.unwrap();
    assert_eq!(summary.actions[0].outcome, ActionOutcome::Success);
    let got = rx.received();
    assert_eq!(got.len(), 2);
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, server asked for 1s"
    );
}

#[tokio::test]
async fn retry_after_beyond_max_backoff_dead_letters_at_once() {
    let rx = Receiver::start().await;
    let h = harness(&webhook_observer(
        "too-long",
        &[rx.url("/retry-after/60")],
        FAST_RETRY,
    ));
    let summary = h.executor.process(&order(1, 10.0, "new")).await.unwrap();
    assert_eq!(rx.count("/retry-after/60"), 1);
    assert!(
        summary.actions[0]
            .error
            .as_deref()
            .unwrap()
            .contains("Retry-After")
    );
}

#[tokio::test]
async fn body_headers_and_signature() {
    let rx = Receiver::start().await;
    let text = format!(
        "[[observers]]\nname = \"signed\"\nentity = \"Order\"\n[[observers.actions]]\ntype = \"webhook\"\nurl = \"{}\"\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nheaders = {{ \"X-Order\" = \"{{{{ entity_id }}}}-{{{{ new.status }}}}\" }}\n",
        rx.url("/hooks/{{ entity_type }}")
    );
    let h = harness(&text);
    let mut ev = order(42, 150.0, "paid").with_tenant("acme").with_user("u1");
    ev.kind = EventKind::Update;
    ev.before = Some(json!({"id": 42, "total": 150.0, "status": "new"}));
    ev.recompute_changes();
    h.executor.process(&ev).await.unwrap();
    let got = rx.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.path, "/hooks/Order");
    assert_eq!(r.header("x-order"), "42-paid");
    assert_eq!(r.header("webhook-id"), "42:signed:0");
    assert_eq!(r.header("idempotency-key"), "42:signed:0");
    let body = r.json();
    for key in [
        "id",
        "observer",
        "entity_type",
        "entity_id",
        "event_type",
        "tenant_id",
        "user_id",
        "timestamp",
        "data",
        "before",
        "changes",
    ] {
        assert!(body.get(key).is_some(), "body has `{key}`: {body}");
    }
    assert_eq!(body["id"], 42);
    assert_eq!(body["event_type"], "update");
    assert_eq!(body["tenant_id"], "acme");
    assert_eq!(body["data"]["status"], "paid");
    assert_eq!(body["changes"][0]["field"], "status");
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let key = signing::secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert!(signing::verify(
        &key,
        "42:signed:0",
        ts,
        &r.body,
        r.header("webhook-signature")
    ));
    assert!(!signing::verify(
        &key,
        "42:signed:0",
        ts + 1,
        &r.body,
        r.header("webhook-signature")
    ));
}

#[tokio::test]
async fn breaker_opens_short_circuits_probes_and_closes() {
    let rx = Receiver::start().await;
    let text = format!(
        "[retry]\nmax_attempts = 1\n[breaker]\nwindow_size = 4\nminimum_calls = 4\nfailure_rate_threshold = 0.5\nopen_duration = \"300ms\"\njitter = 0.0\nhalf_open_max_calls = 1\nsuccess_threshold = 1\n{}",
        webhook_observer("guarded", &[rx.url("/flaky/4")], "")
    );
    let h = harness(&text);
    for id in 1..=4 {
        h.executor.process(&order(id, 1.0, "x")).await.unwrap();
    }
    assert_eq!(rx.count("/flaky/4"), 4);
    let s = h.executor.process(&order(5, 1.0, "x")).await.unwrap();
    assert_eq!(s.actions[0].outcome, ActionOutcome::ShortCircuited);
    assert_eq!(rx.count("/flaky/4"), 4, "no network call while open");
    assert_eq!(s.actions[0].error_code, Some("OBS-BREAKER-OPEN"));
    // Let the 300 ms open period pass (jitter is off, so it is exact).
    tokio::time::sleep(Duration::from_millis(350)).await;
    let s = h.executor.process(&order(6, 1.0, "x")).await.unwrap();
    assert_eq!(
        s.actions[0].outcome,
        ActionOutcome::Success,
        "the probe went through and succeeded"
    );
    assert_eq!(rx.count("/flaky/4"), 5);
    let s = h.executor.process(&order(7, 1.0, "x")).await.unwrap();
    assert_eq!(s.actions[0].outcome, ActionOutcome::Success, "closed again");
    assert!(
        h.telemetry.count("breaker_transition") >= 3,
        "{:?}",
        h.telemetry.snapshot()
    );
}

fn coded(id: i64, code: u16) -> EntityEvent {
    EntityEvent::new(
        id,
        "Order",
        id.to_string(),
        EventKind::Insert,
        None,
        Some(json!({"id": id, "code": code})),
    )
}

/// A `410 Gone` disables the URL that answered it, not the action: other URLs of the same
/// templated action keep receiving; later events for the gone URL are dead-lettered (never
/// skipped silently); re-enabling the URL delivers to it again.
#[tokio::test]
async fn gone_disables_only_the_url_that_answered() {
    let rx = Receiver::start().await;
    let h = harness(&webhook_observer(
        "gone",
        &[rx.url("/status/{{ new.code }}")],
        FAST_RETRY,
    ));
    let first = h.executor.process(&coded(1, 410)).await.unwrap();
    assert_eq!(first.actions[0].outcome, ActionOutcome::DeadLettered);
    let other = h.executor.process(&coded(2, 200)).await.unwrap();
    assert_eq!(
        other.actions[0].outcome,
        ActionOutcome::Success,
        "another URL of the action still delivers"
    );
    let again = h.executor.process(&coded(3, 410)).await.unwrap();
    assert_eq!(again.actions[0].outcome, ActionOutcome::DeadLettered);
    assert_eq!(rx.count("/status/410"), 1, "a disabled URL is not called");
    let items = h.dlq.list(&DlqFilter::default()).await.unwrap();
    let events: Vec<i64> = items.iter().map(|i| i.entry.event.id).collect();
    assert_eq!(
        events,
        [1, 3],
        "every event for the gone URL is dead-lettered"
    );
    assert!(
        items
            .iter()
            .all(|i| i.entry.error_code == "OBS-HTTP-410-GONE")
    );
    assert!(
        items[1]
            .entry
            .error
            .contains("observers actions enable --url")
    );

    let gone = h.executor.gone_endpoints().list().await.unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].target, rx.url("/status/410"));
    let enabled = h
        .executor
        .gone_endpoints()
        .enable(Some(&gone[0].target))
        .await
        .unwrap();
    assert_eq!(enabled, 1);
    h.executor.process(&coded(4, 410)).await.unwrap();
    assert_eq!(rx.count("/status/410"), 2, "re-enabled by the operator");
}

#[tokio::test]
async fn conditions_tenants_and_kinds_select_observers() {
    let rx = Receiver::start().await;
    let text = format!(
        r#"
[[observers]]
name = "big-paid"
entity = "Order"
events = ["insert"]
condition = "total > 100 && status == 'paid'"
[[observers.actions]]
type = "webhook"
url = "{a}"

[[observers]]
name = "acme-only"
entity = "*"
tenants = ["acme"]
[[observers.actions]]
type = "webhook"
url = "{b}"
"#,
        a = rx.url("/a"),
        b = rx.url("/b")
    );
    let h = harness(&text);
    let cases: Vec<(EntityEvent, Vec<&str>)> = vec![
        (order(1, 150.0, "paid"), vec!["big-paid"]),
        (order(2, 150.0, "new"), vec![]),
        (order(3, 99.0, "paid"), vec![]),
        (
            order(4, 150.0, "paid").with_tenant("acme"),
            vec!["big-paid", "acme-only"],
        ),
        (order(5, 1.0, "x").with_tenant("other"), vec![]),
        (
            EntityEvent::new(6, "User", "6", EventKind::Delete, None, None).with_tenant("acme"),
            vec!["acme-only"],
        ),
    ];
    for (ev, want) in cases {
        let s = h.executor.process(&ev).await.unwrap();
        assert_eq!(s.matched, want, "event {}", ev.id);
    }
    assert_eq!(rx.count("/a"), 2);
    assert_eq!(rx.count("/b"), 2);
}

#[tokio::test]
async fn slack_message_is_posted() {
    let rx = Receiver::start().await;
    let text = format!(
        "[[observers]]\nname = \"notify\"\nentity = \"Order\"\n[[observers.actions]]\ntype = \"slack\"\nwebhook_url = \"{}\"\ntext = \"Order {{{{ entity_id }}}} is {{{{ new.status }}}}\"\nchannel = \"#ops\"\n",
        rx.url("/slack")
    );
    let h = harness(&text);
    h.executor.process(&order(9, 1.0, "paid")).await.unwrap();
    let body = rx.received()[0].json();
    assert_eq!(body, json!({"text": "Order 9 is paid", "channel": "#ops"}));
}

#[tokio::test]
async fn link_local_targets_are_refused_without_a_request() {
    let h = harness(&webhook_observer(
        "meta",
        &["http://169.254.169.254/latest/meta-data".to_owned()],
        FAST_RETRY,
    ));
    let s = h.executor.process(&order(1, 1.0, "x")).await.unwrap();
    assert_eq!(s.actions[0].attempts, 1, "a policy denial is permanent");
    assert_eq!(s.actions[0].error_code, Some("OBS-OUTBOUND-DENIED"));
}

#[tokio::test]
async fn private_networks_denied_when_configured_even_through_dns() {
    let rx = Receiver::start().await;
    let port = rx.base.rsplit(':').next().unwrap().to_owned();
    let text = format!(
        "[outbound]\ndeny_private_networks = true\n{}",
        webhook_observer(
            "private",
            &[format!("http://localhost:{port}/ok")],
            FAST_RETRY
        )
    );
    let h = harness(&text);
    let s = h.executor.process(&order(1, 1.0, "x")).await.unwrap();
    assert_eq!(
        s.actions[0].error_code,
        Some("OBS-OUTBOUND-DENIED"),
        "{:?}",
        s.actions[0]
    );
    assert_eq!(rx.received().len(), 0);
}

/// Our signatures verify with the official Standard Webhooks library (Python), not only with
/// our own verifier.
#[tokio::test]
async fn signatures_verify_with_the_reference_library() {
    let python = std::env::var("OBSERVERS_PYTHON").unwrap_or_else(|_| "python3".into());
    let have = std::process::Command::new(&python)
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "standardwebhooks is missing: run `cargo xtask test` (it installs it) or `pip install standardwebhooks`"
        );
        eprintln!("skipping: pip install standardwebhooks");
        return;
    }
    let rx = Receiver::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let text = format!(
        "[[observers]]\nname = \"signed\"\nentity = \"Order\"\n[[observers.actions]]\ntype = \"webhook\"\nurl = \"{}\"\nsigning_secret = \"{secret}\"\n",
        rx.url("/signed")
    );
    let h = harness(&text);
    h.executor.process(&order(5, 150.0, "paid")).await.unwrap();
    let r = &rx.received()[0];
    let dir = std::env::temp_dir().join(format!("obs-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("body"), &r.body).unwrap();
    let script = "import sys\nfrom standardwebhooks.webhooks import Webhook\n\
        body = open(sys.argv[1], 'rb').read()\n\
        headers = {'webhook-id': sys.argv[2], 'webhook-timestamp': sys.argv[3], 'webhook-signature': sys.argv[4]}\n\
        Webhook(sys.argv[5]).verify(body, headers)\nprint('verified')\n";
    let run = |sig: &str| {
        std::process::Command::new(&python)
            .args([
                "-c",
                script,
                dir.join("body").to_str().unwrap(),
                r.header("webhook-id"),
                r.header("webhook-timestamp"),
                sig,
                secret,
            ])
            .output()
            .unwrap()
    };
    let ok = run(r.header("webhook-signature"));
    assert!(
        ok.status.success(),
        "reference library rejected our signature: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let tampered = run("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert!(
        !tampered.status.success(),
        "a wrong signature must be rejected"
    );
}
