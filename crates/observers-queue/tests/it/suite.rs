//! The `JobQueue` contract, run against the in-memory queue and PostgreSQL alike. Schedules
//! are set with `run_at` in the past or far future, so no test needs to move a clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use observers_core::stores::jobs::{EnqueueOutcome, Job, JobQueue, JobStatus, NewJob};
use serde_json::json;

use crate::for_each_backend;
use crate::support::{eventually, now_us};

type Q = Arc<dyn JobQueue>;

fn job(n: i64) -> NewJob {
    NewJob::new("email", "email", json!({ "n": n }))
}

fn ids(jobs: &[Job]) -> Vec<i64> {
    jobs.iter().map(|j| j.id).collect()
}

fn secs(s: i64) -> TimeDelta {
    TimeDelta::seconds(s)
}

async fn dequeue_orders_by_priority_run_at_id(q: Q) {
    let now = now_us();
    let a = q.enqueue(job(1)).await.unwrap().id();
    let b = q.enqueue(job(2).with_priority(5)).await.unwrap().id();
    let c = q
        .enqueue(job(3).with_run_at(now - secs(10)))
        .await
        .unwrap()
        .id();
    let later = q
        .enqueue(job(4).with_priority(9).with_run_at(now + secs(3600)))
        .await
        .unwrap()
        .id();
    q.enqueue(NewJob::new("other", "webhook", json!({})))
        .await
        .unwrap();

    let got = q.dequeue("email", "w1", 10).await.unwrap();
    assert_eq!(
        ids(&got),
        vec![b, c, a],
        "priority desc, then run_at, then id"
    );
    for j in &got {
        assert_eq!(j.status, JobStatus::Processing);
        assert_eq!(j.attempts, 1);
        assert_eq!(j.locked_by.as_deref(), Some("w1"));
        assert!(j.heartbeat_at.is_some());
    }
    assert!(
        q.dequeue("email", "w1", 10).await.unwrap().is_empty(),
        "job {later} is not due"
    );
    assert!(q.dequeue("missing", "w1", 10).await.unwrap().is_empty());
    assert!(
        q.dequeue("other", "w1", 0).await.unwrap().is_empty(),
        "max 0 takes nothing"
    );
    assert_eq!(q.dequeue("other", "w1", 1).await.unwrap().len(), 1);
    let next = q.next_run_at("email").await.unwrap();
    assert_eq!(next, Some(now + secs(3600)), "the scheduled job");
    assert_eq!(q.next_run_at("other").await.unwrap(), None);
}
for_each_backend!(dequeue_orders_by_priority_run_at_id);

async fn enqueue_is_idempotent_on_unique_key_in_any_status(q: Q) {
    let first = q
        .enqueue(job(1).with_unique_key("evt-1:o:0"))
        .await
        .unwrap();
    assert!(matches!(first, EnqueueOutcome::Enqueued(_)));
    let again = q
        .enqueue(job(2).with_unique_key("evt-1:o:0"))
        .await
        .unwrap();
    assert_eq!(again, EnqueueOutcome::Duplicate(first.id()));
    q.dequeue("email", "w", 1).await.unwrap();
    q.complete("w", first.id()).await.unwrap();
    let after = q
        .enqueue(job(3).with_unique_key("evt-1:o:0"))
        .await
        .unwrap();
    assert!(after.is_duplicate() && after.id() == first.id());
    assert_eq!(q.stats().await.unwrap().pending, 0);
    // Purging the job frees its key.
    assert_eq!(q.purge(JobStatus::Completed).await.unwrap(), 1);
    let fresh = q
        .enqueue(job(4).with_unique_key("evt-1:o:0"))
        .await
        .unwrap();
    assert!(!fresh.is_duplicate() && fresh.id() > first.id());
}
for_each_backend!(enqueue_is_idempotent_on_unique_key_in_any_status);

async fn enqueue_many_reports_each_outcome_in_order(q: Q) {
    let old = q.enqueue(job(0).with_unique_key("old")).await.unwrap().id();
    let out = q
        .enqueue_many(vec![
            job(1),
            job(2).with_unique_key("new"),
            job(3).with_unique_key("old"),
            job(4),
            job(5).with_unique_key("new"),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    assert!(!out[0].is_duplicate() && !out[1].is_duplicate() && !out[3].is_duplicate());
    assert_eq!(out[2], EnqueueOutcome::Duplicate(old));
    assert_eq!(
        out[4],
        EnqueueOutcome::Duplicate(out[1].id()),
        "duplicate within the batch"
    );
    assert!(
        out[0].id() < out[1].id() && out[1].id() < out[3].id(),
        "ids follow input order"
    );
    let listed = q.list(None, 10).await.unwrap();
    assert_eq!(listed.len(), 4);
    let payload = |id: i64| listed.iter().find(|j| j.id == id).unwrap().payload["n"].clone();
    assert_eq!(
        (
            payload(out[0].id()),
            payload(out[1].id()),
            payload(out[3].id())
        ),
        (json!(1), json!(2), json!(4))
    );
    assert!(q.enqueue_many(Vec::new()).await.unwrap().is_empty());
}
for_each_backend!(enqueue_many_reports_each_outcome_in_order);

async fn fail_retries_at_retry_at_until_attempts_run_out(q: Q) {
    // A retry in the future is not due before its time.
    let waiting = q.enqueue(job(1)).await.unwrap().id();
    q.dequeue("email", "w", 1).await.unwrap();
    let retry_at = now_us() + secs(300);
    assert_eq!(
        q.fail("w", waiting, "502 from hooks", Some(retry_at))
            .await
            .unwrap(),
        JobStatus::Pending
    );
    let listed = q.list(Some(JobStatus::Pending), 10).await.unwrap();
    assert_eq!(listed[0].run_at, retry_at);
    assert_eq!(listed[0].last_error.as_deref(), Some("502 from hooks"));
    assert_eq!(listed[0].locked_by, None);
    assert!(
        q.dequeue("email", "w", 1).await.unwrap().is_empty(),
        "not before retry_at"
    );

    // A due retry runs again, until attempts run out.
    let id = q.enqueue(job(2).with_max_attempts(2)).await.unwrap().id();
    q.dequeue("email", "w", 1).await.unwrap();
    assert_eq!(
        q.fail("w", id, "timeout", Some(now_us() - secs(1)))
            .await
            .unwrap(),
        JobStatus::Pending
    );
    let again = q.dequeue("email", "w", 1).await.unwrap();
    assert_eq!((again[0].id, again[0].attempts), (id, 2));
    assert_eq!(
        q.fail("w", id, "timeout again", Some(now_us()))
            .await
            .unwrap(),
        JobStatus::Failed,
        "attempts exhausted: fails for good even though a retry was asked for"
    );
    let failed = q.list(Some(JobStatus::Failed), 10).await.unwrap();
    assert_eq!(failed[0].last_error.as_deref(), Some("timeout again"));
    assert!(
        q.fail("w", id, "twice", None).await.is_err(),
        "only processing jobs fail"
    );
    assert!(
        q.complete("w", id).await.is_err(),
        "a failed job cannot complete"
    );
    assert!(q.complete("w", 999_999).await.is_err(), "unknown job");

    // No retry_at: fails at once, attempts left or not.
    let other = q.enqueue(job(3)).await.unwrap().id();
    q.dequeue("email", "w", 1).await.unwrap();
    assert_eq!(
        q.fail("w", other, "400", None).await.unwrap(),
        JobStatus::Failed
    );
    assert_eq!(q.stats().await.unwrap().failed, 2);
}
for_each_backend!(fail_retries_at_retry_at_until_attempts_run_out);

async fn heartbeats_keep_jobs_and_stale_ones_are_rescued(q: Q) {
    let a = q.enqueue(job(1)).await.unwrap().id();
    let b = q.enqueue(job(2)).await.unwrap().id();
    q.dequeue("email", "alive", 1).await.unwrap();
    q.dequeue("email", "dead", 1).await.unwrap();
    // Only the holder's heartbeat counts: "alive" keeps a fresh, "dead" one ages.
    let stale_after = Duration::from_secs(2);
    let q2 = q.clone();
    eventually(
        "the dead worker's job is rescued",
        Duration::from_secs(30),
        || {
            let q = q2.clone();
            async move {
                q.heartbeat("alive", &[a, b]).await.unwrap();
                match q.rescue_stale(stale_after).await.unwrap().total() {
                    0 => false,
                    1 => true,
                    n => panic!("rescued {n} jobs; only the dead worker's one is stale"),
                }
            }
        },
    )
    .await;
    let pending = q.list(Some(JobStatus::Pending), 10).await.unwrap();
    assert_eq!(ids(&pending), vec![b]);
    assert_eq!(
        (pending[0].locked_by.clone(), pending[0].attempts),
        (None, 1)
    );
    assert!(
        q.complete("dead", b).await.is_err(),
        "the dead worker lost it"
    );
    let retaken = q.dequeue("email", "new", 1).await.unwrap();
    assert_eq!((retaken[0].id, retaken[0].attempts), (b, 2));
    q.complete("alive", a).await.unwrap();
    q.complete("alive", a).await.unwrap();
}
for_each_backend!(heartbeats_keep_jobs_and_stale_ones_are_rescued);

async fn stats_list_retry_failed_and_purge(q: Q) {
    for n in 1..=4 {
        q.enqueue(job(n).with_max_attempts(1)).await.unwrap();
    }
    let first = q.list(None, 10).await.unwrap().last().unwrap().id;
    let got = q.dequeue("email", "w", 3).await.unwrap();
    q.complete("w", got[0].id).await.unwrap();
    q.complete_many("w", &[got[1].id]).await.unwrap();
    q.fail("w", got[2].id, "boom", Some(now_us()))
        .await
        .unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (
            stats.pending,
            stats.processing,
            stats.completed,
            stats.failed
        ),
        (1, 0, 2, 1)
    );
    assert!(stats.avg_run_ms.is_some_and(|ms| ms >= 0.0));

    let all: Vec<i64> = (first..first + 4).rev().collect();
    assert_eq!(ids(&q.list(None, 10).await.unwrap()), all);
    assert_eq!(ids(&q.list(None, 2).await.unwrap()), all[..2]);
    assert_eq!(
        ids(&q.list(Some(JobStatus::Completed), 10).await.unwrap()),
        vec![got[1].id, got[0].id]
    );

    assert_eq!(
        q.retry_failed(Some(&[got[0].id, 999_999])).await.unwrap(),
        0,
        "only failed jobs"
    );
    assert_eq!(q.retry_failed(None).await.unwrap(), 1);
    let retried = q.dequeue("email", "w", 10).await.unwrap();
    assert_eq!(
        ids(&retried),
        vec![first + 3, got[2].id],
        "job 4 was due first"
    );
    assert_eq!(retried[1].attempts, 1, "attempts were reset");

    assert!(q.purge(JobStatus::Processing).await.is_err());
    assert_eq!(q.purge(JobStatus::Completed).await.unwrap(), 2);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.completed, stats.avg_run_ms), (0, None));
    assert_eq!(q.list(None, 10).await.unwrap().len(), 2);
}
for_each_backend!(stats_list_retry_failed_and_purge);

async fn release_gives_back_held_jobs_without_counting_the_attempt(q: Q) {
    for n in 1..=3 {
        q.enqueue(job(n)).await.unwrap();
    }
    let got = ids(&q.dequeue("email", "w", 2).await.unwrap());
    assert_eq!(q.release("someone-else", &got).await.unwrap(), 0);
    assert_eq!(q.release("w", &got).await.unwrap(), 2);
    assert_eq!(q.release("w", &got).await.unwrap(), 0, "no longer held");
    let pending = q.list(Some(JobStatus::Pending), 10).await.unwrap();
    assert_eq!(pending.len(), 3);
    assert!(
        pending
            .iter()
            .all(|j| j.attempts == 0 && j.locked_by.is_none())
    );
    let again = q.dequeue("email", "v", 10).await.unwrap();
    assert_eq!(ids(&again)[..2], got[..]);
    assert!(again.iter().all(|j| j.attempts == 1));
}
for_each_backend!(release_gives_back_held_jobs_without_counting_the_attempt);

async fn concurrent_workers_dequeue_each_job_exactly_once(q: Q) {
    let jobs: Vec<NewJob> = (0..1000)
        .map(|n| job(n).with_priority(i32::try_from(n % 7).unwrap()))
        .collect();
    q.enqueue_many(jobs).await.unwrap();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let q = q.clone();
            tokio::spawn(async move {
                let worker = format!("w{w}");
                let mut seen = Vec::new();
                loop {
                    let batch = q.dequeue("email", &worker, 7).await.unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for j in &batch {
                        assert_eq!(j.locked_by.as_deref(), Some(worker.as_str()));
                    }
                    q.complete_many(&worker, &ids(&batch)).await.unwrap();
                    seen.extend(ids(&batch));
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 1000, "no job dequeued twice or lost");
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 1000);
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.processing, stats.completed),
        (0, 0, 1000)
    );
}
for_each_backend!(concurrent_workers_dequeue_each_job_exactly_once);

async fn wait_for_jobs_wakes_on_enqueue(q: Q) {
    // Use up any wake-up left from before (e.g. the LISTEN connection coming up).
    let mut quiet = false;
    for _ in 0..50 {
        if !q.wait_for_jobs(Duration::from_millis(200)).await {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "wait_for_jobs never settles");
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.wait_for_jobs(Duration::from_secs(120)).await })
    };
    tokio::task::yield_now().await;
    q.enqueue(job(1)).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter was not woken by the enqueue")
        .unwrap();
    assert!(woke);
}
for_each_backend!(wait_for_jobs_wakes_on_enqueue);

async fn enqueue_stays_idempotent_while_jobs_complete(q: Q) {
    // Re-enqueues race the completions that move jobs out of the live table: no key is ever
    // enqueued twice, whichever side wins each race.
    let keyed = |n: i64| job(n).with_unique_key(format!("evt-{n}:o:0"));
    let first = q.enqueue_many((0..200).map(keyed).collect()).await.unwrap();
    let taken = q.dequeue("email", "w", 200).await.unwrap();
    assert_eq!(taken.len(), 200);
    let completer = {
        let q = q.clone();
        tokio::spawn(async move {
            for chunk in ids(&taken).chunks(10) {
                q.complete_many("w", chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for n in 0..200 {
        let again = q.enqueue(keyed(n)).await.unwrap();
        let idx = usize::try_from(n).unwrap();
        assert_eq!(again, EnqueueOutcome::Duplicate(first[idx].id()), "key {n}");
    }
    completer.await.unwrap();
    let again = q.enqueue_many((0..200).map(keyed).collect()).await.unwrap();
    assert!(again.iter().all(|o| o.is_duplicate()));
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.pending, stats.completed), (0, 200));
}
for_each_backend!(enqueue_stays_idempotent_while_jobs_complete);

async fn completion_and_failure_are_fenced_by_worker(q: Q) {
    let id = q.enqueue(job(1)).await.unwrap().id();
    q.dequeue("email", "a", 1).await.unwrap();
    // Worker a loses the job (as to a rescue) and b takes it.
    assert_eq!(q.release("a", &[id]).await.unwrap(), 1);
    assert_eq!(ids(&q.dequeue("email", "b", 1).await.unwrap()), vec![id]);
    let err = q.complete("a", id).await.unwrap_err().to_string();
    assert!(err.contains("under b"), "{err}");
    assert_eq!(q.complete_many("a", &[id]).await.unwrap(), 0);
    assert!(q.fail("a", id, "late", None).await.is_err());
    let held = q.list(None, 10).await.unwrap();
    assert_eq!(
        (
            held[0].status,
            held[0].locked_by.as_deref(),
            held[0].last_error.as_deref()
        ),
        (JobStatus::Processing, Some("b"), None),
        "a's outcomes were not written"
    );
    assert_eq!(q.stats().await.unwrap().completed, 0);
    assert_eq!(q.complete_many("b", &[id]).await.unwrap(), 1);
    assert_eq!(
        q.complete_many("b", &[id]).await.unwrap(),
        0,
        "written once"
    );
    q.complete("b", id).await.unwrap();
    assert!(q.complete("a", id).await.is_err(), "completed by b, not a");
    assert_eq!(q.stats().await.unwrap().completed, 1);
}
for_each_backend!(completion_and_failure_are_fenced_by_worker);

async fn rescue_fails_a_job_whose_last_attempt_died(q: Q) {
    let last = q.enqueue(job(1).with_max_attempts(1)).await.unwrap().id();
    let more = q.enqueue(job(2).with_max_attempts(2)).await.unwrap().id();
    assert_eq!(q.dequeue("email", "dead", 2).await.unwrap().len(), 2);
    let stale_after = Duration::from_secs(1);
    let q2 = q.clone();
    let rescued = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = rescued.clone();
    eventually("both jobs are rescued", Duration::from_secs(30), || {
        let q = q2.clone();
        let seen = seen.clone();
        async move {
            let r = q.rescue_stale(stale_after).await.unwrap();
            let done = r.total() > 0;
            if done {
                *seen.lock().unwrap() = Some(r);
            }
            done
        }
    })
    .await;
    let r = rescued.lock().unwrap().take().unwrap();
    assert_eq!(r.requeued, 1, "the job with an attempt left");
    assert_eq!(ids(&r.failed), vec![last]);
    let failed = q.list(Some(JobStatus::Failed), 10).await.unwrap();
    assert_eq!(ids(&failed), vec![last]);
    let error = failed[0].last_error.clone().unwrap();
    assert_eq!(
        error,
        "[OBS-JOB-STALE] worker dead stopped heartbeating during attempt 1 of 1 \
         (the job may crash its worker); failed for good"
    );
    assert_eq!(
        error,
        observers_core::stores::jobs::stale_error(&r.failed[0]).to_string()
    );
    let again = q.dequeue("email", "w", 10).await.unwrap();
    assert_eq!((ids(&again), again[0].attempts), (vec![more], 2));
}
for_each_backend!(rescue_fails_a_job_whose_last_attempt_died);

async fn nul_bytes_are_stored_as_replacement_characters(q: Q) {
    let id = q
        .enqueue(NewJob::new(
            "email",
            "email",
            json!({"k\0": "v\0", "ok": 1}),
        ))
        .await
        .unwrap()
        .id();
    q.dequeue("email", "w", 1).await.unwrap();
    assert_eq!(
        q.fail("w", id, "body: \0\0 end", None).await.unwrap(),
        JobStatus::Failed
    );
    let failed = &q.list(Some(JobStatus::Failed), 1).await.unwrap()[0];
    assert_eq!(
        failed.last_error.as_deref(),
        Some("body: \u{FFFD}\u{FFFD} end")
    );
    assert_eq!(failed.payload["ok"], json!(1), "the payload was stored");
}
for_each_backend!(nul_bytes_are_stored_as_replacement_characters);

#[allow(
    clippy::many_single_char_names,
    reason = "jobs a to f, as in the comments"
)]
async fn groups_run_one_job_at_a_time_in_id_order(q: Q) {
    let grouped = |n: i64, group: &str| job(n).with_group_key(group);
    let out = q
        .enqueue_many(vec![
            grouped(1, "g1"),
            grouped(2, "g1"),
            grouped(3, "g2"),
            job(4),
            grouped(5, "g1"),
            grouped(6, "g2"),
        ])
        .await
        .unwrap();
    let [a, b, c, d, e, f] = [0, 1, 2, 3, 4, 5].map(|i| out[i].id());
    assert_eq!(
        ids(&q.dequeue("email", "w", 10).await.unwrap()),
        vec![a, c, d],
        "one job per group, the earliest; ungrouped jobs as ever"
    );
    assert!(
        q.dequeue("email", "w", 10).await.unwrap().is_empty(),
        "later jobs wait while an earlier one is processing"
    );
    // A job waiting for its retry holds its group back: order matters more than latency.
    let retry_at = now_us() + secs(3600);
    q.fail("w", c, "503", Some(retry_at)).await.unwrap();
    assert!(q.dequeue("email", "w", 10).await.unwrap().is_empty());
    assert_eq!(
        q.next_run_at("email").await.unwrap(),
        Some(retry_at),
        "blocked jobs are not due"
    );
    // A job that failed for good no longer holds its group back (it is dead-lettered).
    q.fail("w", a, "400", None).await.unwrap();
    assert_eq!(ids(&q.dequeue("email", "w", 10).await.unwrap()), vec![b]);
    q.complete("w", b).await.unwrap();
    assert_eq!(ids(&q.dequeue("email", "w", 10).await.unwrap()), vec![e]);
    assert_eq!(q.complete_many("w", &[d, e]).await.unwrap(), 2);
    assert!(
        q.dequeue("email", "w", 10).await.unwrap().is_empty(),
        "{f} waits for {c}"
    );
    let listed = q.list(None, 10).await.unwrap();
    let group_of = |id: i64| {
        listed
            .iter()
            .find(|j| j.id == id)
            .unwrap()
            .group_key
            .clone()
    };
    assert_eq!(
        (group_of(e), group_of(d), group_of(f)),
        (Some("g1".into()), None, Some("g2".into()))
    );
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (
            stats.pending,
            stats.processing,
            stats.completed,
            stats.failed
        ),
        (2, 0, 3, 1)
    );
}
for_each_backend!(groups_run_one_job_at_a_time_in_id_order);
