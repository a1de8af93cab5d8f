//! Queued actions keep commit order per entity: 30 updates of each of 5 orders, in change-log
//! order as one transaction writes them, go through a queued webhook to a real local HTTP
//! server with several worker pools; each order's totals arrive strictly increasing, and
//! different orders interleave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::routing::post;
use observers_core::actions::ActionFactory;
use observers_core::config;
use observers_core::stores::jobs::JobQueue;
use observers_core::{EntityEvent, EventKind, ObserverExecutor, ObserverSet};
use observers_queue::{ActionJobHandler, PostgresJobQueue, WorkerConfig, WorkerPool};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::support::eventually;

const ENTITIES: i64 = 5;
const UPDATES: i64 = 30;

/// Records `(entity_id, total)` in arrival order; answers after a short, varying delay so
/// concurrent deliveries overtake each other when nothing orders them.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, i64)>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                let entity = body["entity_id"].as_str().unwrap().to_owned();
                let total = body["data"]["total"].as_i64().unwrap();
                // 0–4 ms, varying by entity and update.
                let ms =
                    u64::try_from(total * 7).unwrap() + u64::try_from(entity.len() * 3).unwrap();
                let ms = ms % 5;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                seen.lock().unwrap().push((entity, total));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

#[sqlx::test(migrations = "../../migrations")]
async fn queued_webhooks_keep_commit_order_per_entity(pool: PgPool) {
    let (url, got) = receiver().await;
    let cfg = config::load_str(
        "test.toml",
        &format!(
            "[[observers]]\nname = \"orders\"\nentity = \"Order\"\n\
             [[observers.actions]]\ntype = \"webhook\"\nurl = \"{url}\"\nmode = \"queued\"\n"
        ),
        &|_| None,
    )
    .unwrap();
    let factory = ActionFactory::new(cfg.outbound.clone()).unwrap();
    let set = ObserverSet::from_config(&cfg, &factory).unwrap();
    let q = Arc::new(PostgresJobQueue::new(pool.clone()));
    let jobs: Arc<dyn JobQueue> = q.clone();
    let executor = Arc::new(ObserverExecutor::builder(set).jobs(jobs).build());

    // One transaction's change log: update u of every order, then update u + 1 of every order.
    let mut id = 0;
    for total in 1..=UPDATES {
        for order in 1..=ENTITIES {
            id += 1;
            let event = EntityEvent::new(
                id,
                "Order",
                format!("order-{order}"),
                EventKind::Update,
                Some(json!({"total": total - 1})),
                Some(json!({"total": total})),
            );
            executor.process(&event).await.unwrap();
        }
    }

    // Three pools (as three processes), four workers each, two dequeues in flight in one.
    let mut running = Vec::new();
    for p in 0..3 {
        let mut wc = WorkerConfig::from_config(&cfg.queue, &format!("pool-{p}"));
        wc.workers = 4;
        wc.batch_size = 8;
        wc.fetchers = if p == 0 { 2 } else { 1 };
        wc.poll_interval = Duration::from_millis(100);
        let (stop, rx) = watch::channel(false);
        let pool = WorkerPool::new(
            q.clone(),
            Arc::new(ActionJobHandler::new(executor.clone())),
            wc,
        );
        running.push((stop, tokio::spawn(pool.run(rx))));
    }
    let all = usize::try_from(ENTITIES * UPDATES).unwrap();
    eventually(
        "every update delivered",
        Duration::from_secs(120),
        || async { got.lock().unwrap().len() >= all },
    )
    .await;
    for (stop, task) in running {
        stop.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    let arrivals = got.lock().unwrap().clone();
    assert_eq!(arrivals.len(), all, "each update delivered once");
    let mut per_entity: HashMap<String, Vec<i64>> = HashMap::new();
    for (entity, total) in &arrivals {
        per_entity.entry(entity.clone()).or_default().push(*total);
    }
    assert_eq!(per_entity.len(), usize::try_from(ENTITIES).unwrap());
    for (entity, totals) in &per_entity {
        assert_eq!(
            *totals,
            (1..=UPDATES).collect::<Vec<_>>(),
            "{entity} out of commit order"
        );
    }
    // Different entities run in parallel: arrivals switch entity far more often than once per
    // entity (serial delivery of one entity after another would switch 4 times).
    let switches = arrivals.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(
        switches > 30,
        "entities did not interleave: {switches} switches"
    );
}

fn placed_config(url: &str, priority: i32) -> config::Config {
    config::load_str(
        "test.toml",
        &format!(
            "[[observers]]\nname = \"orders\"\nentity = \"Order\"\n\
             [[observers.actions]]\ntype = \"webhook\"\nurl = \"{url}\"\nmode = \"queued\"\n\
             queue = \"bulk\"\npriority = {priority}\n\
             [[observers.actions]]\ntype = \"webhook\"\nurl = \"{url}\"\nmode = \"queued\"\n\
             queue = \"urgent\"\n"
        ),
        &|_| None,
    )
    .unwrap()
}

fn executor_for(cfg: &config::Config, q: &Arc<PostgresJobQueue>) -> ObserverExecutor {
    let factory = ActionFactory::new(cfg.outbound.clone()).unwrap();
    let set = ObserverSet::from_config(cfg, &factory).unwrap();
    let jobs: Arc<dyn JobQueue> = q.clone();
    ObserverExecutor::builder(set).jobs(jobs).build()
}

fn order_event(id: i64, entity: &str) -> EntityEvent {
    EntityEvent::new(
        id,
        "Order",
        entity,
        EventKind::Update,
        None,
        Some(json!({"total": id})),
    )
}

/// Each action's jobs go to its `queue` with its `priority`. A higher priority runs first within
/// the queue, but never before an earlier job of its own group (one entity and action): the
/// priority raised by a config reload does not let an entity's later change overtake an
/// earlier one.
#[sqlx::test(migrations = "../../migrations")]
async fn actions_enqueue_to_their_queue_and_priority_never_reorders_a_group(pool: PgPool) {
    let q = Arc::new(PostgresJobQueue::new(pool.clone()));
    let url = "http://127.0.0.1:9/hook";
    let low = executor_for(&placed_config(url, 0), &q);
    low.process(&order_event(1, "a")).await.unwrap();
    let high = executor_for(&placed_config(url, 10), &q);
    high.process(&order_event(2, "a")).await.unwrap();
    high.process(&order_event(3, "b")).await.unwrap();

    let placed: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT queue_name, priority, (payload->'event'->>'id')::int8 AS e FROM observer_jobs ORDER BY e, queue_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        placed,
        [
            ("bulk".into(), 0, 1),
            ("urgent".into(), 0, 1),
            ("bulk".into(), 10, 2),
            ("urgent".into(), 0, 2),
            ("bulk".into(), 10, 3),
            ("urgent".into(), 0, 3),
        ]
    );

    // In `bulk`: b's job (priority 10) first, then a's first job (priority 0); a's second job
    // (priority 10) waits for a's first although its priority is higher.
    let taken = q.dequeue("bulk", "w", 10).await.unwrap();
    let events: Vec<(String, i32)> = taken
        .iter()
        .map(|j| {
            (
                j.payload["event"]["entity_id"].as_str().unwrap().to_owned(),
                j.priority,
            )
        })
        .collect();
    assert_eq!(events, [("b".into(), 10), ("a".into(), 0)]);
    for j in &taken {
        q.complete("w", j.id).await.unwrap();
    }
    let next = q.dequeue("bulk", "w", 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload["event"]["id"], json!(2));
    assert_eq!(
        q.dequeue("urgent", "w", 10).await.unwrap().len(),
        2,
        "a's second urgent job waits for its first"
    );

    // Per-queue figures.
    let stats = observers_queue::queue_stats(&pool, None).await.unwrap();
    let figures: Vec<(&str, u64, u64, u64)> = stats
        .iter()
        .map(|s| (s.queue.as_str(), s.pending, s.processing, s.completed))
        .collect();
    assert_eq!(figures, [("bulk", 0, 1, 2), ("urgent", 1, 2, 0)]);
    let only = observers_queue::queue_stats(&pool, Some("nothing-here"))
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].pending + only[0].completed, 0);
    let listed = observers_queue::list_jobs(&pool, Some("urgent"), None, 100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|j| j.queue == "urgent"));
}
