// Drives Herald's console (/console) in a real headless Chromium
// (playwright-core, the system's browser) through one scenario, and prints
// one JSON line per step on stdout for the Rust test to check:
//
//   node console.mjs <scenario>        with HERALD_CONSOLE (JSON) in the environment:
//   { base, tokens: {guest, admin, service}, guest, events: {name: envelope}, eventId, shots }
//
// Scenarios: live, preferences, resume, admin, phone. The script publishes
// the events it is given over REST (as the platform would, with the service
// token) at the moments the scenario needs them. It only waits for what the
// page shows (playwright's auto-waiting); it never sleeps. Screenshots of
// the main screens go to `shots`.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const scenario = process.argv[2];
const config = JSON.parse(process.env.HERALD_CONSOLE ?? "{}");
const executablePath = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");
const WAIT = { timeout: 30000 };

if (config.shots) mkdirSync(config.shots, { recursive: true });

async function publish(key) {
  const envelope = config.events[key];
  const res = await fetch(`${config.base}/v1/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${config.tokens.service}`, "content-type": "application/json" },
    body: JSON.stringify(envelope),
  });
  if (res.status !== 202) throw new Error(`publish ${key}: ${res.status} ${await res.text()}`);
  return envelope.id;
}

async function open(context, token) {
  const page = await context.newPage();
  page.on("pageerror", (e) => say({ step: "pageerror", error: String(e) }));
  page.on("console", (m) => {
    if (m.type() === "error") say({ step: "console", text: m.text() });
  });
  await page.goto(`${config.base}/console?token=${encodeURIComponent(token)}`);
  await page.locator('.conn[data-state="connected"]').waitFor(WAIT);
  return page;
}

const bell = (page, name = /Notifications|Уведомления/) => page.getByRole("button", { name });
const bellLabel = async (page) => bell(page).getAttribute("aria-label");

/** Waits until the bell's accessible name shows `n` unread. */
async function bellShows(page, n, lang = "en") {
  const name =
    n === 0
      ? lang === "ru" ? "Уведомления, непрочитанных нет" : "Notifications, none unread"
      : new RegExp(`^(Notifications|Уведомления), ${n} `);
  await bell(page, name).waitFor(WAIT);
  return bellLabel(page);
}

async function shot(page, name, options = {}) {
  if (config.shots) await page.screenshot({ path: join(config.shots, `${name}.png`), ...options });
}

const scenarios = {
  // An event published over REST shows as a toast and raises the bell's
  // count; reading it in one tab lowers the count in another; mark all
  // read, delete, the category filter and the keyboard work.
  async live(browser) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "en-US" });
    const one = await open(context, config.tokens.guest);
    say({
      step: "signed_in",
      url: one.url(),
      stored: await one.evaluate(() => sessionStorage.getItem("herald.console.token") !== null),
    });

    await publish("first");
    const toast = one.locator(".toast").filter({ hasText: "+42" });
    await toast.waitFor(WAIT);
    say({ step: "toast", toast: await toast.innerText(), bell: await bellShows(one, 1) });
    await shot(one, "bell-and-toast");

    const two = await open(context, config.tokens.guest);
    const twoBefore = await bellShows(two, 1);

    await bell(one).click();
    const centre = one.getByRole("region", { name: "Notifications" });
    await centre.waitFor(WAIT);
    const items = centre.getByRole("listitem");
    await items.first().waitFor(WAIT);
    say({
      step: "centre",
      items: await items.count(),
      markButtons: await centre.getByRole("button", { name: "Mark as read" }).count(),
      text: await items.first().innerText(),
    });
    await shot(one, "centre");

    await centre.getByRole("button", { name: "Mark as read" }).first().click();
    say({ step: "read", one: await bellShows(one, 0), twoBefore, two: await bellShows(two, 0) });

    await publish("second");
    await publish("third");
    await bellShows(one, 2);
    await bellShows(two, 2);
    await items.nth(2).waitFor(WAIT);
    await centre.getByRole("button", { name: "Card", exact: true }).click();
    const cardOnly = await items.count();
    await centre.getByRole("button", { name: "All", exact: true }).click();
    await items.nth(2).waitFor(WAIT);
    await centre.getByRole("button", { name: "Mark all as read" }).click();
    const allRead = { one: await bellShows(one, 0), two: await bellShows(two, 0) };
    await items.first().getByRole("button", { name: "Delete" }).click();
    await items.nth(2).waitFor({ state: "detached", ...WAIT });
    say({ step: "managed", cardOnly, allRead, left: await items.count() });

    // The keyboard: Escape closes the centre and gives the bell its focus
    // back; Enter on the bell opens it again with its heading focused.
    await one.keyboard.press("Escape");
    await centre.waitFor({ state: "detached", ...WAIT });
    const bellFocused = await bell(one).evaluate((el) => el === document.activeElement);
    await one.keyboard.press("Enter");
    await centre.waitFor(WAIT);
    const headingFocused = await one.evaluate(() => document.activeElement?.id === "centre-title");
    const expanded = await bell(one).getAttribute("aria-expanded");
    // The centre's own close button (for touch screens) does as Escape does.
    await centre.getByRole("button", { name: "Close notifications" }).click();
    await centre.waitFor({ state: "detached", ...WAIT });
    const closedToBell = await bell(one).evaluate((el) => el === document.activeElement);
    say({ step: "keyboard", bellFocused, headingFocused, expanded, closedToBell });
    await context.close();
  },

  // Preferences saved in the page (email off) suppress the next email; the
  // notification's delivery trace in the centre says why.
  async preferences(browser) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
    const page = await open(context, config.tokens.guest);
    await page.getByRole("link", { name: "Preferences" }).click();
    const email = page.getByRole("checkbox", { name: "Email" });
    await email.waitFor(WAIT);
    const before = await email.isChecked();
    await email.uncheck();
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText("Saved.").waitFor(WAIT);
    say({ step: "saved", before, after: await email.isChecked() });
    await page.evaluate(() => window.scrollTo(0, 0));
    await shot(page, "preferences", { fullPage: true });

    const eventId = await publish("redeemed");
    await bellShows(page, 1);
    await bell(page).click();
    const centre = page.getByRole("region", { name: "Notifications" });
    const item = centre.getByRole("listitem").first();
    await item.getByRole("button", { name: "Delivery" }).click();
    const trace = item.locator('.trace[data-channel="email"]');
    await trace.waitFor(WAIT);
    say({
      step: "trace",
      eventId,
      status: await trace.getAttribute("data-status"),
      reason: await trace.locator(".reason").innerText(),
      steps: await trace.locator(".trace-step").evaluateAll((rows) => rows.map((r) => r.dataset.step)),
      text: await trace.innerText(),
    });
    await shot(page, "delivery-trace");
    await context.close();
  },

  // A dropped connection resumes: what was published while it was down
  // arrives after the reconnect, every event exactly once, in order.
  async resume(browser) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: "en-US" });
    let down = false;
    const open_ = [];
    await context.routeWebSocket(/\/socket\.io\//, (ws) => {
      if (down) return ws.close({ code: 1011, reason: "down" });
      const server = ws.connectToServer();
      open_.push({ ws, server });
    });
    await context.route(/\/socket\.io\/.*transport=polling/, (route) => (down ? route.abort() : route.continue()));
    const page = await open(context, config.tokens.guest);
    const feed = page.locator(".feed-item");
    const a = await publish("first");
    await page.locator(`.feed-item[data-event-id="${a}"]`).waitFor(WAIT);

    down = true;
    for (const { ws, server } of open_.splice(0)) {
      await server.close({ code: 1011, reason: "dropped" }).catch(() => undefined);
      await ws.close({ code: 1011, reason: "dropped" }).catch(() => undefined);
    }
    await page.locator('.conn[data-state="reconnecting"]').waitFor(WAIT);
    const b = await publish("second");
    const c = await publish("third");
    say({ step: "down", published: [b, c], feed: await feed.count() });

    down = false;
    await page.locator('.conn[data-state="connected"]').waitFor(WAIT);
    await page.locator(`.feed-item[data-event-id="${c}"]`).waitFor(WAIT);
    await bellShows(page, 3);
    const ids = await feed.evaluateAll((rows) => rows.map((r) => r.dataset.eventId));
    say({ step: "resumed", expected: [c, b, a], feed: ids.filter((id) => [a, b, c].includes(id)), all: ids });
    await context.close();
  },

  // The admin's views: the guest's socket among the connections, the
  // guest's deliveries in the explorer with a delivery's trace, the failed
  // deliveries and the routing table.
  async admin(browser) {
    const context = await browser.newContext({ viewport: { width: 1366, height: 900 }, locale: "en-US" });
    // The event was published, and its email sent, before the browser started.
    const guest = await open(context, config.tokens.guest);
    const eventId = config.eventId;
    await bellShows(guest, 1);

    const page = await open(context, config.tokens.admin);
    await page.getByRole("link", { name: "Connections" }).click();
    const row = page.locator(`tr[data-user="${config.guest}"]`);
    await row.waitFor(WAIT);
    say({ step: "connections", row: await row.innerText() });
    await shot(page, "connections");

    await page.getByRole("link", { name: "Delivery explorer" }).click();
    await page.getByLabel("Recipient (user id)").fill(config.guest);
    await page.getByLabel("Event id").fill(eventId);
    await page.getByRole("button", { name: "Find" }).click();
    const email = page.locator('tr[data-channel="email"]');
    await email.waitFor(WAIT);
    await email.getByRole("button", { name: "Trace" }).click();
    const trace = page.locator(".trace");
    await trace.locator(".trace-step").first().waitFor(WAIT);
    say({
      step: "explorer",
      rows: await page.locator("tr[data-delivery]").count(),
      status: await trace.getAttribute("data-status"),
      steps: await trace.locator(".trace-step").evaluateAll((rows) => rows.map((r) => r.dataset.step)),
      text: await trace.innerText(),
    });
    await shot(page, "delivery-explorer");

    await page.getByRole("link", { name: "Failed deliveries" }).click();
    await page.getByText("No deliveries match.").waitFor(WAIT);
    await page.getByRole("link", { name: "Routing" }).click();
    const route = page.locator('tr[data-event="points_redeemed"]');
    await route.waitFor(WAIT);
    say({ step: "routing", events: await page.locator("tr[data-event]").count(), redeemed: await route.innerText() });
    await shot(page, "routing");
    await context.close();
  },

  // A phone-sized screen, in Russian (the browser's language).
  async phone(browser) {
    const context = await browser.newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
      locale: "ru-RU",
    });
    const page = await open(context, config.tokens.guest);
    await publish("first");
    const label = await bellShows(page, 1, "ru");
    await bell(page).click();
    const centre = page.getByRole("region", { name: "Уведомления" });
    const item = centre.getByRole("listitem").first();
    await item.waitFor(WAIT);
    const box = await centre.boundingBox();
    say({
      step: "phone",
      bell: label,
      lang: await page.evaluate(() => document.documentElement.lang),
      markButtons: await centre.getByRole("button", { name: "Отметить прочитанным" }).count(),
      text: await item.innerText(),
      fits: box !== null && box.x >= 0 && box.x + box.width <= 390,
      scrollWidth: await page.evaluate(() => document.documentElement.scrollWidth),
    });
    await shot(page, "phone-ru");
    await context.close();
  },
};

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const run = scenarios[scenario];
  if (!run) throw new Error(`no scenario ${scenario}`);
  await run(browser);
  say({ step: "done" });
} catch (e) {
  say({ step: "failed", error: String(e?.stack ?? e) });
  process.exitCode = 1;
} finally {
  await browser.close();
}
