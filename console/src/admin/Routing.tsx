// The routing table as Herald runs it (`GET /v1/admin/routing`): per event,
// its rooms, who gets an inbox entry, and the default email/SMS/push
// deliveries with their conditions.

import type { RoutingView } from "@herald/client";

import { useUi } from "../App";
import { formatTime } from "../i18n";
import { useAdminGet } from "./useAdmin";

interface Rule {
  channels: string[];
  to: string;
  mandatory?: boolean;
  when?: Record<string, string[]>;
}
interface Route {
  rooms?: string[];
  inbox?: string[];
  deliveries?: Rule[];
  critical_when?: Record<string, string[]>;
}

const conditions = (when: Record<string, string[]> | undefined) =>
  Object.entries(when ?? {})
    .map(([field, values]) => `${field} ∈ {${values.join(", ")}}`)
    .join(" ∧ ");

export function Routing() {
  const { t, lang } = useUi();
  const a = t.admin;
  const view = useAdminGet<RoutingView>("/v1/admin/routing");
  const routes = Object.entries((view.data?.table.events ?? {}) as Record<string, Route>);
  return (
    <section aria-labelledby="routing-title">
      <div className="page-head">
        <h2 id="routing-title">{t.pages.routing}</h2>
        <button type="button" onClick={() => void view.reload()}>
          {a.refresh}
        </button>
      </div>
      <p className="muted">{a.routingLead}</p>
      {view.error && (
        <p className="error" role="alert">
          {view.error.status === 403 ? t.forbidden : view.error.message}
        </p>
      )}
      {view.data && (
        <p className="small">
          {a.version} {view.data.version} · {a.source} {view.data.source === "file" ? view.data.file : "API"}
          {view.data.updatedAt !== null && ` · ${formatTime(lang, view.data.updatedAt)}`}
          {view.data.updatedBy && ` · ${view.data.updatedBy.role}:${view.data.updatedBy.subject}`}
        </p>
      )}
      {routes.length > 0 && (
        <div className="table-wrap">
          <table className="data routing">
            <caption className="sr-only">{t.pages.routing}</caption>
            <thead>
              <tr>
                <th scope="col">{a.event}</th>
                <th scope="col">{a.rooms_}</th>
                <th scope="col">{a.inbox}</th>
                <th scope="col">{a.deliveriesCol}</th>
              </tr>
            </thead>
            <tbody>
              {routes.map(([event, r]) => (
                <tr key={event} data-event={event}>
                  <th scope="row">
                    <code>{event}</code>
                    {r.critical_when && (
                      <div className="muted small">
                        {a.criticalWhen} {conditions(r.critical_when)}
                      </div>
                    )}
                  </th>
                  <td>{(r.rooms ?? []).map((room) => <code key={room} className="chip">{room}</code>)}</td>
                  <td>{(r.inbox ?? []).join(", ") || a.none}</td>
                  <td>
                    {(r.deliveries ?? []).length === 0
                      ? a.none
                      : (r.deliveries ?? []).map((d, i) => (
                          <div key={i}>
                            {d.channels.join(" + ")} → <code>{d.to}</code>
                            {d.mandatory && <em> ({a.mandatory})</em>}
                            {d.when && (
                              <span className="muted small">
                                {" "}
                                {a.when} {conditions(d.when)}
                              </span>
                            )}
                          </div>
                        ))}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
