// Fills the peer's queue with the benchmark's deliveries, from an empty queue.
//
//   EMAIL=300 SMS=300 PUSH=300 node bullmq/enqueue.mjs    → prints "enqueued 900"
//
// LIVE=1 adds them while a worker is already taking jobs, as a producer
// would: the queue is not emptied first (the caller starts from an empty
// Redis database), "adding" is printed just before the first addBulk, jobs
// go CHUNK at a time (default 1000) with IN_FLIGHT addBulks outstanding
// (default 1), and the last line also gives this process's CPU time from
// "adding" on: "enqueued 5000 cpu_ms 412".

import { Queue } from "bullmq";
import { CHANNELS, QUEUE, job, redisConnection } from "./jobs.mjs";

const count = (name, fallback) => {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(value) || value < 0) {
    console.error(`enqueue: ${name} must be a non-negative integer, not ${process.env[name]}`);
    process.exit(2);
  }
  return value;
};

const counts = { email: count("EMAIL", 0), sms: count("SMS", 0), push: count("PUSH", 0) };
const LIVE = process.env.LIVE === "1";
const CHUNK = Math.max(count("CHUNK", 1000), 1); // one round trip per CHUNK jobs, not one per job
const IN_FLIGHT = Math.max(count("IN_FLIGHT", 1), 1);

const opts = {
  attempts: count("ATTEMPTS", 5),
  // Exponential backoff with full jitter, as Herald retries: failing deliveries
  // must not come back in lockstep. `jitter: 1` makes BullMQ draw retry n's
  // delay uniformly from [0, delay·2^(n-1)).
  backoff: { type: "exponential", delay: count("BACKOFF_MS", 100), jitter: 1 },
  removeOnComplete: true,
  removeOnFail: 1000,
};

const queue = new Queue(QUEUE, { connection: redisConnection() });
queue.on("error", (err) => console.error("enqueue:", err.message));

// A previous run's leftovers would be delivered too and skew the count.
if (!LIVE) await queue.obliterate({ force: true });
await queue.waitUntilReady();

// Interleave the channels, as a real event stream would, so no channel waits behind another.
const total = Math.max(...Object.values(counts));
const jobs = [];
for (let i = 0; i < total; i++) {
  for (const channel of CHANNELS) if (i < counts[channel]) jobs.push(job(channel, i));
}
const batches = [];
for (let start = 0; start < jobs.length; start += CHUNK) {
  batches.push(jobs.slice(start, start + CHUNK).map((j) => ({ ...j, opts: { ...opts, ...j.opts } })));
}
if (LIVE) console.log("adding");
const cpu = process.cpuUsage();
let next = 0;
const lane = async () => {
  while (next < batches.length) await queue.addBulk(batches[next++]);
};
await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
const used = process.cpuUsage(cpu);

console.log(`enqueued ${jobs.length}${LIVE ? ` cpu_ms ${((used.user + used.system) / 1000).toFixed(0)}` : ""}`);
await queue.close();
