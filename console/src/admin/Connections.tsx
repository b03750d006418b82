// Connected users, their sockets and rooms on this node
// (`GET /v1/admin/connections`), with the node's totals and the delivery
// backlog (`GET /v1/admin/stats`). Refreshes by itself every few seconds.

import type { Connections as ConnectionsPage, Stats } from "@herald/client";
import { useEffect } from "react";

import { useUi } from "../App";
import { formatTime } from "../i18n";
import { useAdminGet } from "./useAdmin";

const EVERY_MS = 5000;

export function Connections() {
  const { t, lang } = useUi();
  const a = t.admin;
  const stats = useAdminGet<Stats>("/v1/admin/stats");
  const conns = useAdminGet<ConnectionsPage>("/v1/admin/connections?limit=200");
  useEffect(() => {
    const timer = setInterval(() => {
      void stats.reload();
      void conns.reload();
    }, EVERY_MS);
    return () => clearInterval(timer);
  }, [stats.reload, conns.reload]);
  const error = stats.error ?? conns.error;
  const backlog = Object.entries(stats.data?.queue.deliveries ?? {});
  return (
    <section aria-labelledby="conn-title">
      <div className="page-head">
        <h2 id="conn-title">{t.pages.connections}</h2>
        <button
          type="button"
          onClick={() => {
            void stats.reload();
            void conns.reload();
          }}
        >
          {a.refresh}
        </button>
      </div>
      {error && (
        <p className="error" role="alert">
          {error.status === 403 ? t.forbidden : error.message}
        </p>
      )}
      {stats.data && (
        <dl className="stats">
          <div>
            <dt>{a.server}</dt>
            <dd>{stats.data.serverId}</dd>
          </div>
          <div>
            <dt>{a.users(stats.data.connectedUsers)}</dt>
            <dd>
              {a.sockets(stats.data.totalSockets)} (socket.io {stats.data.transports.socketio}, ws {stats.data.transports.ws})
            </dd>
          </div>
          <div>
            <dt>{a.rooms(stats.data.rooms)}</dt>
            <dd>
              {a.queue}: {stats.data.queue.jobs}
              {backlog.length > 0 && ` · ${backlog.map(([s, n]) => `${s} ${n}`).join(", ")}`}
            </dd>
          </div>
        </dl>
      )}
      {conns.data && conns.data.users.length === 0 && <p className="muted">{a.noConnections}</p>}
      {conns.data && conns.data.users.length > 0 && (
        <div className="table-wrap">
          <table className="data">
            <caption className="sr-only">{t.pages.connections}</caption>
            <thead>
              <tr>
                <th scope="col">{a.user}</th>
                <th scope="col">{a.role}</th>
                <th scope="col">{a.transport}</th>
                <th scope="col">{a.connectedAt}</th>
                <th scope="col">{a.roomList}</th>
              </tr>
            </thead>
            <tbody>
              {conns.data.users.flatMap((u) =>
                u.sockets.map((s, i) => (
                  <tr key={`${u.userId}:${s.id}`} data-user={u.userId}>
                    {i === 0 && (
                      <th scope="row" rowSpan={u.sockets.length}>
                        <code>{u.userId}</code>
                      </th>
                    )}
                    {i === 0 && <td rowSpan={u.sockets.length}>{u.role}</td>}
                    <td>{s.transport}</td>
                    <td>{formatTime(lang, s.connectedAt)}</td>
                    <td>
                      {s.rooms.map((r) => (
                        <code key={r} className="chip">
                          {r}
                        </code>
                      ))}
                    </td>
                  </tr>
                )),
              )}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
