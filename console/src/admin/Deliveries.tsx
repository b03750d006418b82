// The delivery explorer and the failed deliveries, one page in two modes.
//
// - explorer: any delivery, found by recipient, event id, channel and
//   status (`GET /v1/admin/deliveries`); each row opens its trace, read
//   from the notification's deliveries (`GET /v1/notifications/{id}/deliveries`):
//   why the channel did or did not fire, step by step.
// - failed: the failed and expired ones, with a re-drive per delivery
//   (`POST /v1/admin/deliveries/{id}/retry`) and for the whole filter
//   (`POST /v1/admin/deliveries/retry`).

import { HeraldError, type AdminDelivery, type DeliveryRecord, type RedriveReport } from "@herald/client";
import { useHerald } from "@herald/client/react";
import { useCallback, useEffect, useState } from "react";

import { useUi } from "../App";
import { formatTime } from "../i18n";
import { TraceTable } from "../Trace";

const STATES = [
  "pending", "claimed", "sending", "sent", "delivered", "bounced", "retrying", "deferred",
  "digested", "skipped", "throttled", "cancelled", "expired", "suppressed", "failed",
] as const;
const CHANNELS = ["email", "sms", "push"] as const;

interface Filter {
  recipient: string;
  eventId: string;
  channel: string;
  status: string;
}

interface Page {
  items: AdminDelivery[];
  nextCursor: string | null;
}

function query(filter: Filter, mode: "explorer" | "failed", cursor?: string): string {
  const q = new URLSearchParams();
  if (filter.recipient.trim()) q.set("recipient", filter.recipient.trim());
  if (filter.eventId.trim()) q.set("eventId", filter.eventId.trim());
  if (filter.channel) q.set("channel", filter.channel);
  const status = filter.status || (mode === "failed" ? "failed,expired" : STATES.join(","));
  q.set("status", status);
  q.set("limit", "50");
  if (cursor) q.set("cursor", cursor);
  return q.toString();
}

export function Deliveries({ mode }: { mode: "explorer" | "failed" }) {
  const { t, lang } = useUi();
  const a = t.admin;
  const { rest } = useHerald();
  const empty: Filter = { recipient: "", eventId: "", channel: "", status: "" };
  const [draft, setDraft] = useState<Filter>(empty);
  const [filter, setFilter] = useState<Filter>(empty);
  const [page, setPage] = useState<Page>();
  const [error, setError] = useState<HeraldError>();
  const [note, setNote] = useState<string>();
  const [open, setOpen] = useState<string>();

  const fail = (e: unknown) => setError(e instanceof HeraldError ? e : new HeraldError(0, "network", String(e)));
  const load = useCallback(
    async (f: Filter, cursor?: string) => {
      try {
        const next = await rest.call<Page>("GET", `/v1/admin/deliveries?${query(f, mode, cursor)}`);
        setPage((prev) => (cursor && prev ? { items: [...prev.items, ...next.items], nextCursor: next.nextCursor } : next));
        setError(undefined);
      } catch (e) {
        fail(e);
      }
    },
    [rest, mode],
  );

  useEffect(() => {
    setPage(undefined);
    setOpen(undefined);
    void load(filter);
  }, [filter, load]);

  const retryOne = async (d: AdminDelivery) => {
    try {
      await rest.call("POST", `/v1/admin/deliveries/${encodeURIComponent(d.id)}/retry`);
      setNote(a.retried(1));
      await load(filter);
    } catch (e) {
      fail(e);
    }
  };
  const retryAll = async () => {
    const body: Record<string, unknown> = { status: filter.status || "failed,expired" };
    if (filter.recipient.trim()) body.recipient = filter.recipient.trim();
    if (filter.eventId.trim()) body.eventId = filter.eventId.trim();
    if (filter.channel) body.channel = filter.channel;
    try {
      const report = await rest.call<RedriveReport>("POST", "/v1/admin/deliveries/retry", { filter: body });
      setNote(a.retried(report.requeued.length));
      await load(filter);
    } catch (e) {
      fail(e);
    }
  };

  const title = mode === "failed" ? t.pages.failed : t.pages.deliveries;
  return (
    <section aria-labelledby="deliveries-title">
      <h2 id="deliveries-title">{title}</h2>
      <form
        className="filter"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setNote(undefined);
          setFilter({ ...draft });
        }}
      >
        <label>
          {a.recipient}
          <input name="recipient" value={draft.recipient} onChange={(e) => setDraft({ ...draft, recipient: e.target.value })} />
        </label>
        <label>
          {a.eventId}
          <input name="eventId" value={draft.eventId} onChange={(e) => setDraft({ ...draft, eventId: e.target.value })} />
        </label>
        <label>
          {a.channel}
          <select name="channel" value={draft.channel} onChange={(e) => setDraft({ ...draft, channel: e.target.value })}>
            <option value="">{a.any}</option>
            {CHANNELS.map((c) => (
              <option key={c} value={c}>
                {c}
              </option>
            ))}
          </select>
        </label>
        <label>
          {a.status}
          <select name="status" value={draft.status} onChange={(e) => setDraft({ ...draft, status: e.target.value })}>
            <option value="">{mode === "failed" ? a.failedOrExpired : a.anyStatus}</option>
            {(mode === "failed" ? (["failed", "expired"] as const) : STATES).map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </label>
        <button type="submit">{a.find}</button>
        {mode === "failed" && page && page.items.length > 0 && (
          <button type="button" className="quiet" onClick={() => void retryAll()}>
            {a.retryAll}
          </button>
        )}
      </form>
      {error && (
        <p className="error" role="alert">
          {error.status === 403 ? t.forbidden : `${error.field ? `${error.field}: ` : ""}${error.message}`}
        </p>
      )}
      <p role="status" className="muted">
        {note ?? ""}
      </p>
      {page && page.items.length === 0 && <p className="muted">{a.noDeliveries}</p>}
      {page && page.items.length > 0 && (
        <div className="table-wrap">
          <table className="data">
            <caption className="sr-only">{title}</caption>
            <thead>
              <tr>
                <th scope="col">{a.event}</th>
                <th scope="col">{a.recipient}</th>
                <th scope="col">{a.channel}</th>
                <th scope="col">{a.status}</th>
                <th scope="col">{a.reason}</th>
                <th scope="col">{a.attempts}</th>
                <th scope="col">{a.updated}</th>
                <th scope="col">
                  <span className="sr-only">{a.trace}</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {page.items.map((d) => (
                <DeliveryRow
                  key={d.id}
                  d={d}
                  open={open === d.id}
                  onToggle={() => setOpen(open === d.id ? undefined : d.id)}
                  onRetry={mode === "failed" || d.status === "failed" || d.status === "expired" ? () => void retryOne(d) : undefined}
                  when={formatTime(lang, d.updatedAt)}
                />
              ))}
            </tbody>
          </table>
        </div>
      )}
      {page?.nextCursor && (
        <button type="button" className="quiet more" onClick={() => void load(filter, page.nextCursor ?? undefined)}>
          {t.loadMore}
        </button>
      )}
    </section>
  );
}

function DeliveryRow(props: { d: AdminDelivery; open: boolean; onToggle: () => void; onRetry: (() => void) | undefined; when: string }) {
  const { t } = useUi();
  const a = t.admin;
  const { d } = props;
  return (
    <>
      <tr data-delivery={d.id} data-status={d.status} data-channel={d.channel}>
        <td>
          <code>{d.event}</code>
          <div className="muted small">{d.eventId}</div>
        </td>
        <td>
          <code>{d.recipient}</code>
        </td>
        <td>{d.channel}</td>
        <td>
          <span className={`status status-${d.status}`}>{d.status}</span>
        </td>
        <td>
          {d.reason}
          {d.lastError && <div className="muted small">{d.lastError}</div>}
        </td>
        <td>{d.attempts}</td>
        <td>{props.when}</td>
        <td className="actions">
          <button type="button" className="quiet" aria-expanded={props.open} onClick={props.onToggle}>
            {a.trace}
          </button>
          {props.onRetry && (
            <button type="button" onClick={props.onRetry}>
              {a.retry}
            </button>
          )}
        </td>
      </tr>
      {props.open && (
        <tr className="trace-row">
          <td colSpan={8}>
            <Trace d={d} />
          </td>
        </tr>
      )}
    </>
  );
}

function Trace({ d }: { d: AdminDelivery }) {
  const { t } = useUi();
  const { rest } = useHerald();
  const [record, setRecord] = useState<DeliveryRecord>();
  const [error, setError] = useState<string>();
  useEffect(() => {
    let live = true;
    rest
      .call<{ items: DeliveryRecord[] }>("GET", `/v1/notifications/${encodeURIComponent(d.notificationId)}/deliveries`)
      .then((r) => {
        if (!live) return;
        const found = r.items.find((x) => x.id === d.id);
        if (found) setRecord(found);
        else setError(t.admin.noDeliveries);
      })
      .catch((e: unknown) => live && setError(e instanceof Error ? e.message : String(e)));
    return () => {
      live = false;
    };
  }, [rest, d.id, d.notificationId, d.updatedAt, t]);
  if (error) return <p className="error">{error}</p>;
  if (!record) return <p className="muted">{t.loading}</p>;
  return <TraceTable delivery={record} />;
}
