// What the enqueuer and the worker share: the queue, the Redis connection and
// the benchmark's jobs. Job i of a channel is deterministic, so a run can be
// checked (every address reached exactly once) and repeated.

export const QUEUE = process.env.QUEUE || "herald-peer-deliveries";

export const CHANNELS = ["email", "sms", "push"];

/** BullMQ takes ioredis options, not a URL; this reads `redis[s]://[user:pass@]host[:port][/db]`. */
export function redisConnection(url = process.env.REDIS_URL || "redis://127.0.0.1:6379/0") {
  const { protocol, hostname, port, username, password, pathname } = new URL(url);
  return {
    host: hostname || "127.0.0.1",
    port: Number(port || 6379),
    db: Number(pathname.slice(1) || 0),
    username: decodeURIComponent(username) || undefined,
    password: decodeURIComponent(password) || undefined,
    ...(protocol === "rediss:" && { tls: {} }),
  };
}

const pad = (n, width) => String(n).padStart(width, "0");

const ADDRESS = {
  email: (i) => `guest${i}@example.com`,
  sms: (i) => `+7900${pad(i, 7)}`,
  push: (i) => `fcm-token-${i}`,
};

/** Job i of `channel`: one delivery of a `points_redeemed` event to guest i. */
export function job(channel, i) {
  return {
    name: channel,
    data: {
      channel,
      to: ADDRESS[channel](i),
      event: "points_redeemed",
      eventId: `00000000-0000-4000-8000-${pad(i, 12)}`,
      locale: "ru",
      data: {
        guestId: `guest-${i}`,
        amount: 200,
        newBalance: 300 + i,
        rewardName: "Бесплатный кофе",
        restaurantName: "Пельменная №1",
        transactionId: `txn-${i}`,
      },
    },
    // A stable id per delivery, as Herald's idempotency key; BullMQ ignores a second add.
    opts: { jobId: `${channel}-${i}` },
  };
}
