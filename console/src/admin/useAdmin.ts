// A GET of an admin endpoint, with loading and error state, reloadable.

import { HeraldError } from "@herald/client";
import { useHerald } from "@herald/client/react";
import { useCallback, useEffect, useState } from "react";

export interface Loaded<T> {
  data: T | undefined;
  error: HeraldError | undefined;
  loading: boolean;
  reload: () => Promise<void>;
}

export function useAdminGet<T>(path: string | undefined): Loaded<T> {
  const { rest } = useHerald();
  const [data, setData] = useState<T>();
  const [error, setError] = useState<HeraldError>();
  const [loading, setLoading] = useState(false);
  const reload = useCallback(async () => {
    if (!path) return;
    setLoading(true);
    try {
      setData(await rest.call<T>("GET", path));
      setError(undefined);
    } catch (e) {
      setError(e instanceof HeraldError ? e : new HeraldError(0, "network", String(e)));
    } finally {
      setLoading(false);
    }
  }, [rest, path]);
  useEffect(() => {
    void reload();
  }, [reload]);
  return { data, error, loading, reload };
}
