// @vitest-environment happy-dom
// @vitest-environment-options {"url": "http://127.0.0.1:5173/"}
//
// The React bindings in a light DOM, against the real Herald: the page is
// on another origin than Herald (CORS, as the platform's frontend), the
// provider connects, and the hooks render live events, toasts, preferences
// and read-all.
import { createRoot } from "react-dom/client";
import { afterEach, expect, it } from "vitest";

import { HeraldProvider, useNotifications, usePreferences, useToasts } from "../src/react.js";
import { herald, mint, newUser, pointsFor, publish } from "./helpers.js";

/** The last click's write, for the test to await its answer. */
let clicked: Promise<void> | undefined;

function Inbox() {
  const { items, unreadCount, connection, markAllRead } = useNotifications();
  const { toasts } = useToasts();
  const { preferences } = usePreferences();
  return (
    <div>
      <span id="connection">{connection}</span>
      <span id="unread">{unreadCount}</span>
      <span id="prefs">{preferences ? String(preferences.enabled) : "loading"}</span>
      <ul>
        {items.map((n) => (
          <li key={n.id} className={n.read ? "read" : "unread"}>
            {n.title}
          </li>
        ))}
      </ul>
      <div id="toasts">
        {toasts.map((t) => (
          <p key={t.id}>{t.notification?.title ?? t.event}</p>
        ))}
      </div>
      <button onClick={() => (clicked = markAllRead())}>read all</button>
    </div>
  );
}

/** Resolves once `predicate` holds of the page, checked on every DOM change. */
function waitFor(root: HTMLElement, predicate: () => boolean, what: string): Promise<void> {
  return new Promise((ok, fail) => {
    if (predicate()) return ok();
    const observer = new MutationObserver(() => {
      if (!predicate()) return;
      observer.disconnect();
      clearTimeout(timer);
      ok();
    });
    const timer = setTimeout(() => {
      observer.disconnect();
      fail(new Error(`timed out waiting for ${what}: ${root.innerHTML}`));
    }, 15_000);
    observer.observe(root, { subtree: true, childList: true, characterData: true, attributes: true });
  });
}

let unmount: (() => void) | undefined;
afterEach(() => unmount?.());

it("renders the inbox, toasts and preferences live, and marks all read", async () => {
  const guest = newUser();
  const container = document.createElement("div");
  document.body.append(container);
  const root = createRoot(container);
  const options = { url: herald().url, token: () => mint(guest), transports: ["websocket" as const] };
  root.render(
    <HeraldProvider options={options}>
      <Inbox />
    </HeraldProvider>,
  );
  unmount = () => root.unmount();
  const text = (selector: string) => container.querySelector(selector)?.textContent;

  await waitFor(container, () => text("#connection") === "connected" && text("#prefs") === "true", "the connection");
  expect(location.origin).not.toBe(herald().url);
  expect(text("#unread")).toBe("0");

  await publish(pointsFor(guest, 42));
  await waitFor(container, () => text("#unread") === "1" && container.querySelectorAll("li.unread").length === 1, "the entry");
  expect(text("li")).toContain("42");
  await waitFor(container, () => text("#toasts p")?.includes("42") === true, "the toast");

  container.querySelector("button")!.click();
  await waitFor(container, () => text("#unread") === "0" && container.querySelectorAll("li.read").length === 1, "read-all");
  await clicked; // Herald answered the write too
});
