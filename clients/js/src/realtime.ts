// The realtime connection: socket.io-client to Herald's `/socket.io/`, with
// resume.
//
// Herald numbers every event it sends with an `offset` (the same in all its
// rooms, increasing) and names the history's `epoch` on connect. This class
// keeps the highest offset it has seen and, on every reconnect, asks Herald
// to resume from it (`auth.resume`, with the subscriptions to restore): the
// missed events are replayed in order, once, before anything live, then
// `resumed {recovered: true}`. When Herald cannot (the gap is older than its
// history, the history was lost), it answers `recovered: false` and this
// class emits `refetch`: reload the inbox, which has every event.
//
// `auth` is a function, so each (re)connect asks the token source again; a
// token Herald refuses (expired) is refreshed before the next attempt. A
// socket the server disconnects (token expired, rate limit) is reconnected
// by this class, since socket.io-client leaves that to the application.

import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import type { ServerEvents } from "./generated/api.js";
import type { TokenSource } from "./rest.js";

/** A room to follow beyond the ones joined on connect (`user:{id}`, a restaurant's, `admin`). */
export type Subscription =
  | { type: "guest_card"; data: { guestId: string } }
  | { type: "points_operations"; data: { restaurantId: string } }
  | { type: "restaurant_transactions"; data: { restaurantId: string } }
  | { type: "system_events"; data?: Record<string, never> };

/** The answer to `subscribe` / `unsubscribe`. */
export type SubscriptionAck =
  | { ok: true; room: string }
  | { ok: false; error: { code: string; message: string } };

export type ConnectionStatus = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** Where the client is in Herald's event stream. */
export interface Position {
  offset: number | undefined;
  epoch: string | null | undefined;
}

export interface RealtimeOptions {
  url: string;
  token: TokenSource;
  /** Rooms to follow, restored on every resume. */
  subscriptions?: Subscription[];
  /** `["websocket", "polling"]` by default, as the platform's frontend uses. */
  transports?: Array<"websocket" | "polling">;
  /** Start from a position kept elsewhere (another tab's, storage). */
  position?: Position;
  /** Further socket.io-client options (reconnection delays, path, …). */
  socket?: Partial<ManagerOptions & SocketOptions>;
}

export type EventName = keyof ServerEvents;
export type EventHandler<K extends EventName> = (data: ServerEvents[K], meta: { offset: number | undefined }) => void;
export type AnyEventHandler = <K extends EventName>(
  name: K,
  data: ServerEvents[K],
  meta: { offset: number | undefined },
) => void;

/** Why the store should reload the inbox. */
export interface RefetchReason {
  reason: string;
  rooms: string[];
}

type Listener<A extends unknown[]> = (...args: A) => void;

class Emitter<A extends unknown[]> {
  private listeners = new Set<Listener<A>>();
  on(listener: Listener<A>): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  emit(...args: A): void {
    for (const listener of [...this.listeners]) listener(...args);
  }
}

const RECONNECT_BASE_MS = 500;
const RECONNECT_MAX_MS = 10_000;

/** A resumable connection to Herald's Socket.IO endpoint. */
export class HeraldRealtime {
  /** The underlying socket.io-client socket: an escape hatch; prefer {@link on}. */
  readonly socket: Socket;
  private offset: number | undefined;
  private epoch: string | null | undefined;
  private readonly subscriptions: Subscription[] = [];
  private readonly token: TokenSource;
  private refreshNext = false;
  private resuming = false;
  private closed = true;
  private attempts = 0;
  private serverDelay: number | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private currentStatus: ConnectionStatus = "idle";
  private readonly statusEvents = new Emitter<[ConnectionStatus]>();
  private readonly refetchEvents = new Emitter<[RefetchReason]>();
  private readonly anyEvents = new Emitter<[EventName, unknown, { offset: number | undefined }]>();
  private readonly errorEvents = new Emitter<[Error]>();

  constructor(options: RealtimeOptions) {
    this.token = options.token;
    this.offset = options.position?.offset;
    this.epoch = options.position?.epoch;
    this.subscriptions.push(...(options.subscriptions ?? []));
    this.socket = io(options.url, {
      autoConnect: false,
      transports: options.transports ?? ["websocket", "polling"],
      reconnectionDelay: RECONNECT_BASE_MS,
      reconnectionDelayMax: RECONNECT_MAX_MS,
      ...options.socket,
      auth: (cb) => {
        this.handshake().then(cb, (e: unknown) => {
          this.errorEvents.emit(e instanceof Error ? e : new Error(String(e)));
          // No token: this attempt fails; the next one asks again.
          cb({});
        });
      },
    });
    this.wire();
  }

  /** Connects (and keeps reconnecting until {@link close}). */
  connect(): void {
    if (!this.closed) return;
    this.closed = false;
    this.setStatus("connecting");
    this.socket.connect();
  }

  /** Disconnects for good; {@link connect} starts again, resuming. */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.socket.disconnect();
    this.setStatus("closed");
  }

  get status(): ConnectionStatus {
    return this.currentStatus;
  }

  /** The last offset seen and the history's epoch: what a resume starts from. */
  get position(): Position {
    return { offset: this.offset, epoch: this.epoch };
  }

  /** Follows an event by name; returns a function that stops following. */
  on<K extends EventName>(name: K, handler: EventHandler<K>): () => void {
    return this.anyEvents.on((event, data, meta) => {
      if (event === name) handler(data as ServerEvents[K], meta);
    });
  }

  /** Every event, once each, in offset order (duplicates of a replay dropped). */
  onAny(handler: AnyEventHandler): () => void {
    return this.anyEvents.on((event, data, meta) => handler(event, data as never, meta));
  }

  onStatus(handler: (status: ConnectionStatus) => void): () => void {
    return this.statusEvents.on(handler);
  }

  /** Herald could not replay what was missed: reload the inbox. */
  onRefetch(handler: (why: RefetchReason) => void): () => void {
    return this.refetchEvents.on(handler);
  }

  /** The token source failed. */
  onError(handler: (error: Error) => void): () => void {
    return this.errorEvents.on(handler);
  }

  /** Follows a room; remembered, and restored on every resume. */
  async subscribe(subscription: Subscription): Promise<SubscriptionAck> {
    if (!this.subscriptions.some((s) => same(s, subscription))) this.subscriptions.push(subscription);
    return this.request("subscribe", subscription);
  }

  async unsubscribe(subscription: Subscription): Promise<SubscriptionAck> {
    const i = this.subscriptions.findIndex((s) => same(s, subscription));
    if (i >= 0) this.subscriptions.splice(i, 1);
    return this.request("unsubscribe", subscription);
  }

  private request(event: string, subscription: Subscription): Promise<SubscriptionAck> {
    return this.socket
      .timeout(10_000)
      .emitWithAck(event, { type: subscription.type, data: subscription.data ?? {} }) as Promise<SubscriptionAck>;
  }

  /** The handshake's `auth`: a token (fresh when the last was refused) and the resume request. */
  private async handshake(): Promise<Record<string, unknown>> {
    const refresh = this.refreshNext;
    this.refreshNext = false;
    const token = await this.token({ refresh });
    this.resuming = this.offset !== undefined;
    if (!this.resuming) return { token };
    return {
      token,
      resume: {
        offset: this.offset,
        ...(this.epoch ? { epoch: this.epoch } : {}),
        subscriptions: this.subscriptions.map((s) => ({ type: s.type, data: s.data ?? {} })),
      },
    };
  }

  private wire(): void {
    const socket = this.socket;
    socket.on("connect", () => {
      this.attempts = 0;
      this.serverDelay = undefined;
    });
    socket.on("disconnect", (reason) => {
      if (this.closed) return;
      this.setStatus("reconnecting");
      // The server closed the socket (token expired, rate limited, …):
      // socket.io-client does not come back by itself.
      if (reason === "io server disconnect") this.retry();
    });
    socket.on("connect_error", (error) => {
      if (error.message.startsWith("UNAUTHORIZED")) this.refreshNext = true;
      if (this.closed) return;
      this.setStatus("reconnecting");
      // A refusal of the handshake (CONNECT_ERROR) is not retried by
      // socket.io-client; a transport error is.
      if (!socket.active) this.retry();
    });
    socket.onAny((name: string, data: unknown, meta?: { offset?: number }) => {
      this.receive(name, data, meta?.offset);
    });
  }

  private receive(name: string, data: unknown, offset: number | undefined): void {
    switch (name) {
      case "connected": {
        const c = data as ServerEvents["connected"];
        if (!this.resuming) {
          this.offset = Math.max(this.offset ?? 0, c.offset);
          this.epoch = c.epoch;
        }
        this.attempts = 0;
        this.setStatus("connected");
        break;
      }
      case "resumed": {
        const r = data as ServerEvents["resumed"];
        this.resuming = false;
        this.epoch = r.epoch;
        if (r.recovered) {
          this.offset = Math.max(this.offset ?? 0, r.offset);
        } else {
          this.offset = r.offset;
          // Rooms are followed again whatever the history could replay.
          for (const s of this.subscriptions) void this.request("subscribe", s).catch(() => undefined);
          this.refetchEvents.emit({ reason: r.reason ?? "unknown", rooms: r.rooms ?? [] });
        }
        break;
      }
      case "disconnected": {
        this.serverDelay = (data as ServerEvents["disconnected"]).reconnectDelay;
        break;
      }
      case "error": {
        if ((data as ServerEvents["error"]).code === "UNAUTHORIZED") this.refreshNext = true;
        break;
      }
      default:
        if (offset !== undefined) {
          // Replays and live events arrive in offset order, once; anything
          // at or below the last offset was seen already.
          if (this.offset !== undefined && offset <= this.offset) return;
          this.offset = offset;
        }
    }
    this.anyEvents.emit(name as EventName, data, { offset });
  }

  /** Connects again after a server disconnect or a refused handshake, with backoff and jitter. */
  private retry(): void {
    clearTimeout(this.timer);
    const backoff = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** this.attempts);
    const delay = this.serverDelay ?? Math.round(backoff / 2 + (Math.random() * backoff) / 2);
    this.serverDelay = undefined;
    this.attempts += 1;
    this.timer = setTimeout(() => {
      if (!this.closed && !this.socket.connected) this.socket.connect();
    }, delay);
  }

  private setStatus(status: ConnectionStatus): void {
    if (status === this.currentStatus) return;
    this.currentStatus = status;
    this.statusEvents.emit(status);
  }
}

function same(a: Subscription, b: Subscription): boolean {
  return a.type === b.type && JSON.stringify(a.data ?? {}) === JSON.stringify(b.data ?? {});
}
