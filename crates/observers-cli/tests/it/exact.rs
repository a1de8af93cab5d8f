//! Golden test: a captured table with every common column type goes through `observers run` to
//! a real receiver along every consumer path (inline webhook body, `numbers = "string"`, a body
//! template, a queued job, the DLQ, the search trail, `debug-event`), and what arrives is
//! compared with `SELECT to_jsonb(t)` of the same row, number by number as decimal text.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Receiver, TestDb, free_port, signal, spawn_run, wait_exit, wait_until};
use crate::support::{capture, cli, write_config};

const LONG: Duration = Duration::from_secs(60);

const TABLE: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'sad', 'with "quotes" and ''apostrophes''');
CREATE TABLE golden (
    id       int PRIMARY KEY,
    n_big    numeric, n_frac numeric, n_huge numeric, n_tiny numeric, n_neg numeric,
    n_nan    numeric, n_inf numeric, n_scale numeric(20, 6),
    i8_min   bigint, i8_max bigint, i4 int, i2 smallint,
    f8       float8, f8_nan float8, f8_inf float8, f8_ninf float8, f8_small float8, f8_max float8,
    f4       real, f4_frac real,
    b        boolean,
    t        text,
    tstz     timestamptz, ts timestamp, d date, tm time, iv interval,
    u        uuid, by bytea,
    ia       int[], ta text[],
    j        json, jb jsonb,
    m        mood
);
"#;

const ROW_1: &str = r#"
INSERT INTO golden VALUES (
    1,
    12345678901234567.89, 1.123456789012345678, 1e400, 1e-400,
    -98765432109876543210.000000000000000001,
    'NaN', 'Infinity', 42.5,
    -9223372036854775808, 9223372036854775807, -2147483648, 32767,
    0.1, 'NaN', 'Infinity', '-Infinity', 5e-324, 1.7976931348623157e308,
    3.4028235e38, 0.1,
    true,
    E'emoji \U0001F600 "double" ''single'' back\\slash tab\t newline\n bell\u0007 </script>',
    '2026-01-02 03:04:05.123456+00', '1999-12-31 23:59:59.999999', '2024-02-29',
    '23:59:59.999999', '1 year 2 mons 3 days 04:05:06.789',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10',
    ARRAY[1, NULL, -2147483648], ARRAY['a', NULL, '"q"', 'NULL', ''],
    '{"big": 123456789012345678901234567890.123, "exp": 1E+2, "list": [0.10, -0]}',
    '{"x": 1.000000000000000000001, "huge": 1e400, "nested": {"y": [18446744073709551616]}}',
    'with "quotes" and ''apostrophes'''
);
INSERT INTO golden (id) VALUES (2);
"#;

fn config(db: &TestDb, rx: &Receiver, dead: u16) -> String {
    format!(
        r#"
[source]
database_url = "{url}"
listener_id = "golden"
poll_interval = "200ms"

[retry]
max_attempts = 2
initial_backoff = "20ms"
max_backoff = "50ms"

[dedup]
enabled = false

[search]
backend = "postgres"

[queue]
workers = 1
poll_interval = "200ms"

[[observers]]
name = "exact"
entity = "Golden"
condition = "n_big == null || n_big > 1"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/exact"

[[observers]]
name = "strings"
entity = "Golden"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/string"
  numbers = "string"

[[observers]]
name = "template"
entity = "Golden"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/template"
  headers = {{ "X-Amount" = "{{{{ new.n_big }}}}" }}
  body = '''{{"amount": {{{{ new.n_big }}}}, "huge": {{{{ new.n_huge }}}}, "text": "{{{{ new.n_big }}}} {{{{ new.f8 }}}} {{{{ new.i8_min }}}}", "row": {{{{ new | tojson }}}}}}'''

[[observers]]
name = "queued"
entity = "Golden"

  [[observers.actions]]
  type = "webhook"
  url = "{base}/hooks/queued"
  mode = "queued"

[[observers]]
name = "dead"
entity = "Golden"

  [[observers.actions]]
  type = "webhook"
  url = "http://127.0.0.1:{dead}/nobody"
"#,
        url = db.url,
        base = rx.base
    )
}

/// Asserts `got` is `want` with every number spelled exactly as in `want`; with `strings`, every
/// number of `want` must arrive as a JSON string of the same digits.
fn same(path: &str, want: &Value, got: &Value, strings: bool) {
    match (want, got) {
        (Value::Number(w), Value::Number(g)) if !strings => {
            assert_eq!(w.as_str(), g.as_str(), "{path}: number changed");
        }
        (Value::Number(w), Value::String(g)) if strings => {
            assert_eq!(w.as_str(), g, "{path}: number as string changed");
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{path}: array length");
            for (i, (w, g)) in w.iter().zip(g).enumerate() {
                same(&format!("{path}[{i}]"), w, g, strings);
            }
        }
        (Value::Object(w), Value::Object(g)) => {
            let wk: Vec<_> = w.keys().collect();
            let gk: Vec<_> = g.keys().collect();
            assert_eq!(wk, gk, "{path}: keys");
            for (k, w) in w {
                same(&format!("{path}.{k}"), w, &g[k], strings);
            }
        }
        _ => assert_eq!(want, got, "{path}"),
    }
}

/// `to_jsonb` of each row, parsed with every digit.
async fn golden_rows(db: &TestDb) -> Vec<Value> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT to_jsonb(g)::text FROM golden g ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    rows.iter()
        .map(|(text,)| serde_json::from_str(text).unwrap())
        .collect()
}

fn json_out(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn by_id<'a>(bodies: &'a [Value], field: &str, id: &str) -> &'a Value {
    bodies
        .iter()
        .find(|b| {
            let v = &b[field]["id"];
            v.as_str() == Some(id) || v.is_number() && format!("{v}") == id
        })
        .unwrap_or_else(|| panic!("no body with {field}.id = {id} in {bodies:?}"))
}

// One scenario on purpose: one run, one table, every consumer path checked against one reference.
#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_reaches_every_consumer_as_to_jsonb_renders_it() {
    let db = TestDb::new("golden").await;
    db.exec(TABLE).await;
    assert!(cli(&db, &["migrate"]).status.success());
    capture(&db, "golden", "Golden");
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config(&db, &rx, free_port()));
    let mut run = spawn_run(&path, &dir.path().join("run.log"));

    db.exec(ROW_1).await;
    let want = golden_rows(&db).await;
    assert_eq!(want.len(), 2);
    // The reference itself keeps the digits (a double would not).
    assert_eq!(want[0]["n_big"].to_string(), "12345678901234567.89");
    assert_eq!(
        want[0]["n_huge"].to_string(),
        format!("1{}", "0".repeat(400))
    );
    assert_eq!(want[0]["f8_nan"], "NaN");

    let path_of = |p: &str| {
        rx.deliveries()
            .into_iter()
            .filter(|d| d.path == p)
            .map(|d| d.body)
            .collect::<Vec<_>>()
    };
    let paths = [
        "/hooks/exact",
        "/hooks/string",
        "/hooks/template",
        "/hooks/queued",
    ];
    wait_until("two deliveries on every path", LONG, || {
        paths.iter().all(|p| path_of(p).len() >= 2)
    })
    .await;

    // Inline webhook, default body.
    let exact = path_of("/hooks/exact");
    for row in &want {
        let id = row["id"].to_string();
        same(
            "exact.data",
            row,
            &by_id(&exact, "data", &id)["data"],
            false,
        );
    }
    // numbers = "string": the same digits, as JSON strings; `id` too.
    let strings = path_of("/hooks/string");
    for row in &want {
        let id = row["id"].to_string();
        let body = by_id(&strings, "data", &id);
        same("string.data", row, &body["data"], true);
        assert!(body["id"].is_string(), "change-log id as a string: {body}");
    }
    // The body template: `{{ new.x }}` prints the digits, `tojson` writes the row exactly.
    let templated = path_of("/hooks/template");
    let first = by_id(&templated, "row", "1");
    same("template.row", &want[0], &first["row"], false);
    same(
        "template.amount",
        &want[0]["n_big"],
        &first["amount"],
        false,
    );
    same("template.huge", &want[0]["n_huge"], &first["huge"], false);
    assert_eq!(
        first["text"], "12345678901234567.89 0.1 -9223372036854775808",
        "numbers interpolated into text"
    );
    // A queued job: the payload goes through the job queue and a worker.
    let queued = path_of("/hooks/queued");
    for row in &want {
        let id = row["id"].to_string();
        same(
            "queued.data",
            row,
            &by_id(&queued, "data", &id)["data"],
            false,
        );
    }

    // The DLQ: the failing endpoint's items keep the row.
    let dlq = wait_for_dlq(&db, 2).await;
    for item in dlq.as_array().unwrap() {
        let shown = json_out(&cli(
            &db,
            &["dlq", "show", &item["id"].to_string(), "--format", "json"],
        ));
        let after = &shown["event"]["after"];
        let row = &want[usize::from(after["id"] == 2)];
        same("dlq.event.after", row, after, false);
    }

    // The search (audit) trail.
    let found = wait_for_search(&db, 2).await;
    for doc in found["results"].as_array().unwrap() {
        let row = &want[usize::from(doc["data"]["id"] == 2)];
        same("search.data", row, &doc["data"], false);
    }

    signal(&run, "TERM");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).await, Some(0));

    // `debug-event --execute` on the row as to_jsonb wrote it.
    let event = serde_json::json!({"entity_type": "Golden", "kind": "insert", "after": want[0]});
    let event_path = dir.path().join("event.json");
    std::fs::write(&event_path, serde_json::to_string(&event).unwrap()).unwrap();
    let before = path_of("/hooks/exact").len();
    let shown = json_out(&cli(
        &db,
        &[
            "debug-event",
            "--config",
            path.to_str().unwrap(),
            "--event",
            event_path.to_str().unwrap(),
            "--execute",
            "--format",
            "json",
        ],
    ));
    same(
        "debug-event.event.after",
        &want[0],
        &shown["event"]["after"],
        false,
    );
    let exact = path_of("/hooks/exact");
    assert_eq!(exact.len(), before + 1, "debug-event --execute delivered");
    same(
        "debug-event webhook",
        &want[0],
        &exact[before]["data"],
        false,
    );
}

async fn wait_for_dlq(db: &TestDb, n: usize) -> Value {
    let mut last = Value::Null;
    let ok = wait_until_async(LONG, || {
        let out = cli(db, &["dlq", "list", "--format", "json"]);
        last = json_out(&out);
        last.as_array().is_some_and(|a| a.len() >= n)
    })
    .await;
    assert!(ok, "{n} DLQ items; last {last}");
    last
}

async fn wait_for_search(db: &TestDb, n: u64) -> Value {
    let mut last = Value::Null;
    let ok = wait_until_async(LONG, || {
        let out = cli(
            db,
            &["search", "--entity-type", "Golden", "--format", "json"],
        );
        last = json_out(&out);
        last["total"] == n
    })
    .await;
    assert!(ok, "{n} search results; last {last}");
    last
}

async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
