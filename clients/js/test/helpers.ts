// What the tests share: the Herald started by global-setup.ts, tokens signed
// with its secret, publishing as the platform does, and waiting for a state
// by listening to it (no sleeps).
import { createHmac, randomUUID } from "node:crypto";

import { inject } from "vitest";

import type { NotificationState, NotificationStore } from "../src/store.js";

export const herald = () => inject("herald");

/** An HS256 token for `sub`, valid for `ttl` seconds (negative: expired). */
export function mint(sub: string, ttl = 3600, role = "guest"): string {
  const b64 = (v: object) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, role, exp: Math.floor(Date.now() / 1000) + ttl });
  const sig = createHmac("sha256", herald().secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export const newUser = () => randomUUID();

export function pointsFor(guestId: string, amount: number) {
  return {
    event: "points_added",
    data: {
      guestId,
      cardId: randomUUID(),
      amount,
      newBalance: 1000 + amount,
      restaurantId: "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
      restaurantName: "Пельменная №1",
      transactionId: randomUUID(),
    },
  };
}

/** Publishes as the platform (a `service` token); one event or a batch. */
export async function publish(body: object | object[]): Promise<void> {
  const res = await fetch(`${herald().url}/v1/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${herald().serviceToken}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (res.status !== 202) throw new Error(`publish: ${res.status} ${await res.text()}`);
}

/** Resolves with the store's state once `predicate` holds (checked on every change). */
export function until(
  store: NotificationStore,
  predicate: (s: NotificationState) => boolean,
  what = "the expected state",
): Promise<NotificationState> {
  return new Promise((ok, fail) => {
    const check = () => {
      const state = store.getState();
      if (predicate(state)) {
        off();
        clearTimeout(timer);
        ok(state);
        return true;
      }
      return false;
    };
    const off = store.subscribe(check);
    const timer = setTimeout(() => {
      off();
      fail(new Error(`timed out waiting for ${what}: ${JSON.stringify({ ...store.getState(), items: store.getState().items.length })}`));
    }, 15_000);
    check();
  });
}

/** Resolves with the first value `subscribe` hands over that passes `predicate`. */
export function next<T>(
  subscribe: (handler: (value: T) => void) => () => void,
  predicate: (value: T) => boolean = () => true,
): Promise<T> {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => {
      off();
      fail(new Error("timed out waiting for an event"));
    }, 15_000);
    const off = subscribe((value) => {
      if (!predicate(value)) return;
      off();
      clearTimeout(timer);
      ok(value);
    });
  });
}
