// The client against a real Herald (see global-setup.ts): live events,
// paging, read sync between two clients of one user, resume after a dropped
// connection, token refresh, typed problems.
import { afterEach, describe, expect, it } from "vitest";

import { HeraldClient, type HeraldOptions } from "../src/client.js";
import { HeraldRealtime } from "../src/realtime.js";
import { HeraldError, HeraldRest } from "../src/rest.js";
import { herald, mint, newUser, next, pointsFor, publish, until } from "./helpers.js";

const clients: HeraldClient[] = [];

function client(user: string, options: Partial<HeraldOptions> = {}): HeraldClient {
  const c = new HeraldClient({
    url: herald().url,
    token: () => mint(user),
    transports: ["websocket"],
    ...options,
  });
  clients.push(c);
  return c;
}

async function started(c: HeraldClient): Promise<HeraldClient> {
  const connected = next<string>((h) => c.realtime.onStatus(h), (s) => s === "connected");
  await c.start();
  await connected;
  return c;
}

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

describe("the store", () => {
  it("receives a live event: a toast at once, then the inbox entry and the count", async () => {
    const guest = newUser();
    const c = await started(client(guest));
    expect(c.store.getState()).toMatchObject({ items: [], unreadCount: 0, hasMore: false });

    await publish(pointsFor(guest, 42));
    const state = await until(c.store, (s) => s.unreadCount === 1 && s.items.length === 1, "the entry");
    const [entry] = state.items;
    expect(entry).toMatchObject({ event: "points_added", read: false, data: { amount: 42 } });
    expect(entry!.title).toContain("42");
    const withEntry = await until(c.store, (s) => s.toasts[0]?.notification !== undefined, "the toast's entry");
    expect(withEntry.toasts).toHaveLength(1);
    expect(withEntry.toasts[0]).toMatchObject({ event: "points_added", id: entry!.eventId, data: { amount: 42 } });
    c.store.dismissToast(entry!.eventId);
    expect(c.store.getState().toasts).toEqual([]);
  });

  it("pages with the cursor, newest first, each entry once", async () => {
    const guest = newUser();
    await publish(Array.from({ length: 25 }, (_, i) => pointsFor(guest, i + 1)));
    const c = client(guest, { store: { pageSize: 10 } });
    await c.store.start();
    expect(c.store.getState()).toMatchObject({ unreadCount: 25, hasMore: true });
    expect(c.store.getState().items).toHaveLength(10);
    await c.store.loadMore();
    await c.store.loadMore();
    const { items, hasMore, nextCursor } = c.store.getState();
    expect(hasMore).toBe(false);
    expect(nextCursor).toBeNull();
    expect(items.map((n) => n.data.amount)).toEqual(Array.from({ length: 25 }, (_, i) => 25 - i));
    expect(new Set(items.map((n) => n.id)).size).toBe(25);
    await c.store.loadMore(); // nothing more: a no-op
    expect(c.store.getState().items).toHaveLength(25);
  });

  it("keeps read state in sync between two clients of one user, and no one else", async () => {
    const guest = newUser();
    const stranger = newUser();
    await publish([1, 2, 3].map((a) => pointsFor(guest, a)));
    const tab = await started(client(guest));
    const phone = await started(client(guest));
    const other = await started(client(stranger));
    const heardByOther: string[] = [];
    other.realtime.onAny((name) => heardByOther.push(name));
    await until(phone.store, (s) => s.items.length === 3 && s.unreadCount === 3);
    const [newest, middle] = tab.store.getState().items;

    await tab.store.markRead(newest!.id);
    expect(tab.store.getState().unreadCount).toBe(2); // at once, before the server answers
    let state = await until(phone.store, (s) => s.items.find((n) => n.id === newest!.id)?.read === true, "the read");
    expect(state.unreadCount).toBe(2);
    // Again: a no-op, as in the seed's store.
    await tab.store.markRead(newest!.id);

    await tab.store.remove(middle!.id);
    state = await until(phone.store, (s) => !s.items.some((n) => n.id === middle!.id), "the deletion");
    expect(state.unreadCount).toBe(1);

    await phone.store.markAllRead();
    state = await until(tab.store, (s) => s.unreadCount === 0 && s.items.every((n) => n.read), "read-all");
    expect(state.items).toHaveLength(2);

    // The stranger heard none of it: its next event is its own.
    await publish(pointsFor(stranger, 9));
    await until(other.store, (s) => s.unreadCount === 1);
    expect(heardByOther).toEqual(["points_added"]);
  });

  it("reloads the inbox when Herald cannot replay what was missed", async () => {
    const guest = newUser();
    await publish(pointsFor(guest, 5));
    const rt = new HeraldRealtime({
      url: herald().url,
      token: () => mint(guest),
      transports: ["websocket"],
      position: { offset: 1, epoch: "an-epoch-that-is-gone" },
    });
    const c = client(guest);
    const refetch = next((h) => rt.onRefetch(h));
    rt.connect();
    try {
      expect(await refetch).toMatchObject({ reason: "epoch_changed" });
      expect(rt.position.epoch).not.toBe("an-epoch-that-is-gone");
    } finally {
      rt.close();
    }
    await c.store.start();
    expect(c.store.getState().unreadCount).toBe(1);
  });
});

describe("the connection", () => {
  it("resumes after a dropped transport without losing or repeating an event", async () => {
    const guest = newUser();
    const c = await started(client(guest));
    const seen: Array<[number, number | undefined]> = [];
    c.realtime.on("points_added", (data, { offset }) => seen.push([data.amount, offset]));
    // Live, before the drop: the inbox's count alone could come first (a
    // sync answered after the commit, ahead of the frame), and the frame
    // would then come back as a replay.
    const live = next((h) => c.realtime.on("points_added", h));
    await publish(pointsFor(guest, 1));
    await live;
    await until(c.store, (s) => s.unreadCount === 1);

    // The network drops; the socket stays down while two events are published.
    const manager = c.realtime.socket.io;
    manager.reconnection(false);
    const down = next<string>((h) => c.realtime.onStatus(h), (s) => s === "reconnecting");
    manager.engine.close();
    await down;
    await publish([pointsFor(guest, 2), pointsFor(guest, 3)]);

    const resumed = next((h) => c.realtime.on("resumed", h));
    manager.reconnection(true);
    c.realtime.socket.connect();
    expect(await resumed).toMatchObject({ recovered: true, replayed: 2 });
    await publish(pointsFor(guest, 4));
    await until(c.store, (s) => s.unreadCount === 4 && s.items.length === 4);
    expect(seen.map(([amount]) => amount)).toEqual([1, 2, 3, 4]);
    const offsets = seen.map(([, offset]) => offset!);
    expect([...offsets].sort((a, b) => a - b)).toEqual(offsets);
    expect(new Set(offsets).size).toBe(4);
  });

  it("refreshes an expired token and carries on", async () => {
    const guest = newUser();
    const asked: boolean[] = [];
    let refreshed!: () => void;
    const refreshAsked = new Promise<void>((ok) => (refreshed = ok));
    // The first token lives two seconds; Herald closes the socket when it
    // expires (or refuses it, on a slow start), and the client asks for a
    // fresh one.
    const c = client(guest, {
      token: ({ refresh }) => {
        asked.push(refresh);
        if (refresh) refreshed();
        return mint(guest, asked.length === 1 ? 2 : 3600);
      },
    });
    await started(c);
    await refreshAsked;
    await next<string>((h) => c.realtime.onStatus(h), (s) => s === "connected");
    expect(asked).toEqual([false, true]);
    await publish(pointsFor(guest, 8));
    await until(c.store, (s) => s.unreadCount === 1);
    expect(c.realtime.status).toBe("connected");
  });

  it("retries a REST call once with a refreshed token after a 401", async () => {
    const guest = newUser();
    await publish(pointsFor(guest, 3));
    const asked: boolean[] = [];
    const rest = new HeraldRest({
      url: herald().url,
      token: ({ refresh }) => {
        asked.push(refresh);
        return mint(guest, refresh ? 3600 : -60);
      },
    });
    expect(await rest.unreadCount()).toBe(1);
    expect(asked).toEqual([false, true]);
    // A token that stays refused is a typed 401, after one retry.
    const refused = new HeraldRest({ url: herald().url, token: () => mint(guest, -60) });
    const error = await refused.unreadCount().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HeraldError);
    expect(error).toMatchObject({ status: 401, code: "unauthorized" });
  });
});

describe("REST", () => {
  it("throws Herald's problems typed, with the field at fault", async () => {
    const me = newUser();
    const rest = new HeraldRest({ url: herald().url, token: () => mint(me) });
    const tooMany = await rest.listNotifications({ limit: 1000 }).catch((e: unknown) => e);
    expect(tooMany).toBeInstanceOf(HeraldError);
    expect(tooMany).toMatchObject({ status: 422, code: "validation_failed", field: "limit" });
    const missing = await rest.markRead(crypto.randomUUID()).catch((e: unknown) => e);
    expect(missing).toMatchObject({ status: 404, code: "not_found" });
    const bad = await rest
      .putPreferences({ quietHours: { start: "22:00", end: "22:00" } })
      .catch((e: unknown) => e);
    expect(bad).toMatchObject({ status: 422, field: "quietHours.end" });
  });

  it("reads and writes preferences and devices of the caller", async () => {
    const guest = newUser();
    const rest = new HeraldRest({ url: herald().url, token: () => mint(guest) });
    const saved = await rest.putPreferences({ channels: { email: false }, quietHours: { start: "22:00", end: "08:00" } });
    expect(saved).toMatchObject({ channels: { email: false }, quietHours: { start: "22:00", end: "08:00" } });
    expect(await rest.getPreferences()).toEqual(saved);
    const device = await rest.addDevice({ kind: "fcm", token: "fcm-token-of-a-test-phone" });
    expect((await rest.listDevices()).map((d) => d.id)).toEqual([device.id]);
    await rest.removeDevice(device.id);
    expect(await rest.listDevices()).toEqual([]);
  });
});
