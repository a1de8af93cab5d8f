// graphile-worker (npm) side of `cargo xtask bench --queue`: the same measurements as our queue
// (enqueue N no-op jobs in batches, start the workers, time until the last job completed;
// enqueue->start latency of single jobs on idle workers) in graphile-worker's documented fastest
// configuration: concurrency 24, localQueue size 500, completeJobBatchDelay 0,
// failJobBatchDelay 0, logging off. Prints one JSON object on stdout.
// Env: DATABASE_URL, PEER_DIR (where graphile-worker is installed), JOBS, LATENCY_JOBS.
import { createRequire } from "node:module";

const require = createRequire(process.env.PEER_DIR + "/");
const { run, runMigrations, makeWorkerUtils, Logger } = require("graphile-worker");

const connectionString = process.env.DATABASE_URL;
const N = Number(process.env.JOBS ?? 50000);
const LATENCY_JOBS = Number(process.env.LATENCY_JOBS ?? 200);
const BATCH = 1000;
const silent = new Logger(() => () => {});
const preset = {
  worker: {
    connectionString,
    concurrentJobs: 24,
    maxPoolSize: 10,
    pollInterval: 2000,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};

await runMigrations({ connectionString, logger: silent });
const utils = await makeWorkerUtils({ connectionString, logger: silent });
await utils.withPgClient((c) => c.query("DELETE FROM graphile_worker._private_jobs"));

const t0 = performance.now();
for (let done = 0; done < N; done += BATCH) {
  const n = Math.min(BATCH, N - done);
  await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: {} })));
}
const enqueueSecs = (performance.now() - t0) / 1000;

let completed = 0;
let onDrained;
const drained = new Promise((r) => (onDrained = r));
const starts = new Map();
const started = performance.now();
const runner = await run({
  preset,
  concurrency: 24,
  noHandleSignals: true,
  logger: silent,
  taskList: {
    noop: async (payload) => {
      if (payload && payload.i !== undefined) starts.get(payload.i)?.(performance.now());
    },
  },
});
runner.events.on("job:success", () => {
  completed += 1;
  if (completed === N) onDrained(performance.now());
});
const drainSecs = ((await drained) - started) / 1000;

const latencies = [];
for (let i = 0; i < LATENCY_JOBS; i++) {
  const seen = new Promise((r) => starts.set(i, r));
  const t = performance.now();
  await utils.addJob("noop", { i });
  latencies.push((await seen) - t);
}
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];

await runner.stop();
await utils.release();
console.log(
  JSON.stringify({
    jobs: N,
    enqueue_per_sec: N / enqueueSecs,
    drain_per_sec: N / drainSecs,
    latency_p50_ms: pct(50),
    latency_p99_ms: pct(99),
  }),
);
process.exit(0);
