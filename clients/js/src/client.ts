// One object for an application: the REST API, the socket and the store,
// sharing one token source.

import { HeraldRealtime, type RealtimeOptions, type Subscription } from "./realtime.js";
import { HeraldRest, type TokenSource } from "./rest.js";
import { NotificationStore, type StoreOptions } from "./store.js";

export interface HeraldOptions {
  /** Herald's base URL (REST and Socket.IO alike). */
  url: string;
  /** Gives the bearer token; called with `refresh: true` when Herald refused the last one. */
  token: TokenSource;
  /** Rooms to follow beyond the user's own (restored on every resume). */
  subscriptions?: Subscription[];
  /** Socket transports; `["websocket", "polling"]` by default. */
  transports?: RealtimeOptions["transports"];
  /** Further socket.io-client options. */
  socket?: RealtimeOptions["socket"];
  /** Store options: page size, toasts. */
  store?: Omit<StoreOptions, "rest" | "realtime">;
  /** A `fetch` of your own. */
  fetch?: typeof fetch;
}

export class HeraldClient {
  readonly rest: HeraldRest;
  readonly realtime: HeraldRealtime;
  readonly store: NotificationStore;
  private started: Promise<void> | undefined;

  constructor(options: HeraldOptions) {
    // One token for both: the source is asked once, and again when either
    // side is refused.
    let current: Promise<string> | undefined;
    const token: TokenSource = ({ refresh }) => {
      if (refresh || !current) {
        current = Promise.resolve(options.token({ refresh }));
        current.catch(() => (current = undefined));
      }
      return current;
    };
    this.rest = new HeraldRest({ url: options.url, token, ...(options.fetch ? { fetch: options.fetch } : {}) });
    this.realtime = new HeraldRealtime({
      url: options.url,
      token,
      ...(options.subscriptions ? { subscriptions: options.subscriptions } : {}),
      ...(options.transports ? { transports: options.transports } : {}),
      ...(options.socket ? { socket: options.socket } : {}),
    });
    this.store = new NotificationStore({ ...options.store, rest: this.rest, realtime: this.realtime });
  }

  /** Connects the socket and loads the inbox (once; later calls share it). */
  start(): Promise<void> {
    this.started ??= (async () => {
      this.realtime.connect();
      await this.store.start();
    })();
    return this.started;
  }

  /** Disconnects and stops the store. */
  close(): void {
    this.store.stop();
    this.realtime.close();
    this.started = undefined;
  }
}

export function createHerald(options: HeraldOptions): HeraldClient {
  return new HeraldClient(options);
}
