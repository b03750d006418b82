// The peer of Herald's delivery workers: a BullMQ worker that renders each
// delivery from its event and sends it to SendGrid, Twilio or FCM (the HTTP
// APIs as documented; the benchmark points PROVIDER_URL at a fake of all three).
//
//   PROVIDER_URL=http://127.0.0.1:9000 node bullmq/worker.mjs    → prints "ready"

import { UnrecoverableError, Worker } from "bullmq";
import { QUEUE, redisConnection } from "./jobs.mjs";

const env = process.env;
if (!env.PROVIDER_URL) {
  console.error("worker: PROVIDER_URL is required");
  process.exit(2);
}
const PROVIDER = env.PROVIDER_URL.replace(/\/+$/, "");
const CONCURRENCY = Number(env.CONCURRENCY || 16);
if (!Number.isInteger(CONCURRENCY) || CONCURRENCY < 1) {
  console.error(`worker: CONCURRENCY must be a positive integer, not ${env.CONCURRENCY}`);
  process.exit(2);
}
const SENDGRID_KEY = env.SENDGRID_KEY || "SG.bench-key";
const TWILIO_SID = env.TWILIO_SID || "AC00000000000000000000000000000000";
const TWILIO_TOKEN = env.TWILIO_TOKEN || "bench-token";
const TWILIO_FROM = env.TWILIO_FROM || "+15017122661";
const FCM_PROJECT = env.FCM_PROJECT || "herald-bench";
const FROM = { email: "loyalty@example.com", name: "Пельменная №1" };
const TIMEOUT_MS = 10_000; // a provider that hangs is a transient failure, not a stuck slot

// ── Templates (locale ru), the text of Herald's templates/ru/points_redeemed ──

const RU = new Intl.PluralRules("ru");
const points = (n) => {
  const form = RU.select(n); // one | few | many | other (fractions)
  return `${n} ${form === "one" ? "балл" : form === "many" ? "баллов" : "балла"}`;
};

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
/** A tagged template that HTML-escapes every interpolated value. */
const html = (strings, ...values) =>
  strings.reduce((out, s, i) => out + String(values[i - 1]).replace(/[&<>"']/g, (c) => ESCAPES[c]) + s);

const TEMPLATES = {
  ru: {
    points_redeemed: {
      email: (d) => {
        const subject = `Списано ${points(d.amount)}: ${d.rewardName}`;
        return {
          subject,
          text: `Вы обменяли ${points(d.amount)} на «${d.rewardName}».\n\nОстаток на карте: ${points(d.newBalance)}.\nНомер операции: ${d.transactionId}.`,
          html: html`<!doctype html>
<html lang="ru"><head><meta charset="utf-8"><title>${subject}</title></head>
<body style="margin:0;padding:24px;background:#f4f4f5;font-family:Arial,sans-serif;color:#18181b">
<h1 style="font-size:22px;margin:0 0 16px">${subject}</h1>
<p style="font-size:16px;margin:0 0 12px">Вы обменяли <strong>${points(d.amount)}</strong> на «${d.rewardName}».</p>
<p style="font-size:16px;margin:0 0 12px">Остаток на карте: <strong>${points(d.newBalance)}</strong>.</p>
<p style="font-size:13px;color:#71717a;margin:0">Номер операции: ${d.transactionId}</p>
<p style="font-size:12px;color:#71717a;margin:32px 0 0">Вы получили это письмо как участник программы лояльности ${d.restaurantName}.</p>
</body></html>`,
        };
      },
      sms: (d) => ({
        text: `${d.restaurantName}: списано ${points(d.amount)}, «${d.rewardName}» ваш. Остаток: ${points(d.newBalance)}.`,
      }),
      push: (d) => ({
        title: `Списано ${points(d.amount)}`,
        body: `«${d.rewardName}» ваш. Остаток: ${points(d.newBalance)}`,
      }),
    },
  },
};

// ── Providers ───────────────────────────────────────────────────────────────

/**
 * POSTs and classifies the outcome for BullMQ: a network error, a timeout,
 * 429 or 5xx throws a plain Error (retried with backoff); any other 4xx an
 * UnrecoverableError (failed at once: a bad address will not get better).
 */
async function post(path, init) {
  const url = PROVIDER + path;
  let res;
  try {
    res = await fetch(url, { method: "POST", signal: AbortSignal.timeout(TIMEOUT_MS), ...init });
  } catch (err) {
    throw new Error(`POST ${path}: ${err.cause?.code ?? err.message}`);
  }
  if (res.ok) return res;
  const detail = `POST ${path}: HTTP ${res.status} ${(await res.text()).slice(0, 200)}`;
  throw res.status === 429 || res.status >= 500 ? new Error(detail) : new UnrecoverableError(detail);
}

/** SendGrid and FCM both take a JSON body and a bearer token. */
const postJson = (path, token, body) =>
  post(path, {
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });

// FCM HTTP v1 takes an OAuth access token: fetched once before the worker
// starts, then refreshed a minute before it expires (as Herald does) so that
// no send waits on a sign-in.
let accessToken;
async function signIn() {
  const res = await post("/token", {
    body: new URLSearchParams({ grant_type: "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion: "x" }),
  });
  const grant = await res.json();
  accessToken = grant.access_token;
  const refreshIn = Math.max((grant.expires_in ?? 3600) - 60, 5) * 1000;
  setTimeout(() => signIn().catch((err) => console.error("worker: FCM sign-in:", err.message)), refreshIn).unref();
}

const SEND = {
  async email(to, m, job) {
    const res = await postJson("/v3/mail/send", SENDGRID_KEY, {
      personalizations: [{ to: [{ email: to }] }],
      from: FROM,
      subject: m.subject,
      content: [
        { type: "text/plain", value: m.text },
        { type: "text/html", value: m.html },
      ],
      custom_args: { delivery: job.id }, // names the delivery in SendGrid's event webhook
    });
    await res.arrayBuffer(); // drain it, so the keep-alive connection goes back to the pool
    return res.headers.get("x-message-id");
  },

  async sms(to, m) {
    const res = await post(`/2010-04-01/Accounts/${TWILIO_SID}/Messages.json`, {
      headers: { authorization: `Basic ${Buffer.from(`${TWILIO_SID}:${TWILIO_TOKEN}`).toString("base64")}` },
      body: new URLSearchParams({ To: to, From: TWILIO_FROM, Body: m.text }), // fetch sets the form content type
    });
    return (await res.json()).sid;
  },

  async push(to, m, job) {
    const { event, eventId } = job.data;
    const res = await postJson(`/v1/projects/${FCM_PROJECT}/messages:send`, accessToken, {
      message: {
        token: to,
        notification: { title: m.title, body: m.body },
        // FCM data values are strings; a retry sends the same message.
        data: { event, eventId },
      },
    });
    return (await res.json()).name;
  },
};

/** One delivery: render, send, and return the provider's message id. */
async function deliver(job) {
  const { channel, to, event, locale, data } = job.data;
  const template = TEMPLATES[locale]?.[event]?.[channel];
  if (!template) throw new UnrecoverableError(`no ${locale} ${channel} template for ${event}`);
  return SEND[channel](to, template(data), job);
}

// ── Run ─────────────────────────────────────────────────────────────────────

try {
  await signIn();
} catch (err) {
  console.error("worker: FCM sign-in failed:", err.message);
  process.exit(1);
}

const worker = new Worker(QUEUE, deliver, { connection: redisConnection(), concurrency: CONCURRENCY });
// Connection trouble only: a failed job is BullMQ's to retry, not something to print.
worker.on("error", (err) => console.error("worker:", err.message));

await worker.waitUntilReady();
console.log("ready");

const shutdown = async () => {
  await worker.close(); // lets the jobs in flight finish
  process.exit(0);
};
process.once("SIGTERM", shutdown);
process.once("SIGINT", shutdown);
