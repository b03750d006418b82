// Drives Herald's /demo page in a real headless Chromium (playwright-core,
// the system's browser). Prints one JSON line per step on stdout:
//   {"step":"connected","status":"…"}   once the page's socket is up
//   {"step":"event","event":"…","text":"…"} for the first event the page shows
//   {"step":"inbox","text":"…"}          the page's inbox after that event
// The Rust test publishes an event after "connected".
import { chromium } from "playwright-core";

const [url, eventName] = process.argv.slice(2);
const executablePath = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => say({ step: "pageerror", error: String(e) }));
  await page.goto(url);
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 15000 });
  say({ step: "connected", status: await page.textContent("#status") });
  const item = await page.waitForSelector(`.event[data-event="${eventName}"]`, { timeout: 15000 });
  say({ step: "event", event: eventName, text: await item.textContent() });
  const inbox = await page.waitForSelector(`.inbox-item[data-event="${eventName}"]`, { timeout: 15000 });
  say({ step: "inbox", text: await inbox.textContent(), unread: await page.textContent("#unread") });
} finally {
  await browser.close();
}
