// A page on another origin calls Herald's REST API, as the platform's
// frontend does: headless Chromium (playwright-core, the system's browser)
// opens each page URL given and, from it, fetches the inbox with a bearer
// token (a preflighted cross-origin request). Prints one JSON line per page:
//   {"page": "…", "ok": true, "status": 200, "body": {…}}   the page read it
//   {"page": "…", "ok": false, "error": "TypeError: Failed to fetch"}   refused
// Usage: node cors.mjs '{"api": "http://…/v1/notifications", "token": "…", "pages": ["http://…/"]}'
import { chromium } from "playwright-core";

const { api, token, pages } = JSON.parse(process.argv[2]);
const executablePath = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  for (const url of pages) {
    const page = await browser.newPage();
    page.on("pageerror", (e) => say({ page: url, step: "pageerror", error: String(e) }));
    await page.goto(url);
    const result = await page.evaluate(async ({ api, token }) => {
      try {
        const res = await fetch(api, { headers: { Authorization: `Bearer ${token}` } });
        return { ok: true, status: res.status, body: await res.json() };
      } catch (e) {
        return { ok: false, error: String(e) };
      }
    }, { api, token });
    say({ page: url, origin: await page.evaluate(() => location.origin), ...result });
    await page.close();
  }
} finally {
  await browser.close();
}
