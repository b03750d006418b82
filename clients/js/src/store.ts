// The notification store, framework-free: the inbox as the user sees it
// (items, unread count, paging), kept right by REST and the socket.
//
// It follows the platform's notification store (the seed's Zustand store):
// `markRead` on a read entry is a no-op, `markAllRead` zeroes the count,
// `remove` takes an unread entry off the count; toasts are a queue that
// empties itself. The difference: Herald's inbox is the source of truth.
//
// - A live catalog event shows a toast at once and syncs the head of the
//   inbox (the first page, merged by id), so the entry appears with its
//   title and body rendered in the user's locale, and the count is the
//   server's. Syncs coalesce: a burst of events costs two requests.
// - Read state changes anywhere (this tab, another, a phone) arrive as
//   `notifications_read` / `notification_deleted` and are applied by id,
//   idempotently; their `unreadCount` is the server's count after the change.
// - A resume Herald cannot complete (`refetch`) reloads the inbox.
//
// State is immutable: each change makes a new snapshot, so `subscribe` +
// `getState` fit React's `useSyncExternalStore` (see `react.tsx`).

import type { Notification, ServerEvents } from "./generated/api.js";
import { CATALOG_EVENTS } from "./generated/api.js";
import type { ConnectionStatus, HeraldRealtime } from "./realtime.js";
import { HeraldError, type HeraldRest } from "./rest.js";

/** A passing message about a live event. */
export interface Toast {
  /** The event's id (`eventId`). */
  id: string;
  event: string;
  data: Record<string, unknown>;
  /** The inbox entry for the event, once the head sync has found it (its `title` and `body`). */
  notification?: Notification;
  createdAt: number;
}

export interface NotificationState {
  /** The inbox as loaded so far, newest first. */
  items: Notification[];
  unreadCount: number;
  /** Where the next page starts; null when every page is loaded. */
  nextCursor: string | null;
  hasMore: boolean;
  /** A first load or a reload is in flight. */
  loading: boolean;
  /** The last REST failure, until the next success. */
  error: HeraldError | undefined;
  toasts: Toast[];
  connection: ConnectionStatus;
}

export interface StoreOptions {
  rest: HeraldRest;
  /** Without it the store is REST only (no live events, no read sync). */
  realtime?: HeraldRealtime;
  /** Page size, 1 to 100 (20 by default). */
  pageSize?: number;
  /** How long a toast stays, in ms (5 000 by default; 0: until dismissed). */
  toastDuration?: number;
  /** Which live events make a toast (every catalog event by default). */
  toastFor?: (event: string, data: Record<string, unknown>) => boolean;
  /** At most this many toasts at once, oldest dropped (5 by default). */
  maxToasts?: number;
}

const CATALOG = new Set<string>(CATALOG_EVENTS);

export class NotificationStore {
  private state: NotificationState;
  private readonly listeners = new Set<() => void>();
  private readonly rest: HeraldRest;
  private readonly realtime: HeraldRealtime | undefined;
  private readonly pageSize: number;
  private readonly toastDuration: number;
  private readonly maxToasts: number;
  private readonly toastFor: (event: string, data: Record<string, unknown>) => boolean;
  private readonly detach: Array<() => void> = [];
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>();
  private syncing: Promise<void> | undefined;
  private syncAgain = false;
  private loadingMore: Promise<void> | undefined;
  private stopped = false;

  constructor(options: StoreOptions) {
    this.rest = options.rest;
    this.realtime = options.realtime;
    this.pageSize = options.pageSize ?? 20;
    this.toastDuration = options.toastDuration ?? 5000;
    this.maxToasts = options.maxToasts ?? 5;
    this.toastFor = options.toastFor ?? (() => true);
    this.state = {
      items: [],
      unreadCount: 0,
      nextCursor: null,
      hasMore: false,
      loading: false,
      error: undefined,
      toasts: [],
      connection: options.realtime?.status ?? "idle",
    };
  }

  getState = (): NotificationState => this.state;

  /** Calls `listener` after every change; returns a function that stops it. */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /** Follows the socket and loads the first page. */
  async start(): Promise<void> {
    this.stopped = false;
    const rt = this.realtime;
    if (rt && this.detach.length === 0) {
      this.detach.push(
        rt.onStatus((connection) => {
          this.set({ connection });
          // Connected afresh (not resumed): whatever came meanwhile is in the inbox.
          if (connection === "connected" && rt.position.offset !== undefined) void this.sync();
        }),
        rt.onRefetch(() => void this.reload()),
        rt.on("notifications_read", (e) => this.applyRead(e)),
        rt.on("notification_deleted", (e) => this.applyDeleted(e)),
        rt.onAny((name, data) => {
          if (CATALOG.has(name)) this.live(name, data as Record<string, unknown>);
        }),
      );
    }
    await this.reload();
  }

  /** Stops following the socket (the socket itself is the caller's). */
  stop(): void {
    this.stopped = true;
    for (const off of this.detach.splice(0)) off();
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }

  /** Reloads the first page and the count, dropping older pages. */
  async reload(): Promise<void> {
    this.set({ loading: true });
    try {
      const [page, unreadCount] = await Promise.all([
        this.rest.listNotifications({ limit: this.pageSize }),
        this.rest.unreadCount(),
      ]);
      this.set({
        items: page.items,
        nextCursor: page.nextCursor,
        hasMore: page.nextCursor !== null,
        unreadCount,
        loading: false,
        error: undefined,
      });
      this.attachToasts();
    } catch (e) {
      this.set({ loading: false, error: asHeraldError(e) });
      throw e;
    }
  }

  /** The next (older) page; nothing when every page is loaded. */
  loadMore(): Promise<void> {
    if (!this.state.nextCursor) return Promise.resolve();
    this.loadingMore ??= (async () => {
      try {
        const page = await this.rest.listNotifications({ cursor: this.state.nextCursor, limit: this.pageSize });
        const known = new Set(this.state.items.map((n) => n.id));
        this.set({
          items: [...this.state.items, ...page.items.filter((n) => !known.has(n.id))],
          nextCursor: page.nextCursor,
          hasMore: page.nextCursor !== null,
          error: undefined,
        });
      } catch (e) {
        this.set({ error: asHeraldError(e) });
        throw e;
      } finally {
        this.loadingMore = undefined;
      }
    })();
    return this.loadingMore;
  }

  /** Marks an entry read: at once here, then on the server (and so on every other tab). */
  async markRead(id: string): Promise<void> {
    const entry = this.state.items.find((n) => n.id === id);
    if (entry?.read) return;
    if (entry) this.applyRead({ ids: [id], all: false, unreadCount: Math.max(0, this.state.unreadCount - 1) });
    await this.write(() => this.rest.markRead(id));
  }

  async markAllRead(): Promise<void> {
    this.applyRead({ ids: [], all: true, unreadCount: 0 });
    await this.write(() => this.rest.markAllRead());
  }

  /** Deletes an entry. */
  async remove(id: string): Promise<void> {
    const entry = this.state.items.find((n) => n.id === id);
    const unreadCount = entry && !entry.read ? Math.max(0, this.state.unreadCount - 1) : this.state.unreadCount;
    this.applyDeleted({ id, unreadCount });
    await this.write(() => this.rest.deleteNotification(id));
  }

  dismissToast(id: string): void {
    clearTimeout(this.timers.get(id));
    this.timers.delete(id);
    this.set({ toasts: this.state.toasts.filter((t) => t.id !== id) });
  }

  /** A write failed: the optimistic change is undone by reloading what the server has. */
  private async write(call: () => Promise<unknown>): Promise<void> {
    try {
      await call();
    } catch (e) {
      const error = asHeraldError(e);
      // Already gone elsewhere: the change stands.
      if (error.code !== "not_found" && !this.stopped) {
        this.set({ error });
        await this.reload().catch(() => undefined);
      }
      throw error;
    }
  }

  private applyRead(e: Pick<ServerEvents["notifications_read"], "ids" | "all" | "unreadCount">): void {
    const ids = new Set(e.ids);
    const now = Date.now();
    let changed = false;
    const items = this.state.items.map((n) => {
      if (n.read || !(e.all || ids.has(n.id))) return n;
      changed = true;
      return { ...n, read: true, readAt: n.readAt ?? now };
    });
    this.set({ ...(changed ? { items } : {}), unreadCount: e.unreadCount });
  }

  private applyDeleted(e: Pick<ServerEvents["notification_deleted"], "id" | "unreadCount">): void {
    const items = this.state.items.filter((n) => n.id !== e.id);
    this.set({ ...(items.length !== this.state.items.length ? { items } : {}), unreadCount: e.unreadCount });
  }

  private live(event: string, data: Record<string, unknown>): void {
    const id = typeof data.eventId === "string" ? data.eventId : `${event}-${Date.now()}`;
    if (this.toastFor(event, data) && !this.state.toasts.some((t) => t.id === id)) {
      const toast: Toast = { id, event, data, createdAt: Date.now() };
      const toasts = [...this.state.toasts, toast];
      for (const dropped of toasts.splice(0, Math.max(0, toasts.length - this.maxToasts))) {
        clearTimeout(this.timers.get(dropped.id));
        this.timers.delete(dropped.id);
      }
      this.set({ toasts });
      if (this.toastDuration > 0) {
        this.timers.set(
          id,
          setTimeout(() => this.dismissToast(id), this.toastDuration),
        );
      }
    }
    void this.sync();
  }

  /** Merges the inbox's first page and the count; coalesces overlapping calls. */
  private sync(): Promise<void> {
    if (this.syncing) {
      this.syncAgain = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        do {
          this.syncAgain = false;
          const [page, unreadCount] = await Promise.all([
            this.rest.listNotifications({ limit: this.pageSize }),
            this.rest.unreadCount(),
          ]);
          this.mergeHead(page.items, unreadCount, page.nextCursor);
        } while (this.syncAgain);
      } catch (e) {
        this.set({ error: asHeraldError(e) });
      } finally {
        this.syncing = undefined;
      }
    })();
    return this.syncing;
  }

  private mergeHead(head: Notification[], unreadCount: number, nextCursor: string | null): void {
    if (this.state.items.length === 0) {
      this.set({ items: head, unreadCount, nextCursor, hasMore: nextCursor !== null, error: undefined });
    } else {
      const fresh = new Map(head.map((n) => [n.id, n]));
      const known = new Set(this.state.items.map((n) => n.id));
      // The head covers every entry from its oldest up: one it no longer
      // has was deleted elsewhere. (An empty head is an empty inbox.)
      const oldest = head.at(-1)?.seq ?? Number.NEGATIVE_INFINITY;
      const kept = this.state.items
        .filter((n) => fresh.has(n.id) || n.seq < oldest)
        .map((n) => fresh.get(n.id) ?? n);
      const added = head.filter((n) => !known.has(n.id));
      const items = [...added, ...kept].sort((a, b) => b.seq - a.seq);
      this.set({ items, unreadCount, error: undefined });
    }
    this.attachToasts();
  }

  /** Gives each toast its inbox entry (title, body), once loaded. */
  private attachToasts(): void {
    if (!this.state.toasts.some((t) => !t.notification)) return;
    const byEvent = new Map(this.state.items.map((n) => [n.eventId, n]));
    let changed = false;
    const toasts = this.state.toasts.map((t) => {
      const notification = t.notification ?? byEvent.get(t.id);
      if (notification === t.notification) return t;
      changed = true;
      return { ...t, notification };
    });
    if (changed) this.set({ toasts });
  }

  private set(patch: Partial<NotificationState>): void {
    this.state = { ...this.state, ...patch };
    for (const listener of [...this.listeners]) listener();
  }
}

function asHeraldError(e: unknown): HeraldError {
  return e instanceof HeraldError ? e : new HeraldError(0, "network", String(e));
}
