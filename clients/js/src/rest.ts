// The REST API: a typed fetch wrapper over the inbox, preferences, contact
// and devices. Errors are Herald's problem documents, thrown as HeraldError.
// The token comes from a callback, asked again (refresh: true) once after a
// 401, so an expired token costs one retry, not a failed call.

import type {
  ContactRecord,
  Contact,
  Device,
  DeliveryRecord,
  InboxPage,
  NewDevice,
  Notification,
  Preferences,
  PreferencesView,
  Problem,
  ProblemCode,
} from "./generated/api.js";

/**
 * Gives the token to send, for every request and (re)connect: keep it
 * cached. `refresh` is true when Herald refused the last one (expired):
 * fetch a new one from your auth server then. May be async.
 * `HeraldClient` caches for you, one token for REST and the socket.
 */
export type TokenSource = (context: { refresh: boolean }) => string | Promise<string>;

export interface RestOptions {
  /** Herald's base URL, e.g. `https://herald.example.com`. */
  url: string;
  token: TokenSource;
  /** A `fetch` of your own (tests, instrumentation); the global one by default. */
  fetch?: typeof fetch;
}

/** A refused call: Herald's problem document, typed. */
export class HeraldError extends Error {
  /** The HTTP status (0 when Herald could not be reached). */
  readonly status: number;
  /** Herald's stable code (`validation_failed`, `not_found`, …), or `network` when unreachable. */
  readonly code: ProblemCode | "network";
  /** The field at fault (`data.amount`, `limit`), when there is one. */
  readonly field: string | undefined;
  /** Seconds to wait before trying again (503 and 429 answers). */
  readonly retryAfter: number | undefined;
  readonly problem: Problem | undefined;

  constructor(
    status: number,
    code: ProblemCode | "network",
    message: string,
    extra: { field?: string; retryAfter?: number; problem?: Problem } = {},
  ) {
    super(message);
    this.name = "HeraldError";
    this.status = status;
    this.code = code;
    this.field = extra.field;
    this.retryAfter = extra.retryAfter;
    this.problem = extra.problem;
  }
}

export interface ListOptions {
  /** Only unread entries. */
  unread?: boolean;
  /** `nextCursor` of the previous page. */
  cursor?: string | null;
  /** Page size, 1 to 100 (20 by default). */
  limit?: number;
}

/** The user id a JWT names (`sub`, or `id`), read without verifying it. */
export function subjectOf(token: string): string | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes)) as { sub?: unknown; id?: unknown };
    const sub = claims.sub ?? claims.id;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}

/** Herald's REST API. Every method throws {@link HeraldError} on a refusal. */
export class HeraldRest {
  readonly url: string;
  private readonly token: TokenSource;
  private readonly fetcher: typeof fetch;

  constructor(options: RestOptions) {
    this.url = options.url.replace(/\/+$/, "");
    this.token = options.token;
    this.fetcher = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  }

  /** The token to send now. */
  async currentToken(): Promise<string> {
    return this.token({ refresh: false });
  }

  /** Asks the source for a new token (after Herald refused the last). */
  async refreshToken(): Promise<string> {
    return this.token({ refresh: true });
  }

  /** The caller's user id, from the token. */
  async me(): Promise<string> {
    const sub = subjectOf(await this.currentToken());
    if (!sub) throw new HeraldError(0, "unauthorized", "the token names no user (`sub`)");
    return sub;
  }

  // -- the inbox ------------------------------------------------------------

  /** A page of the inbox, newest first; pass `nextCursor` for the next. */
  listNotifications(options: ListOptions = {}): Promise<InboxPage> {
    const query = new URLSearchParams();
    if (options.unread !== undefined) query.set("unread", String(options.unread));
    if (options.cursor) query.set("cursor", options.cursor);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    const q = query.toString();
    return this.call("GET", `/v1/notifications${q ? `?${q}` : ""}`);
  }

  async unreadCount(): Promise<number> {
    const { count } = await this.call<{ count: number }>("GET", "/v1/notifications/unread-count");
    return count;
  }

  getNotification(id: string): Promise<Notification> {
    return this.call("GET", `/v1/notifications/${encodeURIComponent(id)}`);
  }

  /** Marks one entry read (idempotent); answers it. Every socket of the user hears `notifications_read`. */
  markRead(id: string): Promise<Notification> {
    return this.call("POST", `/v1/notifications/${encodeURIComponent(id)}/read`);
  }

  /** Marks every entry read; answers how many changed. */
  async markAllRead(): Promise<number> {
    const { updated } = await this.call<{ updated: number }>("POST", "/v1/notifications/read-all");
    return updated;
  }

  /** Deletes an entry; 404 (`not_found`) once it is gone. */
  async deleteNotification(id: string): Promise<void> {
    await this.call("DELETE", `/v1/notifications/${encodeURIComponent(id)}`);
  }

  async deliveries(id: string): Promise<DeliveryRecord[]> {
    const { items } = await this.call<{ items: DeliveryRecord[] }>(
      "GET",
      `/v1/notifications/${encodeURIComponent(id)}/deliveries`,
    );
    return items;
  }

  // -- the user's settings (the caller's own unless `user` is given) -------

  async getPreferences(user?: string): Promise<PreferencesView> {
    return this.call("GET", `${await this.userPath(user)}/preferences`);
  }

  async putPreferences(preferences: Preferences, user?: string): Promise<PreferencesView> {
    return this.call("PUT", `${await this.userPath(user)}/preferences`, preferences);
  }

  async getContact(user?: string): Promise<ContactRecord> {
    return this.call("GET", `${await this.userPath(user)}/contact`);
  }

  async putContact(contact: Contact, user?: string): Promise<ContactRecord> {
    return this.call("PUT", `${await this.userPath(user)}/contact`, contact);
  }

  async listDevices(user?: string): Promise<Device[]> {
    const { items } = await this.call<{ items: Device[] }>("GET", `${await this.userPath(user)}/devices`);
    return items;
  }

  async addDevice(device: NewDevice, user?: string): Promise<Device> {
    return this.call("POST", `${await this.userPath(user)}/devices`, device);
  }

  async removeDevice(id: string, user?: string): Promise<void> {
    await this.call("DELETE", `${await this.userPath(user)}/devices/${encodeURIComponent(id)}`);
  }

  private async userPath(user: string | undefined): Promise<string> {
    return `/v1/users/${encodeURIComponent(user ?? (await this.me()))}`;
  }

  /**
   * One call: JSON in and out, a problem document thrown as HeraldError,
   * and one retry with a refreshed token after a 401.
   */
  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let token = await this.currentToken();
    let response = await this.send(method, path, token, body);
    if (response.status === 401) {
      token = await this.refreshToken();
      response = await this.send(method, path, token, body);
    }
    if (!response.ok) throw await problemOf(response);
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }

  private async send(method: string, path: string, token: string, body: unknown): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    try {
      return await this.fetcher(`${this.url}${path}`, {
        method,
        headers,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
    } catch (e) {
      throw new HeraldError(0, "network", `Herald could not be reached: ${String(e)}`);
    }
  }
}

async function problemOf(response: Response): Promise<HeraldError> {
  const retry = Number(response.headers.get("retry-after"));
  const retryAfter = Number.isFinite(retry) && retry > 0 ? retry : undefined;
  const type = response.headers.get("content-type") ?? "";
  if (type.includes("json")) {
    try {
      const problem = (await response.json()) as Problem;
      return new HeraldError(response.status, problem.code, problem.detail || problem.title, {
        ...(problem.field === undefined ? {} : { field: problem.field }),
        ...(retryAfter === undefined ? {} : { retryAfter }),
        problem,
      });
    } catch {
      // Not a problem document after all: described below.
    }
  }
  return new HeraldError(response.status, "internal", `Herald answered ${response.status}`, {
    ...(retryAfter === undefined ? {} : { retryAfter }),
  });
}
