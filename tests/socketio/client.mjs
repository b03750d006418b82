// A socket.io-client driven by Herald's integration tests.
//
// Usage: node client.mjs '<options JSON>'
//   {"url": "http://127.0.0.1:PORT", "token": "…", "transports": ["websocket"],
//    "resume": {…}, "extraHeaders": {…}, "upgrade": true, "reconnection": false}
//   (`upgrade`: whether a polling start moves to WebSocket; `reconnection`:
//   whether the client reconnects by itself after a transport close)
//
// Everything the client sees is printed to stdout as one JSON object per
// line: {"type": "connect", "transport": …}, {"type": "connect_error", "message": …},
// {"type": "upgrade", "transport": "websocket"}, {"type": "reconnect", "attempt": n},
// {"type": "event", "event": name, "args": [...]}, {"type": "ack", "id": n,
// "data": …}, {"type": "disconnect", "reason": …}.
//
// Commands arrive on stdin, one JSON object per line:
//   {"cmd": "emit", "event": "subscribe", "data": {…}}            fire and forget
//   {"cmd": "emit", "event": "subscribe", "data": {…}, "id": 3}   with an ack
//   {"cmd": "flood", "event": "subscribe", "data": {…}, "count": 500}
//   {"cmd": "disconnect"}   {"cmd": "connect", "auth": {…}}   {"cmd": "exit"}
//   {"cmd": "drop"}   the transport closes; with `reconnection` the client comes back
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const options = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");

const socket = io(options.url, {
  auth: { token: options.token, ...(options.resume ? { resume: options.resume } : {}) },
  transports: options.transports ?? ["websocket", "polling"],
  upgrade: options.upgrade ?? true,
  reconnection: options.reconnection ?? false,
  reconnectionDelay: 100,
  reconnectionDelayMax: 500,
  extraHeaders: options.extraHeaders,
  timeout: 10000,
});

socket.on("connect", () => print({ type: "connect", transport: socket.io.engine.transport.name }));
socket.on("connect_error", (err) => print({ type: "connect_error", message: err.message }));
socket.on("disconnect", (reason) => print({ type: "disconnect", reason }));
socket.onAny((event, ...args) => print({ type: "event", event, args }));
socket.io.on("open", () =>
  socket.io.engine.on("upgrade", (transport) => print({ type: "upgrade", transport: transport.name })),
);
socket.io.on("reconnect", (attempt) => print({ type: "reconnect", attempt }));

createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  switch (command.cmd) {
    case "emit":
      if (command.id === undefined) {
        socket.emit(command.event, command.data);
      } else {
        socket.timeout(10000).emit(command.event, command.data, (err, data) =>
          print({ type: "ack", id: command.id, data, error: err ? err.message : undefined }),
        );
      }
      break;
    case "flood":
      for (let i = 0; i < command.count; i++) socket.emit(command.event, command.data);
      break;
    case "disconnect":
      socket.disconnect();
      break;
    case "drop":
      // The transport closes under the client, as when a network drops.
      socket.io.engine.close();
      break;
    case "connect":
      if (command.auth) socket.auth = { token: options.token, ...command.auth };
      socket.connect();
      break;
    case "exit":
      process.exit(0);
  }
}).on("close", () => process.exit(0));
