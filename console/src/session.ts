// The token: given once (in `?token=` or pasted), kept in this tab's
// sessionStorage, and taken out of the address bar at once so it is not
// left in history, bookmarks or a shared screen. It is never logged.
//
// The payload is decoded here for display only (who is signed in, which
// pages to offer); Herald checks the signature and authorises each call.

const KEY = "herald.console.token";

export type Role = "admin" | "restaurant" | "cashier" | "guest" | "service";

export interface Session {
  token: string;
  user: string;
  role: Role;
  restaurantId: string | undefined;
  /** Epoch seconds. */
  exp: number | undefined;
}

export function decode(token: string): Session | undefined {
  const parts = token.trim().split(".");
  if (parts.length !== 3 || !parts[1]) return undefined;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
    const user = claims.sub ?? claims.id;
    const role = claims.role;
    if (typeof user !== "string" || typeof role !== "string") return undefined;
    if (!["admin", "restaurant", "cashier", "guest", "service"].includes(role)) return undefined;
    return {
      token: token.trim(),
      user,
      role: role as Role,
      restaurantId: typeof claims.restaurantId === "string" ? claims.restaurantId : undefined,
      exp: typeof claims.exp === "number" ? claims.exp : undefined,
    };
  } catch {
    return undefined;
  }
}

export function expired(session: Session): boolean {
  return session.exp !== undefined && session.exp * 1000 <= Date.now();
}

/** Takes `?token=` out of the address bar (into this tab's storage), then reads the stored token. */
export function load(): Session | undefined {
  const url = new URL(window.location.href);
  const given = url.searchParams.get("token");
  if (given !== null) {
    url.searchParams.delete("token");
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
    if (decode(given)) sessionStorage.setItem(KEY, given.trim());
  }
  const stored = sessionStorage.getItem(KEY);
  return stored ? decode(stored) : undefined;
}

export function store(session: Session): void {
  sessionStorage.setItem(KEY, session.token);
}

export function clear(): void {
  sessionStorage.removeItem(KEY);
}
