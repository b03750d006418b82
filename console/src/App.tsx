// The signed-in console: header (bell, connection, language, sign-out),
// the notification centre the bell opens, toasts, and the page chosen in
// the address's hash. Admin pages are offered to an admin token only
// (Herald refuses them to anyone else anyway).

import { HeraldClient, type EventName } from "@herald/client";
import { HeraldProvider, useHerald, useNotifications } from "@herald/client/react";
import { createContext, useCallback, useContext, useEffect, useMemo, useRef, useState, type RefObject } from "react";

import { Centre } from "./Centre";
import { Connections } from "./admin/Connections";
import { Deliveries } from "./admin/Deliveries";
import { Routing } from "./admin/Routing";
import { browserLang, LANGS, STRINGS, type Lang, type Strings } from "./i18n";
import { Live, type LiveEvent } from "./Live";
import { PreferencesPage } from "./Preferences";
import type { Session } from "./session";
import { Toasts } from "./Toasts";

const LANG_KEY = "herald.console.lang";

interface Ui {
  t: Strings;
  lang: Lang;
  session: Session;
}
const UiContext = createContext<Ui | null>(null);

export function useUi(): Ui {
  const ui = useContext(UiContext);
  if (!ui) throw new Error("useUi outside <App>");
  return ui;
}

type Page = "live" | "preferences" | "connections" | "deliveries" | "failed" | "routing";
const USER_PAGES: Page[] = ["live", "preferences"];
const ADMIN_PAGES: Page[] = ["connections", "deliveries", "failed", "routing"];

function pageFromHash(admin: boolean): Page {
  const h = window.location.hash.replace(/^#/, "") as Page;
  const allowed = admin ? [...USER_PAGES, ...ADMIN_PAGES] : USER_PAGES;
  return allowed.includes(h) ? h : "live";
}

export function App({ session, onSignOut }: { session: Session; onSignOut: () => void }) {
  const client = useMemo(
    () =>
      new HeraldClient({
        url: window.location.origin,
        // The console has no way to refresh a token: the one given is the one used.
        token: () => session.token,
        store: { toastDuration: 6000 },
      }),
    [session.token],
  );
  useEffect(() => () => client.close(), [client]);
  return (
    <HeraldProvider client={client}>
      <Shell session={session} onSignOut={onSignOut} />
    </HeraldProvider>
  );
}

function Shell({ session, onSignOut }: { session: Session; onSignOut: () => void }) {
  const client = useHerald();
  const admin = session.role === "admin";
  const [chosen, setChosen] = useState<Lang | null>(() => localStorage.getItem(LANG_KEY) as Lang | null);
  const [prefLang, setPrefLang] = useState<Lang | null>(null);
  const lang: Lang = chosen ?? prefLang ?? browserLang();
  const t = STRINGS[lang];
  const [page, setPage] = useState<Page>(() => pageFromHash(admin));
  const [open, setOpen] = useState(false);
  const bellRef = useRef<HTMLButtonElement>(null);
  const closeCentre = useCallback(() => {
    setOpen(false);
    bellRef.current?.focus();
  }, []);
  const toggleCentre = useCallback(() => setOpen((o) => !o), []);
  const live = useLiveFeed();

  // The user's language comes from their preferences, unless chosen here.
  useEffect(() => {
    let stop = false;
    client.rest
      .getPreferences()
      .then((p) => !stop && p.locale && setPrefLang(p.locale))
      .catch(() => undefined);
    return () => {
      stop = true;
    };
  }, [client]);

  useEffect(() => {
    document.documentElement.lang = lang;
    document.title = t.appName;
  }, [lang, t]);

  useEffect(() => {
    const onHash = () => setPage(pageFromHash(admin));
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, [admin]);

  const ui = useMemo(() => ({ t, lang, session }), [t, lang, session]);
  const pages = admin ? [...USER_PAGES, ...ADMIN_PAGES] : USER_PAGES;

  return (
    <UiContext.Provider value={ui}>
      <header className="top">
        <h1 className="brand">{t.appName}</h1>
        <ConnectionBadge />
        <span className="who" title={session.user}>
          {t.signedInAs(session.user, session.role)}
        </span>
        <label className="lang">
          <span className="sr-only">{t.language}</span>
          <select
            value={lang}
            onChange={(e) => {
              const l = e.target.value as Lang;
              localStorage.setItem(LANG_KEY, l);
              setChosen(l);
            }}
          >
            {LANGS.map((l) => (
              <option key={l} value={l}>
                {STRINGS[l].langName}
              </option>
            ))}
          </select>
        </label>
        <Bell open={open} onToggle={toggleCentre} onClose={closeCentre} buttonRef={bellRef} />
        <button type="button" className="quiet" onClick={onSignOut}>
          {t.signOut}
        </button>
      </header>
      <nav aria-label={t.nav} className="tabs">
        {pages.map((p) => (
          <a key={p} href={`#${p}`} aria-current={p === page ? "page" : undefined}>
            {t.pages[p]}
          </a>
        ))}
      </nav>
      {open && <Centre onClose={closeCentre} />}
      <main className="page">
        {page === "live" && <Live events={live} />}
        {page === "preferences" && <PreferencesPage />}
        {admin && page === "connections" && <Connections />}
        {admin && page === "deliveries" && <Deliveries mode="explorer" />}
        {admin && page === "failed" && <Deliveries mode="failed" />}
        {admin && page === "routing" && <Routing />}
      </main>
      <Toasts />
    </UiContext.Provider>
  );
}

/** Every live event of this tab, from the moment it connected, once each. */
function useLiveFeed(): LiveEvent[] {
  const { realtime } = useHerald();
  const [events, setEvents] = useState<LiveEvent[]>([]);
  useEffect(
    () =>
      realtime.onAny((name: EventName, data: unknown, meta: { offset: number | undefined }) => {
        if (name === "connected" || name === "resumed" || name === "disconnected" || name === "error") return;
        const d = (data ?? {}) as Record<string, unknown>;
        setEvents((list) => [
          { key: `${meta.offset ?? ""}:${String(d.eventId ?? list.length)}`, name, data: d, offset: meta.offset, at: Date.now() },
          ...list.slice(0, 199),
        ]);
      }),
    [realtime],
  );
  return events;
}

function ConnectionBadge() {
  const { t } = useUi();
  const { connection } = useNotifications();
  return (
    <span className={`conn conn-${connection}`} role="status" data-state={connection}>
      {t.connection[connection]}
    </span>
  );
}

interface BellProps {
  open: boolean;
  onToggle: () => void;
  /** Closes the centre and gives the bell its focus back. */
  onClose: () => void;
  buttonRef: RefObject<HTMLButtonElement | null>;
}

function Bell({ open, onToggle, onClose, buttonRef }: BellProps) {
  const { t } = useUi();
  const { unreadCount } = useNotifications();
  // Escape anywhere closes the centre.
  useEffect(() => {
    if (!open) return;
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") onClose();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [open, onClose]);
  return (
    <button
      ref={buttonRef}
      type="button"
      className="bell"
      aria-label={t.bell(unreadCount)}
      aria-expanded={open}
      aria-controls="centre"
      onClick={onToggle}
      data-count={unreadCount}
    >
      <svg aria-hidden="true" viewBox="0 0 24 24" width="22" height="22">
        <path
          fill="currentColor"
          d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1Z"
        />
      </svg>
      {unreadCount > 0 && (
        <span className="badge" aria-hidden="true">
          {unreadCount > 99 ? "99+" : unreadCount}
        </span>
      )}
    </button>
  );
}
