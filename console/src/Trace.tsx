// One delivery's trace: its status and reason, then every step Herald took
// (planned, claimed, attempted, suppressed, retried, re-driven …) with its
// outcome and who or what decided it.

import type { DeliveryRecord } from "@herald/client";

import { useUi } from "./App";
import { formatTime } from "./i18n";

export function TraceTable({ delivery: d }: { delivery: DeliveryRecord }) {
  const { t, lang } = useUi();
  return (
    <div className="trace" data-delivery={d.id} data-channel={d.channel} data-status={d.status}>
      <p className="trace-summary">
        <strong>{d.channel}</strong> <span className={`status status-${d.status}`}>{d.status}</span>{" "}
        <span className="reason">{d.reason}</span>
        {d.lastError && (
          <span className="muted">
            {" "}
            · {t.admin.lastError}: {d.lastError}
          </span>
        )}
      </p>
      {d.trace.length === 0 ? (
        <p className="muted trace-none">{t.admin.decidedWhenRouted}</p>
      ) : (
        <table>
          <caption className="sr-only">{t.admin.traceOf(d.channel, d.recipient)}</caption>
          <thead>
            <tr>
              <th scope="col">{t.admin.at}</th>
              <th scope="col">{t.admin.step}</th>
              <th scope="col">{t.admin.outcome}</th>
              <th scope="col">{t.admin.detail}</th>
              <th scope="col">{t.admin.actor}</th>
            </tr>
          </thead>
          <tbody>
            {d.trace.map((s, i) => (
              <tr key={i} className="trace-step" data-step={s.step}>
                <td>{formatTime(lang, s.at)}</td>
                <td>{s.step}</td>
                <td>{s.outcome ?? t.admin.none}</td>
                <td>{[s.provider, s.detail].filter(Boolean).join(" · ") || t.admin.none}</td>
                <td>{s.actor ?? t.admin.none}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
