// The live feed: every event this tab received, newest first, with its
// stream offset. After a reconnect the socket resumes from the last offset,
// so what was missed appears here once and in order.

import { useNotifications } from "@herald/client/react";

import { useUi } from "./App";
import { formatTime } from "./i18n";

export interface LiveEvent {
  key: string;
  name: string;
  data: Record<string, unknown>;
  offset: number | undefined;
  at: number;
}

export function Live({ events }: { events: LiveEvent[] }) {
  const { t, lang } = useUi();
  const { connection } = useNotifications();
  return (
    <section aria-labelledby="live-title">
      <h2 id="live-title">{t.pages.live}</h2>
      <p className="muted">
        {t.liveLead} <span data-state={connection}>{t.connection[connection]}</span> · {t.events(events.length)}
      </p>
      {events.length === 0 ? (
        <p className="muted">{t.liveEmpty}</p>
      ) : (
        <ol className="feed" reversed>
          {events.map((e) => (
            <li key={e.key} className="feed-item" data-event={e.name} data-event-id={String(e.data.eventId ?? "")}>
              <code>{e.name}</code> <span className="muted small">{formatTime(lang, e.at)}</span>
              <span className="muted small"> #{e.offset ?? "—"}</span>
              <pre>{summary(e.data)}</pre>
            </li>
          ))}
        </ol>
      )}
    </section>
  );
}

function summary(data: Record<string, unknown>): string {
  const { eventId: _id, timestamp: _ts, ...rest } = data;
  const text = JSON.stringify(rest);
  return text.length > 240 ? `${text.slice(0, 239)}…` : text;
}
