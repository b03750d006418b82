// Fills the peer's queue with the benchmark's deliveries, from an empty queue.
//
//   EMAIL=300 SMS=300 PUSH=300 node bullmq/enqueue.mjs    → prints "enqueued 900"

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
const CHUNK = 1000; // one round trip per thousand jobs, not one per job

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
await queue.obliterate({ force: true });

// Interleave the channels, as a real event stream would, so no channel waits behind another.
const total = Math.max(...Object.values(counts));
const jobs = [];
for (let i = 0; i < total; i++) {
  for (const channel of CHANNELS) if (i < counts[channel]) jobs.push(job(channel, i));
}
for (let start = 0; start < jobs.length; start += CHUNK) {
  await queue.addBulk(jobs.slice(start, start + CHUNK).map((j) => ({ ...j, opts: { ...opts, ...j.opts } })));
}

console.log(`enqueued ${jobs.length}`);
await queue.close();
