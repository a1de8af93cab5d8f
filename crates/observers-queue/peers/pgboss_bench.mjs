// pg-boss (npm) side of `cargo xtask bench --queue`: the same measurements as our queue (enqueue N
// no-op jobs in batches of 1,000, start the workers, time until the last job ran; enqueue->start
// latency of single jobs on idle workers) in its fastest documented configuration:
// batchSize 100, localConcurrency 4, burstWhenBatchFull, LISTEN/NOTIFY wake-up. Its default batch
// size 1 is poll-bound (about 48 jobs/s): never compare against that. Prints one JSON object.
// Env: DATABASE_URL, PEER_DIR (where pg-boss is installed), JOBS, LATENCY_JOBS. Uses the schema
// `pgboss_bench`.
import { pathToFileURL } from "node:url";

const { PgBoss } = await import(
  pathToFileURL(process.env.PEER_DIR + "/node_modules/pg-boss/dist/index.js").href
);

const connectionString = process.env.DATABASE_URL;
const N = Number(process.env.JOBS ?? 50000);
const LATENCY_JOBS = Number(process.env.LATENCY_JOBS ?? 200);
const BATCH = 1000;
const QUEUE = "noop";

const boss = new PgBoss({ connectionString, schema: "pgboss_bench", max: 10, useListenNotify: true });
boss.on("error", (e) => console.error(e));
await boss.start();
await boss.deleteQueue(QUEUE).catch(() => {});
await boss.createQueue(QUEUE, { notify: true });

const t0 = performance.now();
for (let done = 0; done < N; done += BATCH) {
  const n = Math.min(BATCH, N - done);
  await boss.insert(QUEUE, Array.from({ length: n }, () => ({ data: {} })));
}
const enqueueSecs = (performance.now() - t0) / 1000;

let completed = 0;
let onDrained;
const drained = new Promise((r) => (onDrained = r));
const starts = new Map();
const started = performance.now();
await boss.work(
  QUEUE,
  { batchSize: 100, localConcurrency: 4, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 },
  async (jobs) => {
    for (const job of jobs) {
      if (job.data && job.data.i !== undefined) starts.get(job.data.i)?.(performance.now());
    }
    completed += jobs.length;
    if (completed >= N) onDrained(performance.now());
  },
);
const drainSecs = ((await drained) - started) / 1000;

const latencies = [];
for (let i = 0; i < LATENCY_JOBS; i++) {
  const seen = new Promise((r) => starts.set(i, r));
  const t = performance.now();
  await boss.send(QUEUE, { i });
  latencies.push((await seen) - t);
}
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];

console.log(
  JSON.stringify({
    jobs: N,
    enqueue_per_sec: N / enqueueSecs,
    drain_per_sec: N / drainSecs,
    latency_p50_ms: pct(50),
    latency_p99_ms: pct(99),
  }),
);
await boss.stop({ graceful: false, wait: false }).catch(() => {});
process.exit(0);
