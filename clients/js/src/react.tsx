// React bindings: a provider that owns (or is given) a HeraldClient, and
// hooks over its store. State comes through useSyncExternalStore, so every
// component sees one consistent snapshot.

import {
  createContext,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";

import { HeraldClient, type HeraldOptions } from "./client.js";
import type { Preferences, PreferencesView } from "./generated/api.js";
import type { EventHandler, EventName } from "./realtime.js";
import { HeraldError } from "./rest.js";
import type { NotificationState, Toast } from "./store.js";

const Context = createContext<HeraldClient | null>(null);

export type HeraldProviderProps =
  | { client: HeraldClient; options?: never; children?: ReactNode }
  | { options: HeraldOptions; client?: never; children?: ReactNode };

/**
 * Makes a Herald client available to the hooks below, and starts it
 * (connects, loads the inbox) while mounted. Given `options`, the provider
 * creates the client and closes it on unmount; given a `client`, the client
 * stays yours to close.
 */
export function HeraldProvider(props: HeraldProviderProps): ReactNode {
  const { client: given, options } = props;
  const client = useMemo(() => given ?? new HeraldClient(options as HeraldOptions), [given, options]);
  useEffect(() => {
    void client.start().catch(() => undefined);
    return () => {
      if (!given) client.close();
    };
  }, [client, given]);
  return <Context.Provider value={client}>{props.children}</Context.Provider>;
}

/** The client of the nearest HeraldProvider. */
export function useHerald(): HeraldClient {
  const client = useContext(Context);
  if (!client) throw new Error("useHerald: no <HeraldProvider> above this component");
  return client;
}

function useStoreState(): NotificationState {
  const { store } = useHerald();
  return useSyncExternalStore(store.subscribe, store.getState, store.getState);
}

export interface UseNotifications extends Omit<NotificationState, "toasts"> {
  markRead: (id: string) => Promise<void>;
  markAllRead: () => Promise<void>;
  remove: (id: string) => Promise<void>;
  loadMore: () => Promise<void>;
  reload: () => Promise<void>;
}

/** The inbox: items, `unreadCount`, paging, and the actions on it. */
export function useNotifications(): UseNotifications {
  const { store } = useHerald();
  const { toasts: _toasts, ...state } = useStoreState();
  return {
    ...state,
    markRead: useCallback((id: string) => store.markRead(id), [store]),
    markAllRead: useCallback(() => store.markAllRead(), [store]),
    remove: useCallback((id: string) => store.remove(id), [store]),
    loadMore: useCallback(() => store.loadMore(), [store]),
    reload: useCallback(() => store.reload(), [store]),
  };
}

/** Live events as passing messages; each goes by itself after the store's `toastDuration`. */
export function useToasts(): { toasts: Toast[]; dismiss: (id: string) => void } {
  const { store } = useHerald();
  const { toasts } = useStoreState();
  return { toasts, dismiss: useCallback((id: string) => store.dismissToast(id), [store]) };
}

export interface UsePreferences {
  preferences: PreferencesView | undefined;
  loading: boolean;
  error: HeraldError | undefined;
  /** Replaces the preferences whole (absent entries defer to the routing table). */
  save: (preferences: Preferences) => Promise<PreferencesView>;
  reload: () => Promise<void>;
}

/** The user's own preferences (or `user`'s, for an admin). */
export function usePreferences(user?: string): UsePreferences {
  const { rest } = useHerald();
  const [preferences, setPreferences] = useState<PreferencesView>();
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<HeraldError>();
  const live = useRef(true);
  const reload = useCallback(async () => {
    setLoading(true);
    try {
      const view = await rest.getPreferences(user);
      if (live.current) {
        setPreferences(view);
        setError(undefined);
      }
    } catch (e) {
      if (live.current) setError(e instanceof HeraldError ? e : new HeraldError(0, "network", String(e)));
    } finally {
      if (live.current) setLoading(false);
    }
  }, [rest, user]);
  useEffect(() => {
    live.current = true;
    void reload();
    return () => {
      live.current = false;
    };
  }, [reload]);
  const save = useCallback(
    async (next: Preferences) => {
      try {
        const view = await rest.putPreferences(next, user);
        if (live.current) {
          setPreferences(view);
          setError(undefined);
        }
        return view;
      } catch (e) {
        const err = e instanceof HeraldError ? e : new HeraldError(0, "network", String(e));
        if (live.current) setError(err);
        throw err;
      }
    },
    [rest, user],
  );
  return { preferences, loading, error, save, reload };
}

/** Calls `handler` for every `name` event while mounted. */
export function useHeraldEvent<K extends EventName>(name: K, handler: EventHandler<K>): void {
  const { realtime } = useHerald();
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => realtime.on(name, (data, meta) => latest.current(data, meta)), [realtime, name]);
}
