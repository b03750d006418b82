// The notification centre the bell opens: a region named "Notifications"
// listing the inbox newest first, filtered by category, paging as it is
// scrolled (and by a button, for the keyboard), with mark read, mark all
// read, delete, and each entry's delivery trace (why each channel did or
// did not fire). Live events and read state from other tabs arrive through
// the store.

import type { DeliveryRecord, Notification } from "@herald/client";
import { useHerald, useNotifications } from "@herald/client/react";
import { useEffect, useRef, useState } from "react";

import { useUi } from "./App";
import { formatTime } from "./i18n";
import { TraceTable } from "./Trace";

const CATEGORIES = ["points", "card", "account", "restaurant", "system"] as const;
type Category = (typeof CATEGORIES)[number];

export function Centre({ onClose }: { onClose: () => void }) {
  const { t } = useUi();
  const { items, unreadCount, hasMore, loading, error, markAllRead, loadMore } = useNotifications();
  const [category, setCategory] = useState<Category | "all">("all");
  const shown = category === "all" ? items : items.filter((n) => n.category === category);
  const listRef = useRef<HTMLDivElement>(null);
  const sentinel = useRef<HTMLDivElement>(null);
  const headingRef = useRef<HTMLHeadingElement>(null);

  useEffect(() => headingRef.current?.focus(), []);

  // Paging as you scroll: the next page loads when the end of the list
  // comes into view (also when a filter leaves the list short).
  useEffect(() => {
    const end = sentinel.current;
    if (!end || !hasMore) return;
    const seen = new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting)) void loadMore();
      },
      { root: listRef.current, rootMargin: "120px" },
    );
    seen.observe(end);
    return () => seen.disconnect();
  }, [hasMore, loadMore, shown.length]);

  return (
    <section id="centre" className="centre" role="region" aria-labelledby="centre-title">
      <div className="centre-head">
        <h2 id="centre-title" tabIndex={-1} ref={headingRef}>
          {t.notifications}
        </h2>
        <span className="muted">{t.unread(unreadCount)}</span>
        <button type="button" onClick={() => void markAllRead()} disabled={unreadCount === 0}>
          {t.markAllRead}
        </button>
        <button type="button" className="quiet close" aria-label={t.close} onClick={onClose}>
          ×
        </button>
      </div>
      <div className="filters" role="group" aria-label={t.categoryFilter}>
        {(["all", ...CATEGORIES] as const).map((c) => (
          <button key={c} type="button" aria-pressed={category === c} onClick={() => setCategory(c)}>
            {c === "all" ? t.allCategories : t.categories[c]}
          </button>
        ))}
      </div>
      {error && (
        <p className="error" role="alert">
          {error.message}
        </p>
      )}
      <div className="centre-list" ref={listRef}>
        {shown.length === 0 && !loading && !hasMore && <p className="muted">{t.empty}</p>}
        <ul>
          {shown.map((n) => (
            <Item key={n.id} n={n} />
          ))}
        </ul>
        <div ref={sentinel} />
        {hasMore && (
          <button type="button" className="quiet more" onClick={() => void loadMore()}>
            {loading ? t.loadingMore : t.loadMore}
          </button>
        )}
      </div>
    </section>
  );
}

function Item({ n }: { n: Notification }) {
  const { t, lang } = useUi();
  const { markRead, remove } = useNotifications();
  const { rest } = useHerald();
  const [trace, setTrace] = useState<DeliveryRecord[] | "loading" | undefined>();
  const [failure, setFailure] = useState<string>();
  const toggleTrace = async () => {
    if (trace) return setTrace(undefined);
    setTrace("loading");
    try {
      setTrace(await rest.deliveries(n.id));
      setFailure(undefined);
    } catch (e) {
      setTrace(undefined);
      setFailure(e instanceof Error ? e.message : String(e));
    }
  };
  return (
    <li className={n.read ? "item" : "item unread"} data-id={n.id} data-event={n.event} data-category={n.category}>
      <div className="item-text">
        <h3>{n.title}</h3>
        <p>{n.body}</p>
        <p className="muted small">
          {t.categories[n.category]} · <time dateTime={new Date(n.createdAt).toISOString()}>{formatTime(lang, n.createdAt)}</time>
        </p>
      </div>
      <div className="item-actions">
        {!n.read && (
          <button type="button" onClick={() => void markRead(n.id)}>
            {t.markRead}
          </button>
        )}
        <button type="button" className="quiet" aria-expanded={trace !== undefined} onClick={() => void toggleTrace()}>
          {trace ? t.hideDetails : t.details}
        </button>
        <button type="button" className="quiet danger" onClick={() => void remove(n.id)}>
          {t.remove}
        </button>
      </div>
      {failure && (
        <p className="error" role="alert">
          {failure}
        </p>
      )}
      {trace === "loading" && <p className="muted">{t.loading}</p>}
      {Array.isArray(trace) && (
        <div className="deliveries">
          {trace.length === 0 && <p className="muted">{t.admin.noDeliveries}</p>}
          {trace.map((d) => (
            <TraceTable key={d.id} delivery={d} />
          ))}
        </div>
      )}
    </li>
  );
}
