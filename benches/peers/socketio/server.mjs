// Herald's realtime peer: the seed design's WebSocketServer (Express + Socket.IO 4,
// one process), with the contract's identity and room rules so that both
// servers do the same work for the same traffic.
//
//   PORT=8080 JWT_SECRET=… node socketio/server.mjs    → prints "ready 8080"

import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import express from "express";
import jwt from "jsonwebtoken";
import { Server } from "socket.io";

const fail = (message) => {
  console.error(`socketio peer: ${message}`);
  process.exit(2);
};
const required = (name) => process.env[name] || fail(`${name} is required`);

const PORT = Number(required("PORT"));
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) fail(`PORT is not a port number: ${process.env.PORT}`);
const HOST = process.env.HOST || "127.0.0.1";
const SECRET = required("JWT_SECRET"); // no default: Herald has none in production either
const SERVER_ID = process.env.SERVER_ID || "peer-1";
const MAX_BATCH = 1000;

// ── Identity (contract §1) ──────────────────────────────────────────────────

const ROLES = new Set(["admin", "restaurant", "cashier", "guest", "service"]);
const STAFF = new Set(["restaurant", "cashier"]);

/** The caller a token names, or null. The algorithm is pinned, never read from the token. */
function identify(token) {
  let claims;
  try {
    claims = jwt.verify(token, SECRET, { algorithms: ["HS256"] });
  } catch {
    return null;
  }
  // jsonwebtoken checks `exp` only when present; the contract requires it.
  if (typeof claims?.exp !== "number") return null;
  const userId = claims.sub ?? claims.id; // the seed's middleware reads `id`
  const { role, restaurantId } = claims;
  if (typeof userId !== "string" && typeof userId !== "number") return null;
  if (!ROLES.has(role)) return null;
  if (STAFF.has(role) && typeof restaurantId !== "string") return null;
  return { userId: String(userId), role, restaurantId };
}

// ── Rooms (contract §2) ─────────────────────────────────────────────────────

/** A refused client message: `error {code, message}` and a failed ack. */
class Refusal extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);
const isId = (value) => typeof value === "string" && value.length > 0 && value.length <= 128;

const staffOrAdmin = (user, restaurantId) =>
  user.role === "admin" || (STAFF.has(user.role) && user.restaurantId === restaurantId);

const SUBSCRIPTIONS = {
  guest_card: {
    key: "guestId",
    room: (id) => `guest:${id}`,
    allows: (user, id) => user.role === "admin" || (user.role === "guest" && user.userId === id),
    refusal: "a guest may follow only its own card",
  },
  points_operations: {
    key: "restaurantId",
    room: (id) => `restaurant:${id}:points`,
    allows: staffOrAdmin,
    refusal: "only that restaurant's staff or an admin may follow it",
  },
  restaurant_transactions: {
    key: "restaurantId",
    room: (id) => `restaurant:${id}:transactions`,
    allows: staffOrAdmin,
    refusal: "only that restaurant's staff or an admin may follow it",
  },
  system_events: {
    room: () => "admin:events",
    allows: (user) => user.role === "admin",
    refusal: "only admins can subscribe to system events",
  },
};

/** The room a `subscribe`/`unsubscribe` request names, if `user` may be in it. */
function subscriptionRoom(user, request) {
  if (!isObject(request)) throw new Refusal("BAD_REQUEST", "a subscription is an object {type, data}");
  const { type } = request;
  const data = request.data ?? {};
  if (typeof type !== "string") throw new Refusal("BAD_REQUEST", "`type` must be a string");
  if (!isObject(data)) throw new Refusal("BAD_REQUEST", "`data` must be an object");
  if (!Object.hasOwn(SUBSCRIPTIONS, type)) {
    throw new Refusal("INVALID_SUBSCRIPTION", `unknown subscription type \`${type.slice(0, 64)}\``);
  }
  const rule = SUBSCRIPTIONS[type];
  const id = rule.key && data[rule.key];
  if (rule.key && !isId(id)) throw new Refusal("BAD_REQUEST", `\`data.${rule.key}\` must be a non-empty id`);
  if (!rule.allows(user, id)) throw new Refusal("UNAUTHORIZED", rule.refusal);
  return rule.room(id);
}

// ── Event routing (contract §4; the same table as Herald's config/routing.toml) ──

const ROUTES = Object.fromEntries(
  Object.entries({
    points_added: ["restaurant:{restaurantId}:points", "guest:{guestId}", "user:{guestId}"],
    points_redeemed: ["restaurant:{restaurantId}:points", "guest:{guestId}", "user:{guestId}"],
    points_expired: ["guest:{guestId}", "user:{guestId}"],
    card_created: ["guest:{guestId}", "user:{guestId}", "restaurant:{restaurantId}"],
    guest_registered: ["admin:events", "restaurant:{restaurantId}"],
    guest_card_updated: ["guest:{guestId}", "user:{guestId}"],
    restaurant_guest_joined: ["restaurant:{restaurantId}"],
    restaurant_status_changed: ["restaurant:{restaurantId}", "admin:events"],
    restaurant_transaction: ["restaurant:{restaurantId}:points", "restaurant:{restaurantId}:transactions"],
    system_alert: ["admin:events", "admin"],
    admin_notification: ["admin:events", "admin"],
    delivery_failed: ["user:{recipient}", "admin:events"],
  }).map(([event, rooms]) => [
    event,
    {
      rooms,
      // The payload ids an event must carry are exactly those its rooms name.
      keys: [...new Set(rooms.flatMap((room) => [...room.matchAll(/\{(\w+)\}/g)].map((m) => m[1])))],
    },
  ]),
);

const fill = (room, data) => room.replace(/\{(\w+)\}/g, (_, key) => data[key]);

/** A validation failure, answered 422 with the field it concerns. */
class Invalid extends Error {
  constructor(field, detail) {
    super(detail);
    this.field = field;
  }
}

/** Checks one `{id?, event, data}` envelope; returns its route. */
function validate(item, at) {
  if (!isObject(item)) throw new Invalid(at, "an event is an object {id?, event, data}");
  const { event, data } = item;
  if (!Object.hasOwn(ROUTES, event)) throw new Invalid(`${at}event`, `unknown event \`${String(event).slice(0, 64)}\``);
  if (!isObject(data)) throw new Invalid(`${at}data`, "`data` must be an object");
  const route = ROUTES[event];
  for (const key of route.keys) {
    if (!isId(data[key])) throw new Invalid(`${at}data.${key}`, `\`${key}\` must be a non-empty id`);
  }
  return route;
}

// ── Servers ─────────────────────────────────────────────────────────────────

const app = express();
app.disable("x-powered-by");
const httpServer = createServer(app);

const io = new Server(httpServer, {
  transports: ["websocket", "polling"],
  pingInterval: 25_000,
  pingTimeout: 20_000,
  // No CORS: the benchmark's clients are on loopback, not in a browser.
});

io.use((socket, next) => {
  const user = identify(socket.handshake.auth?.token);
  if (!user) return next(new Error("UNAUTHORIZED"));
  socket.data.user = user;
  next();
});

io.on("connection", (socket) => {
  const { user } = socket.data;
  const rooms = [`user:${user.userId}`];
  if (STAFF.has(user.role)) rooms.push(`restaurant:${user.restaurantId}`);
  if (user.role === "admin") rooms.push("admin");
  socket.join(rooms);

  socket.emit("connected", {
    userId: user.userId,
    role: user.role,
    timestamp: Date.now(),
    serverId: SERVER_ID,
  });

  // Socket.IO passes the ack callback last, and only when the client asked
  // for one; a payload-less emit with an ack puts it first.
  const handle = (act) => (...args) => {
    const ack = typeof args.at(-1) === "function" ? args.pop() : undefined;
    let room;
    try {
      room = act(args[0]);
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      socket.emit("error", { code: err.code, message: err.message, timestamp: Date.now() });
      return ack?.({ ok: false, error: { code: err.code, message: err.message } });
    }
    ack?.({ ok: true, room });
  };

  socket.on(
    "subscribe",
    handle((request) => {
      const room = subscriptionRoom(user, request);
      socket.join(room);
      return room;
    }),
  );

  socket.on(
    "unsubscribe",
    handle((request) => {
      try {
        const room = subscriptionRoom(user, request);
        socket.leave(room);
        return room;
      } catch (err) {
        // A room the caller may not join is one it is not in: nothing to leave (as Herald answers).
        if (err instanceof Refusal && err.code === "UNAUTHORIZED") return null;
        throw err;
      }
    }),
  );
});

// ── REST ────────────────────────────────────────────────────────────────────

const problem = (res, status, detail, field) =>
  res.status(status).type("application/problem+json").json({ status, detail, ...(field !== undefined && { field }) });

/** Lets through a bearer token of one of `roles`; 401 without a valid one, 403 for another role. */
const allow = (...roles) => (req, res, next) => {
  const [scheme, token] = (req.get("authorization") ?? "").split(" ");
  const user = scheme?.toLowerCase() === "bearer" ? identify(token) : null;
  if (!user) {
    res.set("WWW-Authenticate", "Bearer");
    return problem(res, 401, "a valid bearer token is required");
  }
  if (!roles.includes(user.role)) return problem(res, 403, `the ${user.role} role may not do this`);
  req.user = user;
  next();
};

app.get("/healthz", (req, res) => res.json({ status: "ok" }));

app.post("/v1/events", allow("service", "admin"), express.json({ limit: "1mb" }), (req, res) => {
  const batch = Array.isArray(req.body);
  const items = batch ? req.body : [req.body];
  if (items.length === 0) return problem(res, 422, "an array must hold at least one event", "");
  if (items.length > MAX_BATCH) return problem(res, 413, `${items.length} events in one request; the limit is ${MAX_BATCH}`);

  let routes;
  try {
    // The whole batch is checked before any of it is sent.
    routes = items.map((item, i) => validate(item, batch ? `[${i}].` : ""));
  } catch (err) {
    if (err instanceof Invalid) return problem(res, 422, err.message, err.field);
    throw err;
  }

  const receivedAt = new Date().toISOString();
  const records = items.map(({ event, data }, i) => {
    const eventId = randomUUID();
    // One emit to the union of rooms: Socket.IO sends it once per socket,
    // however many of those rooms the socket is in (contract §2).
    io.to(routes[i].rooms.map((room) => fill(room, data))).emit(event, { ...data, eventId });
    return { id: eventId, event, receivedAt };
  });
  res.status(202).json(batch ? records : records[0]);
});

app.get("/v1/admin/stats", allow("admin"), (req, res) => {
  const { rooms, sids } = io.of("/").adapter;
  let connectedUsers = 0;
  for (const room of rooms.keys()) if (room.startsWith("user:")) connectedUsers++;
  res.json({
    connectedUsers,
    totalSockets: io.engine.clientsCount,
    // Every socket is also in a room named by its own id; those are not rooms a client chose.
    rooms: rooms.size - sids.size,
  });
});

// Express's own errors (malformed JSON, too large a body) keep their status.
app.use((err, req, res, next) => {
  const status = err.status ?? err.statusCode ?? 500;
  if (status >= 500) console.error("socketio peer:", err);
  problem(res, status, status >= 500 ? "internal error" : err.message);
});

httpServer.on("error", (err) => fail(err.message));
httpServer.listen(PORT, HOST, () => console.log(`ready ${httpServer.address().port}`));

const shutdown = () => {
  // io.close() disconnects every socket and closes the HTTP server; keep-alive
  // REST clients must not hold the exit.
  io.close(() => process.exit(0));
  httpServer.closeAllConnections();
  setTimeout(() => process.exit(0), 2_000).unref();
};
process.once("SIGTERM", shutdown);
process.once("SIGINT", shutdown);
