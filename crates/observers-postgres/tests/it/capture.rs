//! Tests of capture management: the trigger installed by `capture::enable` logs inserts, updates
//! and deletes of tables keyed by bigint, uuid and text; names are resolved safely; `disable`
//! and `list` reflect what is really installed.

use observers_postgres::PgError;
use observers_postgres::capture::{self, CaptureSpec};
use serde_json::{Value, json};
use sqlx::PgPool;

/// A change-log row, with the txid as a number.
#[derive(Debug, sqlx::FromRow)]
struct LogRow {
    id: i64,
    txid: i64,
    entity_type: String,
    entity_id: String,
    operation: String,
    tenant_id: Option<String>,
    user_id: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
    changed: Option<Vec<String>>,
}

async fn log_rows(pool: &PgPool) -> Vec<LogRow> {
    sqlx::query_as(
        "SELECT id, txid::text::int8 AS txid, entity_type, entity_id, operation, tenant_id,
                user_id, before, after, changed
           FROM observer_change_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `(operation, entity id, user)` of each row.
fn changes(rows: &[LogRow]) -> Vec<(&str, &str, Option<&str>)> {
    rows.iter()
        .map(|r| {
            (
                r.operation.as_str(),
                r.entity_id.as_str(),
                r.user_id.as_deref(),
            )
        })
        .collect()
}

async fn exec(pool: &PgPool, sql: &'static str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap();
}

async fn log_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM observer_change_log")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn table_exists(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn invalid_message(result: Result<impl std::fmt::Debug, PgError>) -> String {
    match result {
        Err(PgError::Invalid(message)) => message,
        other => panic!("expected PgError::Invalid, got {other:?}"),
    }
}

/// Enables capture of `table` (created by `ddl`) keyed by `id_column`, inserts a row with
/// `insert` (which returns the new key as text), updates and deletes it, and checks the log.
async fn check_round_trip(
    pool: &PgPool,
    ddl: &'static str,
    table: &str,
    id_column: &str,
    insert: &'static str,
) {
    exec(pool, ddl).await;
    capture::enable(
        pool,
        &CaptureSpec::new(table, "Thing").with_id_column(id_column),
    )
    .await
    .unwrap();

    let key: String = sqlx::query_scalar(insert).fetch_one(pool).await.unwrap();
    let update = format!("UPDATE {table} SET label = 'renamed' WHERE {id_column}::text = $1");
    sqlx::query(sqlx::AssertSqlSafe(update))
        .bind(&key)
        .execute(pool)
        .await
        .unwrap();
    let delete = format!("DELETE FROM {table} WHERE {id_column}::text = $1");
    sqlx::query(sqlx::AssertSqlSafe(delete))
        .bind(&key)
        .execute(pool)
        .await
        .unwrap();

    let rows = log_rows(pool).await;
    let ops: Vec<_> = rows.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(ops, ["insert", "update", "delete"], "{table}");
    for r in &rows {
        assert_eq!(r.entity_type, "Thing");
        assert_eq!(r.entity_id, key, "{table}: entity_id is the key as text");
        assert_eq!(r.tenant_id, None);
        assert_eq!(r.user_id, None);
    }
    let (ins, upd, del) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(ins.before, None);
    assert_eq!(ins.after.as_ref().unwrap()["label"], json!("first"));
    assert_eq!(ins.changed, None, "inserts carry no changed list");
    assert_eq!(upd.before.as_ref().unwrap()["label"], json!("first"));
    assert_eq!(upd.after.as_ref().unwrap()["label"], json!("renamed"));
    assert_eq!(
        upd.changed, None,
        "the reader computes changes, not the trigger"
    );
    assert_eq!(del.before.as_ref().unwrap()["label"], json!("renamed"));
    assert_eq!(del.after, None);
    assert_eq!(del.changed, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn bigint_key_changes_are_logged(pool: PgPool) {
    check_round_trip(
        &pool,
        "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, label text)",
        "orders",
        "id",
        "INSERT INTO orders (label) VALUES ('first') RETURNING id::text",
    )
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn uuid_key_changes_are_logged(pool: PgPool) {
    check_round_trip(
        &pool,
        "CREATE TABLE devices (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), label text)",
        "devices",
        "id",
        "INSERT INTO devices (label) VALUES ('first') RETURNING id::text",
    )
    .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn text_key_changes_are_logged(pool: PgPool) {
    check_round_trip(
        &pool,
        "CREATE TABLE products (sku text PRIMARY KEY, label text)",
        "products",
        "sku",
        "INSERT INTO products (sku, label) VALUES ('SKU-1', 'first') RETURNING sku",
    )
    .await;
}

/// The trigger stores the row images only; the reader computes the changed columns (sorted). A
/// no-op `UPDATE` is still logged and delivered, with no changed column.
#[sqlx::test(migrations = "../../migrations")]
async fn changed_columns_are_computed_by_the_reader_and_a_no_op_update_is_kept(pool: PgPool) {
    use observers_core::stores::source::{EventSource, SourceItem};
    exec(
        &pool,
        "CREATE TABLE t (id int PRIMARY KEY, zeta int, alpha int, mid int)",
    )
    .await;
    capture::enable(&pool, &CaptureSpec::new("t", "T"))
        .await
        .unwrap();
    exec(&pool, "INSERT INTO t VALUES (1, 0, 0, 0)").await;
    exec(
        &pool,
        "UPDATE t SET zeta = 1, alpha = 1, mid = 1 WHERE id = 1",
    )
    .await;
    exec(&pool, "UPDATE t SET zeta = zeta WHERE id = 1").await;

    let rows = log_rows(&pool).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.changed.is_none()));
    let items = observers_postgres::PgEventSource::new(pool.clone())
        .fetch(observers_core::Cursor::START, 10)
        .await
        .unwrap();
    let changed: Vec<Vec<String>> = items
        .iter()
        .map(|i| match i {
            SourceItem::Event(e) => e.changed_fields().into_iter().map(str::to_owned).collect(),
            SourceItem::Poison { error, .. } => panic!("{error}"),
        })
        .collect();
    assert_eq!(changed[1], ["alpha", "mid", "zeta"]);
    assert!(changed[2].is_empty(), "{changed:?}");
    assert_eq!(rows[2].operation, "update");
    assert_eq!(rows[2].before, rows[2].after);
}

#[sqlx::test(migrations = "../../migrations")]
async fn user_comes_from_the_session_and_tenant_from_the_column(pool: PgPool) {
    use observers_core::stores::source::{EventSource, SourceItem};
    exec(
        &pool,
        "CREATE TABLE orders (id int PRIMARY KEY, org text, total int)",
    )
    .await;
    exec(&pool, "CREATE TABLE notes (id int PRIMARY KEY, body text)").await;
    let info = capture::enable(
        &pool,
        &CaptureSpec::new("orders", "Order").with_tenant_column("org"),
    )
    .await
    .unwrap();
    assert_eq!(info.tenant_column.as_deref(), Some("org"));
    capture::enable(&pool, &CaptureSpec::new("notes", "Note"))
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL observers.user_id = 'u1'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SET LOCAL observers.tenant_id = 'fallback'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders VALUES (1, 'acme', 10)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES (1, 'hi')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // SET LOCAL ended with the transaction.
    exec(&pool, "UPDATE orders SET total = 11").await;
    // A setting after RESET reads '' (and an empty tenant column is empty): none, as unset.
    exec(
        &pool,
        "SET observers.user_id = 'gone'; RESET observers.user_id;
         INSERT INTO orders VALUES (2, '', 1); INSERT INTO notes VALUES (2, 'bye')",
    )
    .await;

    let events = observers_postgres::PgEventSource::new(pool.clone())
        .fetch(observers_core::Cursor::START, 100)
        .await
        .unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|i| match i {
            SourceItem::Event(e) => (
                e.entity_type.clone(),
                e.tenant_id.clone(),
                e.user_id.clone(),
            ),
            SourceItem::Poison { error, .. } => panic!("poison: {error}"),
        })
        .collect();
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        seen,
        [
            ("Order".to_owned(), some("acme"), some("u1")),
            ("Note".to_owned(), some("fallback"), some("u1")),
            ("Order".to_owned(), some("acme"), None),
            ("Order".to_owned(), None, None),
            ("Note".to_owned(), None, None),
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn rows_of_one_transaction_share_one_txid(pool: PgPool) {
    exec(&pool, "CREATE TABLE t (id int PRIMARY KEY)").await;
    capture::enable(&pool, &CaptureSpec::new("t", "T"))
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO t VALUES (1), (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE t SET id = 3 WHERE id = 2")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    exec(&pool, "INSERT INTO t VALUES (4)").await;

    let rows = log_rows(&pool).await;
    assert_eq!(rows.len(), 4);
    assert!(rows[..3].iter().all(|r| r.txid == rows[0].txid));
    assert!(rows[3].txid > rows[0].txid);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
}

#[sqlx::test(migrations = "../../migrations")]
async fn injection_in_names_is_rejected_or_quoted(pool: PgPool) {
    exec(&pool, "CREATE TABLE y (id int PRIMARY KEY)").await;

    let message =
        invalid_message(capture::enable(&pool, &CaptureSpec::new("x; drop table y", "X")).await);
    assert!(message.contains("x; drop table y"), "{message}");
    let message = invalid_message(
        capture::enable(&pool, &CaptureSpec::new("\"x; drop table y\"", "X")).await,
    );
    assert!(message.contains("does not exist"), "{message}");
    let message = invalid_message(
        capture::enable(
            &pool,
            &CaptureSpec::new("y", "X").with_id_column("id; drop table y"),
        )
        .await,
    );
    assert!(message.contains("id column"), "{message}");
    assert!(table_exists(&pool, "y").await, "y must survive");
    assert!(capture::list(&pool).await.unwrap().is_empty());

    // An entity type is a trigger argument: quoted as a literal, stored verbatim.
    let entity = "O'Brien'); DROP TABLE y; --";
    capture::enable(&pool, &CaptureSpec::new("y", entity))
        .await
        .unwrap();
    exec(&pool, "INSERT INTO y VALUES (1)").await;
    assert!(table_exists(&pool, "y").await);
    assert_eq!(log_rows(&pool).await[0].entity_type, entity);
}

#[sqlx::test(migrations = "../../migrations")]
async fn names_needing_quotes_work(pool: PgPool) {
    exec(
        &pool,
        r#"CREATE TABLE "Order Items" ("itemId" bigint PRIMARY KEY, "Qty" int)"#,
    )
    .await;
    let info = capture::enable(
        &pool,
        &CaptureSpec::new(r#""Order Items""#, "OrderItem").with_id_column(r#""itemId""#),
    )
    .await
    .unwrap();
    assert_eq!(
        (info.schema.as_str(), info.table.as_str()),
        ("public", "Order Items")
    );
    assert_eq!(info.id_column, "itemId");
    assert_eq!(info.qualified_name(), r#"public."Order Items""#);
    exec(&pool, r#"INSERT INTO "Order Items" VALUES (7, 1)"#).await;
    let rows = log_rows(&pool).await;
    assert_eq!(
        (rows[0].entity_type.as_str(), rows[0].entity_id.as_str()),
        ("OrderItem", "7")
    );

    // Unquoted, the name is not a plain identifier; with other capitals it folds and misses,
    // and the error points at the quoted spelling.
    invalid_message(capture::enable(&pool, &CaptureSpec::new("Order Items", "X")).await);
    exec(&pool, r#"CREATE TABLE "Orders" (id int PRIMARY KEY)"#).await;
    let message = invalid_message(capture::enable(&pool, &CaptureSpec::new("Orders", "X")).await);
    assert!(
        message.contains(r#"did you mean public."Orders""#),
        "{message}"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn schema_qualified_names_capture_only_that_table(pool: PgPool) {
    exec(
        &pool,
        "CREATE SCHEMA sales;
         CREATE TABLE sales.orders (id int PRIMARY KEY);
         CREATE TABLE public.orders (id int PRIMARY KEY);",
    )
    .await;
    let info = capture::enable(&pool, &CaptureSpec::new("sales.orders", "SaleOrder"))
        .await
        .unwrap();
    assert_eq!(info.schema, "sales");
    exec(
        &pool,
        "INSERT INTO public.orders VALUES (1); INSERT INTO sales.orders VALUES (2);",
    )
    .await;
    let rows = log_rows(&pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].entity_type.as_str(), rows[0].entity_id.as_str()),
        ("SaleOrder", "2")
    );

    let message =
        invalid_message(capture::enable(&pool, &CaptureSpec::new("nowhere.orders", "X")).await);
    assert_eq!(
        message,
        "table `nowhere.orders` does not exist (looked in schema `nowhere` for `orders`); \
         did you mean public.orders, sales.orders?"
    );
    let message = invalid_message(capture::enable(&pool, &CaptureSpec::new("missing", "X")).await);
    assert!(
        message.starts_with("table `missing` does not exist (looked in schema `public`"),
        "{message}"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn unknown_columns_and_bad_requests_are_explained(pool: PgPool) {
    exec(
        &pool,
        "CREATE TABLE orders (order_no int PRIMARY KEY, dropped int, total int)",
    )
    .await;
    exec(&pool, "ALTER TABLE orders DROP COLUMN dropped").await;
    exec(&pool, "CREATE VIEW order_view AS SELECT * FROM orders").await;

    let message =
        invalid_message(capture::enable(&pool, &CaptureSpec::new("orders", "Order")).await);
    assert_eq!(
        message,
        "id column `id` does not exist in table public.orders; its columns are: order_no, total"
    );
    let message = invalid_message(
        capture::enable(
            &pool,
            &CaptureSpec::new("orders", "Order")
                .with_id_column("order_no")
                .with_tenant_column("org"),
        )
        .await,
    );
    assert!(
        message.starts_with("tenant column `org` does not exist"),
        "{message}"
    );
    let message = invalid_message(capture::enable(&pool, &CaptureSpec::new("orders", "  ")).await);
    assert!(
        message.contains("entity type must not be empty"),
        "{message}"
    );
    let message =
        invalid_message(capture::enable(&pool, &CaptureSpec::new("order_view", "O")).await);
    assert!(message.contains("is a view, not a table"), "{message}");
    let message = invalid_message(
        capture::enable(&pool, &CaptureSpec::new("observer_change_log", "O")).await,
    );
    assert!(message.contains("change log itself"), "{message}");
    assert!(
        capture::list(&pool).await.unwrap().is_empty(),
        "failed enables leave nothing behind"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn enable_twice_replaces_the_settings(pool: PgPool) {
    exec(&pool, "CREATE TABLE t (id int PRIMARY KEY, code text)").await;
    capture::enable(&pool, &CaptureSpec::new("t", "Old"))
        .await
        .unwrap();
    capture::enable(&pool, &CaptureSpec::new("t", "New").with_id_column("code"))
        .await
        .unwrap();
    exec(&pool, "INSERT INTO t VALUES (1, 'c1')").await;

    let rows = log_rows(&pool).await;
    assert_eq!(rows.len(), 1, "one trigger, one row per change");
    assert_eq!(
        (rows[0].entity_type.as_str(), rows[0].entity_id.as_str()),
        ("New", "c1")
    );
    let listed = capture::list(&pool).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].entity_type.as_str(), listed[0].id_column.as_str()),
        ("New", "code")
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn partitioned_tables_can_be_captured(pool: PgPool) {
    exec(
        &pool,
        "CREATE TABLE events (id int, kind text, PRIMARY KEY (id, kind)) PARTITION BY LIST (kind);
         CREATE TABLE events_a PARTITION OF events FOR VALUES IN ('a');",
    )
    .await;
    capture::enable(&pool, &CaptureSpec::new("events", "Event"))
        .await
        .unwrap();
    exec(&pool, "INSERT INTO events VALUES (1, 'a')").await;
    assert_eq!(log_count(&pool).await, 1);
    assert!(capture::list(&pool).await.unwrap()[0].trigger_present);
}

#[sqlx::test(migrations = "../../migrations")]
async fn disable_stops_capture(pool: PgPool) {
    exec(
        &pool,
        r#"CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE "T 2" (id int PRIMARY KEY)"#,
    )
    .await;
    capture::enable(&pool, &CaptureSpec::new("t", "T"))
        .await
        .unwrap();
    capture::enable(&pool, &CaptureSpec::new(r#""T 2""#, "T2"))
        .await
        .unwrap();
    exec(&pool, "INSERT INTO t VALUES (1)").await;

    assert!(capture::disable(&pool, "public.t").await.unwrap());
    assert!(
        !capture::disable(&pool, "t").await.unwrap(),
        "second disable finds nothing"
    );
    assert!(!capture::disable(&pool, "never_captured").await.unwrap());
    exec(
        &pool,
        r#"INSERT INTO t VALUES (2); INSERT INTO "T 2" VALUES (1)"#,
    )
    .await;

    let rows = log_rows(&pool).await;
    let seen: Vec<_> = rows
        .iter()
        .map(|r| (r.entity_type.as_str(), r.entity_id.as_str()))
        .collect();
    assert_eq!(seen, [("T", "1"), ("T2", "1")]);
    let listed = capture::list(&pool).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].table, "T 2");

    // A captured table dropped since still leaves a row that disable removes.
    exec(&pool, r#"DROP TABLE "T 2""#).await;
    assert!(capture::disable(&pool, r#""T 2""#).await.unwrap());
    assert!(capture::list(&pool).await.unwrap().is_empty());
}

#[sqlx::test(migrations = "../../migrations")]
async fn list_shows_a_trigger_dropped_by_hand(pool: PgPool) {
    exec(
        &pool,
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)",
    )
    .await;
    let enabled = capture::enable(&pool, &CaptureSpec::new("b", "B"))
        .await
        .unwrap();
    capture::enable(&pool, &CaptureSpec::new("a", "A"))
        .await
        .unwrap();
    exec(&pool, "DROP TRIGGER observers_capture ON b").await;

    let listed = capture::list(&pool).await.unwrap();
    let seen: Vec<_> = listed
        .iter()
        .map(|c| (c.table.as_str(), c.trigger_present))
        .collect();
    assert_eq!(seen, [("a", true), ("b", false)]);
    assert_eq!(listed[1].enabled_at, enabled.enabled_at);
    let as_json = serde_json::to_value(&listed[1]).unwrap();
    assert_eq!(as_json["schema"], json!("public"));
    assert_eq!(as_json["trigger_present"], json!(false));
    assert_eq!(as_json["tenant_column"], Value::Null);

    // Re-enabling repairs the drift.
    capture::enable(&pool, &CaptureSpec::new("b", "B"))
        .await
        .unwrap();
    assert!(
        capture::list(&pool)
            .await
            .unwrap()
            .iter()
            .all(|c| c.trigger_present)
    );
}

/// Renaming the key column of a captured table used to make every write to it fail
/// (`null value in column "entity_id"`). Now the trigger keys the row by the primary key, read
/// from the catalog (so it follows the rename), the write succeeds, and `list` shows the drift.
#[sqlx::test(migrations = "../../migrations")]
async fn renaming_the_key_column_never_fails_a_write(pool: PgPool) {
    exec(
        &pool,
        "CREATE TABLE orders (id int PRIMARY KEY, label text)",
    )
    .await;
    capture::enable(&pool, &CaptureSpec::new("orders", "Order"))
        .await
        .unwrap();
    exec(&pool, "ALTER TABLE orders RENAME COLUMN id TO order_id").await;
    exec(
        &pool,
        "INSERT INTO orders VALUES (7, 'first');
         UPDATE orders SET label = 'second' WHERE order_id = 7;
         DELETE FROM orders WHERE order_id = 7;",
    )
    .await;

    let rows = log_rows(&pool).await;
    let seen: Vec<_> = rows
        .iter()
        .map(|r| (r.operation.as_str(), r.entity_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("insert", "7"), ("update", "7"), ("delete", "7")],
        "keyed by the renamed primary key"
    );
    assert_eq!(rows[0].after.as_ref().unwrap()["order_id"], json!(7));
    assert_eq!(unkeyed_count(&pool).await, 0, "every row had a key");

    let listed = capture::list(&pool).await.unwrap();
    let c = &listed[0];
    assert!(c.trigger_present);
    assert!(!c.id_column_present);
    assert_eq!(c.key_columns, ["order_id"]);
    assert_eq!(c.drift.len(), 1, "{:?}", c.drift);
    assert!(
        c.drift[0].contains("id column `id` no longer exists")
            && c.drift[0].contains("primary key (order_id)")
            && c.drift[0].contains("--id-column order_id"),
        "{:?}",
        c.drift
    );

    // Re-enabling with the new name repairs the drift.
    capture::enable(
        &pool,
        &CaptureSpec::new("orders", "Order").with_id_column("order_id"),
    )
    .await
    .unwrap();
    assert!(capture::list(&pool).await.unwrap()[0].drift.is_empty());
}

async fn unkeyed_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM observer_capture_errors")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A row the trigger cannot key at all (its key column is gone or null and the table has no
/// primary key) is still logged, with an empty entity id, and recorded in
/// `observer_capture_errors`, which `list` counts. The application's write never fails.
#[sqlx::test(migrations = "../../migrations")]
async fn a_row_that_cannot_be_keyed_is_logged_and_recorded(pool: PgPool) {
    exec(&pool, "CREATE TABLE notes (id int, body text)").await;
    capture::enable(&pool, &CaptureSpec::new("notes", "Note"))
        .await
        .unwrap();
    exec(
        &pool,
        "INSERT INTO notes VALUES (1, 'keyed'), (NULL, 'null key')",
    )
    .await;
    exec(&pool, "ALTER TABLE notes DROP COLUMN id").await;
    exec(&pool, "INSERT INTO notes VALUES ('no key column')").await;

    let rows = log_rows(&pool).await;
    let seen: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.entity_id.as_str(),
                r.after.as_ref().unwrap()["body"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("1", json!("keyed")),
            ("", json!("null key")),
            ("", json!("no key column"))
        ]
    );
    let errors: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT table_schema, table_name, change_id, error FROM observer_capture_errors ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        errors.iter().map(|e| e.2).collect::<Vec<_>>(),
        [rows[1].id, rows[2].id],
        "each error names its change-log row"
    );
    assert_eq!(
        (errors[0].0.as_str(), errors[0].1.as_str()),
        ("public", "notes")
    );
    assert!(
        errors[0].1 == "notes" && errors[0].3.contains("no primary key"),
        "{errors:?}"
    );

    let listed = capture::list(&pool).await.unwrap();
    let c = &listed[0];
    assert_eq!(c.unkeyed_changes, 2);
    assert!(c.key_columns.is_empty());
    assert!(
        c.drift
            .iter()
            .any(|d| d.contains("2 change(s) were logged with a problem")),
        "{:?}",
        c.drift
    );
    assert!(
        c.drift
            .iter()
            .any(|d| d.contains("id column `id` no longer exists")),
        "{:?}",
        c.drift
    );
}

/// `list` flags every kind of drift it can see: a disabled trigger, a tenant column gone, a
/// table dropped.
#[sqlx::test(migrations = "../../migrations")]
async fn list_flags_tables_whose_definition_drifted(pool: PgPool) {
    exec(
        &pool,
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, org text);
         CREATE TABLE c (id int PRIMARY KEY); CREATE TABLE d (id int PRIMARY KEY)",
    )
    .await;
    for t in ["a", "c", "d"] {
        capture::enable(&pool, &CaptureSpec::new(t, t))
            .await
            .unwrap();
    }
    capture::enable(&pool, &CaptureSpec::new("b", "b").with_tenant_column("org"))
        .await
        .unwrap();
    exec(
        &pool,
        "ALTER TABLE a DISABLE TRIGGER observers_capture;
         ALTER TABLE b DROP COLUMN org;
         DROP TABLE c;",
    )
    .await;
    let listed = capture::list(&pool).await.unwrap();
    let drift: Vec<_> = listed
        .iter()
        .map(|c| (c.table.as_str(), c.drift.join(" | ")))
        .collect();
    assert!(drift[0].1.contains("trigger is disabled"), "{drift:?}");
    assert!(
        drift[1].1.contains("tenant column `org` no longer exists"),
        "{drift:?}"
    );
    assert!(drift[2].1.contains("table no longer exists"), "{drift:?}");
    assert_eq!(drift[3], ("d", String::new()));
    assert!(!listed[2].table_present);
    exec(&pool, "INSERT INTO b VALUES (1)").await;
    assert_eq!(
        log_count(&pool).await,
        1,
        "b still captured, tenant from the session"
    );
    // Inserts have a trigger of their own, and each of the two counts: the insert trigger
    // disabled alone is drift; so is, the other way round, the one for updates and deletes
    // firing only on replicas (so not here) while the insert trigger fires.
    for (what, sql) in [
        (
            "insert trigger disabled",
            "ALTER TABLE d DISABLE TRIGGER observers_capture_insert",
        ),
        (
            "row trigger on replicas only",
            "ALTER TABLE d ENABLE TRIGGER observers_capture_insert;
             ALTER TABLE d ENABLE REPLICA TRIGGER observers_capture",
        ),
    ] {
        exec(&pool, sql).await;
        let listed = capture::list(&pool).await.unwrap();
        assert!(
            listed[3].drift.join(" | ").contains("trigger is disabled"),
            "{what}: {:?}",
            listed[3].drift
        );
    }
}

/// Installs from before the robust key (migrations up to 0008) upgrade through `migrate`: a
/// table captured then keeps accepting writes after its key column is renamed.
#[sqlx::test(migrations = false)]
async fn an_existing_install_upgrades_through_migrate(pool: PgPool) {
    observers_postgres::MIGRATOR
        .run_to(20_260_101_000_008, &pool)
        .await
        .unwrap();
    exec(&pool, "CREATE TABLE orders (id int PRIMARY KEY)").await;
    exec(
        &pool,
        "CREATE TRIGGER observers_capture AFTER INSERT OR UPDATE OR DELETE ON orders
         FOR EACH ROW EXECUTE FUNCTION observers_capture('Order', 'id', '');
         INSERT INTO observer_captures (table_schema, table_name, entity_type, id_column)
         VALUES ('public', 'orders', 'Order', 'id');",
    )
    .await;
    exec(&pool, "ALTER TABLE orders RENAME COLUMN id TO order_id").await;
    let before = sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&pool)
        .await;
    assert!(
        before.is_err(),
        "0008's trigger fails the write: {before:?}"
    );

    observers_postgres::migrate(&pool).await.unwrap();
    exec(&pool, "INSERT INTO orders VALUES (2)").await;
    let rows = log_rows(&pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].entity_id, "2");
}

/// Installs from before the lock-free horizon, the settings as they read and the insert trigger
/// (migrations up to 0031) upgrade through `migrate`: the change log's lock trigger and function
/// go, the row trigger splits in two (inserts on their own function), the settings are recorded
/// as they read, and what was captured before and after is delivered in order, with an empty
/// user id as none.
#[sqlx::test(migrations = false)]
async fn an_install_with_the_horizon_lock_upgrades_through_migrate(pool: PgPool) {
    use observers_core::stores::source::{EventSource, SourceItem};
    observers_postgres::MIGRATOR
        .run_to(20_260_101_000_031, &pool)
        .await
        .unwrap();
    // As `capture enable` installed it then: one row trigger for all three operations.
    exec(
        &pool,
        "CREATE TABLE orders (id int PRIMARY KEY, status text);
         CREATE TRIGGER observers_capture AFTER INSERT OR UPDATE OR DELETE ON orders
         FOR EACH ROW EXECUTE FUNCTION observers_capture('Order', 'id', '');
         CREATE TRIGGER observers_capture_truncate AFTER TRUNCATE ON orders
         FOR EACH STATEMENT EXECUTE FUNCTION observers_capture_truncate('Order');
         INSERT INTO observer_captures (table_schema, table_name, entity_type, id_column)
         VALUES ('public', 'orders', 'Order', 'id');",
    )
    .await;
    exec(
        &pool,
        "BEGIN; SET LOCAL observers.user_id = 'u1';
         INSERT INTO orders VALUES (1, 'before'); COMMIT",
    )
    .await;

    observers_postgres::migrate(&pool).await.unwrap();
    let lock_trigger: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'observer_change_log_lock'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(lock_trigger, 0, "the lock trigger is gone");
    let info = capture::list(&pool).await.unwrap();
    assert!(info[0].drift.is_empty(), "{:?}", info[0].drift);
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger
          WHERE tgrelid = 'orders'::regclass AND tgname LIKE 'observers_capture%' ORDER BY tgname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        triggers[0].contains("AFTER DELETE OR UPDATE")
            && triggers[1].contains("AFTER INSERT")
            && triggers[1].contains("observers_capture_insert('Order', 'id')"),
        "the row trigger is split in two: {triggers:?}"
    );
    exec(
        &pool,
        "SET observers.user_id = 'u2'; RESET observers.user_id;
         INSERT INTO orders VALUES (2, 'after')",
    )
    .await;
    let raw: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM observer_change_log ORDER BY id DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(raw.as_deref(), Some(""), "the setting as it read");
    let items = observers_postgres::PgEventSource::new(pool.clone())
        .fetch(observers_core::Cursor::START, 10)
        .await
        .unwrap();
    let seen: Vec<_> = items
        .iter()
        .map(|i| match i {
            SourceItem::Event(e) => (e.entity_id.clone(), e.user_id.clone()),
            SourceItem::Poison { error, .. } => panic!("poison: {error}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("1".to_owned(), Some("u1".to_owned())),
            ("2".to_owned(), None)
        ]
    );
}

/// A role with no rights on any `observer_*` object, shared by the tests (roles are
/// cluster-wide); creating it is safe when tests race.
async fn app_role(pool: &PgPool) -> &'static str {
    exec(
        pool,
        "DO $$ BEGIN
             CREATE ROLE observers_test_app NOLOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$",
    )
    .await;
    "observers_test_app"
}

/// A connection acting as `role` (`SET ROLE`), outside the pool.
async fn connect_as(pool: &PgPool, role: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {role}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .map(std::borrow::Cow::into_owned)
        .unwrap_or_default()
}

/// Least privilege: an application role that may write its own table, and nothing of
/// Observers', still has its changes captured (the trigger is SECURITY DEFINER), and cannot
/// forge events: no INSERT on the change log, no use of the capture function on a table of its
/// own, and a temporary table named like the change log does not divert the trigger
/// (schema-qualified names).
#[sqlx::test(migrations = "../../migrations")]
async fn an_unprivileged_role_is_captured_but_cannot_forge_events(pool: PgPool) {
    let role = app_role(&pool).await;
    exec(
        &pool,
        "CREATE TABLE orders (id int PRIMARY KEY, label text)",
    )
    .await;
    capture::enable(&pool, &CaptureSpec::new("orders", "Order"))
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {role}; GRANT CREATE ON SCHEMA public TO {role}"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let mut app = connect_as(&pool, role).await;
    sqlx::raw_sql(
        "CREATE TEMP TABLE observer_change_log (LIKE public.orders);
         SET observers.user_id = 'u-7';
         INSERT INTO orders VALUES (1, 'a');
         UPDATE orders SET label = 'b' WHERE id = 1;
         DELETE FROM orders WHERE id = 1;",
    )
    .execute(&mut app)
    .await
    .expect("the application role writes its table");
    let rows = log_rows(&pool).await;
    assert_eq!(
        changes(&rows),
        [
            ("insert", "1", Some("u-7")),
            ("update", "1", Some("u-7")),
            ("delete", "1", Some("u-7"))
        ],
        "captured into the real change log"
    );
    let decoy: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_temp.observer_change_log")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(decoy, 0, "the temporary decoy got nothing");

    let forged = sqlx::query(
        "INSERT INTO public.observer_change_log (entity_type, entity_id, operation, after)
         VALUES ('Order', '1', 'insert', '{}')",
    )
    .execute(&mut app)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&forged), "42501", "permission denied: {forged}");
    let own_trigger = sqlx::raw_sql(
        "CREATE TABLE mine (id int);
         CREATE TRIGGER forge AFTER INSERT ON mine FOR EACH ROW
         EXECUTE FUNCTION public.observers_capture('Order', 'id', '')",
    )
    .execute(&mut app)
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&own_trigger), "42501", "{own_trigger}");
    for table in [
        "observer_captures",
        "observer_capture_errors",
        "observer_dlq_items",
    ] {
        let e = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT 1 FROM public.{table}")))
            .execute(&mut app)
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{table}: {e}");
    }
    assert_eq!(log_count(&pool).await, 3, "nothing forged");
}

/// `TRUNCATE` of a captured table was silently missed. It is one change of kind `truncate` for
/// the entity type (no entity id, no row images), in order with the row changes around it, and
/// `capture list` reports a table whose truncate trigger is gone.
#[sqlx::test(migrations = "../../migrations")]
async fn truncate_is_captured_as_one_event_in_order(pool: PgPool) {
    use observers_core::EventKind;
    use observers_core::stores::source::{EventSource, SourceItem};
    exec(&pool, "CREATE TABLE t (id int PRIMARY KEY)").await;
    capture::enable(&pool, &CaptureSpec::new("t", "T"))
        .await
        .unwrap();
    exec(&pool, "INSERT INTO t VALUES (1), (2)").await;
    exec(
        &pool,
        "BEGIN; SET LOCAL observers.user_id = 'ops'; TRUNCATE t; COMMIT",
    )
    .await;
    exec(&pool, "INSERT INTO t VALUES (3)").await;

    let items = observers_postgres::PgEventSource::new(pool.clone())
        .fetch(observers_core::Cursor::START, 10)
        .await
        .unwrap();
    let seen: Vec<(EventKind, String)> = items
        .iter()
        .map(|i| match i {
            SourceItem::Event(e) => (e.kind, e.entity_id.clone()),
            SourceItem::Poison { error, .. } => panic!("{error}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            (EventKind::Insert, "1".to_owned()),
            (EventKind::Insert, "2".to_owned()),
            (EventKind::Truncate, String::new()),
            (EventKind::Insert, "3".to_owned()),
        ]
    );
    let SourceItem::Event(truncate) = &items[2] else {
        unreachable!()
    };
    assert_eq!(truncate.entity_type, "T");
    assert_eq!(truncate.user_id.as_deref(), Some("ops"));
    assert_eq!((&truncate.before, &truncate.after), (&None, &None));

    assert!(capture::list(&pool).await.unwrap()[0].is_healthy());
    exec(&pool, "DROP TRIGGER observers_capture_truncate ON t").await;
    let listed = capture::list(&pool).await.unwrap();
    assert!(!listed[0].truncate_trigger_enabled);
    assert!(
        listed[0]
            .drift
            .iter()
            .any(|d| d.contains("TRUNCATE is not captured")),
        "{:?}",
        listed[0].drift
    );
    assert!(capture::disable(&pool, "t").await.unwrap());
}

/// The capture function runs with its owner's rights but without a pinned `search_path` (setting
/// it on every call cost about 5 % of an insert), so every name in it and in the change log's
/// statement trigger is schema-qualified. A writer puts a schema of its own first on its search
/// path, holding look-alikes of every operator, function and type those functions use, each of
/// which fails the statement if it is ever called: the writes still succeed, through the keyed
/// path and the primary-key and key-error paths, and are captured as usual.
#[sqlx::test(migrations = "../../migrations")]
async fn a_writers_search_path_cannot_reach_into_the_capture_functions(pool: PgPool) {
    use std::fmt::Write as _;
    let role = app_role(&pool).await;
    exec(
        &pool,
        "CREATE TABLE orders (id int PRIMARY KEY, label text);
         CREATE TABLE pairs (a int, b int, id int, PRIMARY KEY (a, b));
         CREATE TABLE loose (id int, label text)",
    )
    .await;
    for (table, entity) in [("orders", "Order"), ("pairs", "Pair"), ("loose", "Loose")] {
        capture::enable(&pool, &CaptureSpec::new(table, entity))
            .await
            .unwrap();
    }
    let schema = format!("hostile_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON orders, pairs, loose TO {role};
         CREATE SCHEMA {schema} AUTHORIZATION {role}"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let mut app = connect_as(&pool, role).await;
    let s = &schema;
    let mut hostile = format!(
        "CREATE FUNCTION {s}.gotcha(what text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'hijacked: % ran as %', what, current_user; END $$;"
    );
    for (op, left, right, result) in [
        ("=", "text", "text", "bool"),
        ("<>", "text", "text", "bool"),
        ("=", "bigint", "integer", "bool"),
        ("=", "oid", "oid", "bool"),
        ("=", "smallint", "smallint", "bool"),
        ("->>", "jsonb", "text", "text"),
        ("->", "jsonb", "text", "jsonb"),
        ("?", "jsonb", "text", "bool"),
        ("&", "bigint", "bigint", "bigint"),
        ("-", "bigint", "bigint", "bigint"),
        ("#", "bigint", "bigint", "bigint"),
    ] {
        let f = format!("op_{}", hostile.len());
        write!(
            hostile,
            "CREATE FUNCTION {s}.{f}({left}, {right}) RETURNS {result} LANGUAGE sql
                 AS $$ SELECT {s}.gotcha('operator {op}')::{result} $$;
             CREATE OPERATOR {s}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {s}.{f});"
        )
        .unwrap();
    }
    for (name, args, result) in [
        ("to_jsonb", "anyelement", "jsonb"),
        ("lower", "text", "text"),
        ("current_setting", "text, boolean", "text"),
        ("set_config", "text, text, boolean", "text"),
        ("pg_sequence_last_value", "regclass", "bigint"),
        ("currval", "regclass", "bigint"),
        ("quote_ident", "text", "text"),
        ("unnest", "anyarray", "smallint"),
        ("format", "text, text, text, text", "text"),
        ("jsonb_agg", "anyelement", "jsonb"),
    ] {
        write!(
            hostile,
            "CREATE FUNCTION {s}.{name}({args}) RETURNS {result} LANGUAGE sql
                 AS $$ SELECT {s}.gotcha('function {name}')::{result} $$;"
        )
        .unwrap();
    }
    for ty in ["jsonb", "text", "int8", "int4", "bigint", "regclass"] {
        write!(hostile, "CREATE DOMAIN {s}.{ty} AS integer;").unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(hostile))
        .execute(&mut app)
        .await
        .expect("the writer creates its look-alikes");
    // The writer's own statements qualify their operators: only the capture path may meet the
    // look-alikes.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET search_path = {s}, pg_catalog, public;
         SET observers.user_id = 'u-7';
         INSERT INTO orders VALUES (1, 'a');
         UPDATE orders SET label = 'b' WHERE id OPERATOR(pg_catalog.=) 1;
         DELETE FROM orders WHERE id OPERATOR(pg_catalog.=) 1;
         INSERT INTO pairs VALUES (1, 2, NULL);
         INSERT INTO loose VALUES (NULL, 'l');"
    )))
    .execute(&mut app)
    .await
    .expect("no look-alike is reached from the capture path");

    let rows = log_rows(&pool).await;
    assert_eq!(
        changes(&rows),
        [
            ("insert", "1", Some("u-7")),
            ("update", "1", Some("u-7")),
            ("delete", "1", Some("u-7")),
            ("insert", "[1, 2]", Some("u-7")),
            ("insert", "", Some("u-7")),
        ]
    );
    assert_eq!(
        rows.iter()
            .map(|r| r.entity_type.as_str())
            .collect::<Vec<_>>(),
        ["Order", "Order", "Order", "Pair", "Loose"]
    );
    assert_eq!(rows[1].before, Some(json!({"id": 1, "label": "a"})));
    assert_eq!(rows[1].after, Some(json!({"id": 1, "label": "b"})));
    assert_eq!(unkeyed_count(&pool).await, 1, "the key error is recorded");
}

/// A `json` column holds what jsonb cannot: an escaped NUL, a number beyond `numeric`'s range.
/// The application's write still succeeds: the value is captured as a JSON string of its text,
/// the change is named in `observer_capture_errors`, and every other value stays exact. A json
/// column added after `capture enable` is flagged by `list` until enable runs again.
#[sqlx::test(migrations = "../../migrations")]
async fn a_json_value_jsonb_cannot_hold_never_fails_the_write(pool: PgPool) {
    exec(
        &pool,
        "CREATE TABLE docs (id int PRIMARY KEY, doc json, n numeric);
         CREATE TABLE plain (id int PRIMARY KEY, v text)",
    )
    .await;
    enable_all(&pool, &[("docs", "Doc"), ("plain", "Plain")]).await;
    exec(
        &pool,
        r#"INSERT INTO docs VALUES (1, '{"a": "\\u0000", "big": 1e131071}', 1.50),
                                   (2, '{"a": ["\u0000"]}', 2), (3, '[1e131072]', 3);
           UPDATE docs SET doc = '[1]' WHERE id = 2"#,
    )
    .await;
    let rows = log_rows(&pool).await;
    assert_eq!(rows.len(), 4);
    let exact: Value = sqlx::query_scalar("SELECT to_jsonb(d) FROM docs d WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows[0].after.as_ref().unwrap(), &exact, "fits: exact");
    assert_eq!(
        rows[1].after.as_ref().unwrap(),
        &json!({"id": 2, "doc": r#"{"a": ["\u0000"]}"#, "n": 2})
    );
    assert_eq!(rows[2].after.as_ref().unwrap()["doc"], "[1e131072]");
    assert_eq!(
        rows[3].before.as_ref().unwrap()["doc"],
        r#"{"a": ["\u0000"]}"#
    );
    assert_eq!(rows[3].after.as_ref().unwrap()["doc"], json!([1]));
    let errors: Vec<(i64, String)> =
        sqlx::query_as("SELECT change_id, error FROM observer_capture_errors ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        errors.iter().map(|e| e.0).collect::<Vec<_>>(),
        [rows[1].id, rows[2].id, rows[3].id],
        "{errors:?}"
    );
    assert!(
        errors[0]
            .1
            .contains(r#"json column(s) "doc" of this insert"#)
            && errors[2].1.contains("of this update"),
        "{errors:?}"
    );

    // A json column added later: the trigger in place would fail the write; list says so.
    exec(&pool, "ALTER TABLE plain ADD COLUMN j json").await;
    let flagged = capture::list(&pool).await.unwrap();
    let plain = flagged.iter().find(|c| c.table == "plain").unwrap();
    assert!(plain.json_unguarded, "{plain:?}");
    assert!(
        plain.drift.iter().any(|d| d.contains("has a json column")),
        "{:?}",
        plain.drift
    );
    let docs = flagged.iter().find(|c| c.table == "docs").unwrap();
    assert!(!docs.json_unguarded, "{docs:?}");
    let failed = sqlx::query(r#"INSERT INTO plain VALUES (1, 'x', '"\u0000"')"#)
        .execute(&pool)
        .await;
    assert!(failed.is_err(), "the lean trigger fails it: {failed:?}");
    capture::enable(&pool, &CaptureSpec::new("plain", "Plain"))
        .await
        .unwrap();
    exec(&pool, r#"INSERT INTO plain VALUES (1, 'x', '"\u0000"')"#).await;
    let listed = capture::list(&pool).await.unwrap();
    let plain = listed.iter().find(|c| c.table == "plain").unwrap();
    assert!(!plain.json_unguarded, "{plain:?}");
    let last = log_rows(&pool).await.pop().unwrap();
    assert_eq!(last.after.unwrap()["j"], r#""\u0000""#);
}

/// `migrate` moves the capture triggers of existing tables that can hold json (json, an array
/// of it, a composite) to the guarded function, keeping their arguments and state; other tables
/// keep the lean trigger.
#[sqlx::test(migrations = false)]
async fn migrate_guards_the_triggers_of_existing_json_tables(pool: PgPool) {
    observers_postgres::MIGRATOR
        .run_to(20_260_101_000_026, &pool)
        .await
        .unwrap();
    exec(
        &pool,
        "CREATE TYPE pair AS (a int, b int);
         CREATE TABLE docs (id int PRIMARY KEY, doc json[]);
         CREATE TABLE pairs (id int PRIMARY KEY, p pair);
         CREATE TABLE plain (id int PRIMARY KEY, v jsonb);
         CREATE TRIGGER observers_capture AFTER INSERT OR UPDATE OR DELETE ON docs
         FOR EACH ROW EXECUTE FUNCTION observers_capture('Doc', 'id', '');
         CREATE TRIGGER observers_capture AFTER INSERT OR UPDATE OR DELETE ON pairs
         FOR EACH ROW EXECUTE FUNCTION observers_capture('Pair', 'id', '');
         ALTER TABLE pairs DISABLE TRIGGER observers_capture;
         CREATE TRIGGER observers_capture AFTER INSERT OR UPDATE OR DELETE ON plain
         FOR EACH ROW EXECUTE FUNCTION observers_capture('Plain', 'id', '');",
    )
    .await;
    let failed = sqlx::query(r#"INSERT INTO docs VALUES (1, ARRAY['"\u0000"'::json])"#)
        .execute(&pool)
        .await;
    assert!(failed.is_err(), "026's trigger fails the write: {failed:?}");

    observers_postgres::migrate(&pool).await.unwrap();
    let triggers: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.relname::text, p.proname::text, t.tgenabled::text
           FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
           JOIN pg_proc p ON p.oid = t.tgfoid
          WHERE t.tgname = 'observers_capture' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected = [
        ("docs", "observers_capture_json", "O"),
        ("pairs", "observers_capture_json", "D"),
        ("plain", "observers_capture", "O"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(triggers, expected);
    exec(
        &pool,
        r#"INSERT INTO docs VALUES (1, ARRAY['"\u0000"'::json]); INSERT INTO plain VALUES (1, '{}')"#,
    )
    .await;
    let rows = log_rows(&pool).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.entity_type.as_str(), r.entity_id.as_str()))
            .collect::<Vec<_>>(),
        [("Doc", "1"), ("Plain", "1")],
        "the arguments are kept"
    );
    // The array's text output.
    assert_eq!(rows[0].after.as_ref().unwrap()["doc"], r#"{"\"\\u0000\""}"#);
}

/// A user-defined cast to `json` on a column's type runs inside `to_jsonb`, with the rights of
/// the capture function's owner, for every captured change. That owner is the role
/// `observers_capture_owner` (migration 029), which may insert into the change log and nothing
/// else: the cast cannot read the checkpoints, as the role that ran `migrate` could.
/// `capture list` names such casts (through domains and arrays too), with the function and its
/// owner; tables without one are not flagged.
#[sqlx::test(migrations = "../../migrations")]
async fn a_cast_to_json_on_a_captured_columns_type_is_flagged(pool: PgPool) {
    exec(
        &pool,
        "CREATE TYPE mood AS ENUM ('ok', 'meh');
         CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE sql
             AS $$ SELECT json_build_object('mood', $1::text, 'as', current_user,
                                            'checkpoints', has_table_privilege('observer_checkpoints', 'SELECT')) $$;
         CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood);
         CREATE DOMAIN calm AS mood;
         CREATE TABLE people (id int PRIMARY KEY, m calm[]);
         CREATE TABLE plain (id int PRIMARY KEY, m text)",
    )
    .await;
    enable_all(&pool, &[("people", "Person"), ("plain", "Plain")]).await;
    exec(&pool, "INSERT INTO people VALUES (1, ARRAY['ok']::calm[])").await;
    let rows = log_rows(&pool).await;
    assert_eq!(
        rows[0].after.as_ref().unwrap()["m"][0],
        json!({"mood": "ok", "as": "observers_capture_owner", "checkpoints": false}),
        "the cast ran as the capture functions' own role, which cannot read the checkpoints"
    );
    let listed = capture::list(&pool).await.unwrap();
    let people = listed.iter().find(|c| c.table == "people").unwrap();
    assert_eq!(people.json_casts.len(), 1, "{people:?}");
    assert!(
        people.json_casts[0].starts_with("mood (cast to json by mood_json(mood), owned by "),
        "{:?}",
        people.json_casts
    );
    assert!(
        people
            .drift
            .iter()
            .any(|d| d.contains("to_jsonb calls that function")),
        "{:?}",
        people.drift
    );
    let plain = listed.iter().find(|c| c.table == "plain").unwrap();
    assert!(
        plain.json_casts.is_empty() && plain.is_healthy(),
        "{plain:?}"
    );
}

/// `observers migrate` run by a role that may neither create roles nor join
/// `observers_capture_owner` (a non-superuser setup before the admin made that role for it)
/// still succeeds: the capture functions keep that role as their owner, and capture works.
#[sqlx::test(migrations = false)]
async fn migrate_without_the_owner_role_keeps_the_functions_and_works(pool: PgPool) {
    exec(
        &pool,
        "DO $$ BEGIN
             CREATE ROLE observers_test_migrator NOLOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
         END $$;
         GRANT CREATE ON SCHEMA public TO observers_test_migrator",
    )
    .await;
    let mut conn = connect_as(&pool, "observers_test_migrator").await;
    observers_postgres::MIGRATOR.run(&mut conn).await.unwrap();
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT pg_get_userbyid(proowner)::text FROM pg_proc
          WHERE proname IN ('observers_capture', 'observers_capture_json')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(owners, ["observers_test_migrator"]);
    sqlx::query("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    exec(&pool, "ALTER TABLE notes OWNER TO observers_test_migrator").await;
    capture::enable(&pool, &CaptureSpec::new("notes", "Note"))
        .await
        .unwrap();
    exec(&pool, "INSERT INTO notes VALUES (1, 'kept')").await;
    assert_eq!(log_rows(&pool).await.len(), 1);
}

/// Captures each `(table, entity)`.
async fn enable_all(pool: &PgPool, captures: &[(&str, &str)]) {
    for (table, entity) in captures {
        capture::enable(pool, &CaptureSpec::new(*table, *entity))
            .await
            .unwrap();
    }
}
