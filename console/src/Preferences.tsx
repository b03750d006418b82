// The preferences page: the global switch, each channel, each category ×
// channel (default / on / off), quiet hours with their time zone, and the
// language of messages. Saved whole over REST (`PUT
// /v1/users/{user}/preferences`); entries the page does not edit (per-event
// overrides, digests) are kept as they were.

import { HeraldError, type Preferences, type PreferencesView } from "@herald/client";
import { usePreferences } from "@herald/client/react";
import { useEffect, useMemo, useState } from "react";

import { useUi } from "./App";

const CHANNELS = ["in_app", "email", "sms", "push"] as const;
type Channel = (typeof CHANNELS)[number];
const CATEGORIES = ["points", "card", "account", "restaurant", "system"] as const;
type Tri = "inherit" | "on" | "off";

interface Form {
  enabled: boolean;
  channels: Record<Channel, boolean>;
  categories: Record<string, Record<Channel, Tri>>;
  quiet: boolean;
  start: string;
  end: string;
  timezone: string;
  locale: "" | "ru" | "en";
}

const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

function formOf(view: PreferencesView): Form {
  const tri = (v: boolean | undefined): Tri => (v === undefined ? "inherit" : v ? "on" : "off");
  return {
    enabled: view.enabled,
    channels: Object.fromEntries(CHANNELS.map((c) => [c, view.channels[c] ?? true])) as Record<Channel, boolean>,
    categories: Object.fromEntries(
      CATEGORIES.map((cat) => [cat, Object.fromEntries(CHANNELS.map((c) => [c, tri(view.overrides[cat]?.[c])]))]),
    ) as Record<string, Record<Channel, Tri>>,
    quiet: view.quietHours !== null,
    start: view.quietHours?.start ?? "22:00",
    end: view.quietHours?.end ?? "08:00",
    timezone: view.quietHours?.timezone ?? browserZone,
    locale: view.locale ?? "",
  };
}

function bodyOf(form: Form, view: PreferencesView): Preferences {
  const channels: Record<string, boolean> = {};
  for (const c of CHANNELS) {
    // Only what is switched off, or was set before: an absent channel
    // follows the routing table.
    if (!form.channels[c] || c in view.channels) channels[c] = form.channels[c];
  }
  const overrides: Record<string, Record<string, boolean>> = {};
  for (const [scope, per] of Object.entries(view.overrides)) {
    if (!(CATEGORIES as readonly string[]).includes(scope)) overrides[scope] = per;
  }
  for (const cat of CATEGORIES) {
    const per: Record<string, boolean> = {};
    for (const c of CHANNELS) {
      const v = form.categories[cat]?.[c];
      if (v === "on" || v === "off") per[c] = v === "on";
    }
    if (Object.keys(per).length > 0) overrides[cat] = per;
  }
  return {
    enabled: form.enabled,
    channels,
    overrides,
    quietHours: form.quiet ? { start: form.start, end: form.end, timezone: form.timezone } : null,
    locale: form.locale === "" ? null : form.locale,
    ...(view.digests ? { digests: view.digests } : {}),
  } as Preferences;
}

export function PreferencesPage() {
  const { t } = useUi();
  const { preferences, loading, error, save } = usePreferences();
  const [form, setForm] = useState<Form>();
  const [state, setState] = useState<"idle" | "saving" | "saved">("idle");
  const [problem, setProblem] = useState<HeraldError>();
  const zones = useMemo(() => {
    const all = (Intl as { supportedValuesOf?: (k: string) => string[] }).supportedValuesOf?.("timeZone") ?? [];
    return all.includes("UTC") ? all : ["UTC", ...all];
  }, []);

  useEffect(() => {
    if (preferences) setForm(formOf(preferences));
  }, [preferences]);

  if (!form || !preferences) {
    return <p className={error ? "error" : "muted"}>{error ? `${t.error}: ${error.message}` : t.loading}</p>;
  }
  const edit = (change: Partial<Form>) => {
    setForm({ ...form, ...change });
    setState("idle");
  };
  const p = t.prefs;
  const invalid = (field: string) => problem?.field?.startsWith(field) || undefined;

  return (
    <section aria-labelledby="prefs-title">
      <h2 id="prefs-title">{t.pages.preferences}</h2>
      <p className="muted">{p.lead}</p>
      <form
        className="prefs"
        onSubmit={async (e) => {
          e.preventDefault();
          setState("saving");
          try {
            await save(bodyOf(form, preferences));
            setProblem(undefined);
            setState("saved");
          } catch (err) {
            setProblem(err instanceof HeraldError ? err : new HeraldError(0, "network", String(err)));
            setState("idle");
          }
        }}
      >
        <fieldset>
          <legend>{p.global}</legend>
          <label className="check">
            <input type="checkbox" checked={form.enabled} onChange={(e) => edit({ enabled: e.target.checked })} />
            {p.global}
          </label>
          <p className="muted small">{p.globalHint}</p>
        </fieldset>

        <fieldset>
          <legend>{p.channels}</legend>
          {CHANNELS.map((c) => (
            <label key={c} className="check">
              <input
                type="checkbox"
                name={`channel-${c}`}
                checked={form.channels[c]}
                onChange={(e) => edit({ channels: { ...form.channels, [c]: e.target.checked } })}
              />
              {p.channel[c]}
            </label>
          ))}
        </fieldset>

        <fieldset>
          <legend>{p.perCategory}</legend>
          <div className="table-wrap">
            <table className="grid">
              <thead>
                <tr>
                  <th scope="col">{t.categoryFilter}</th>
                  {CHANNELS.map((c) => (
                    <th key={c} scope="col">
                      {p.channel[c]}
                    </th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {CATEGORIES.map((cat) => (
                  <tr key={cat}>
                    <th scope="row">{t.categories[cat]}</th>
                    {CHANNELS.map((c) => (
                      <td key={c}>
                        <select
                          aria-label={`${t.categories[cat]}: ${p.channel[c]}`}
                          value={form.categories[cat]?.[c] ?? "inherit"}
                          onChange={(e) =>
                            edit({
                              categories: {
                                ...form.categories,
                                [cat]: { ...form.categories[cat]!, [c]: e.target.value as Tri },
                              },
                            })
                          }
                        >
                          <option value="inherit">{p.inherit}</option>
                          <option value="on">{p.on}</option>
                          <option value="off">{p.off}</option>
                        </select>
                      </td>
                    ))}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </fieldset>

        <fieldset>
          <legend>{p.quietHours}</legend>
          <label className="check">
            <input type="checkbox" checked={form.quiet} onChange={(e) => edit({ quiet: e.target.checked })} />
            {p.quietEnabled}
          </label>
          <p className="muted small">{p.quietHint}</p>
          <div className="row">
            <label>
              {p.from}
              <input
                type="time"
                value={form.start}
                disabled={!form.quiet}
                aria-invalid={invalid("quietHours.start")}
                onChange={(e) => edit({ start: e.target.value })}
              />
            </label>
            <label>
              {p.until}
              <input
                type="time"
                value={form.end}
                disabled={!form.quiet}
                aria-invalid={invalid("quietHours.end")}
                onChange={(e) => edit({ end: e.target.value })}
              />
            </label>
            <label>
              {p.timezone}
              <select
                value={form.timezone}
                disabled={!form.quiet}
                aria-invalid={invalid("quietHours.timezone")}
                onChange={(e) => edit({ timezone: e.target.value })}
              >
                {(zones.includes(form.timezone) ? zones : [form.timezone, ...zones]).map((z) => (
                  <option key={z} value={z}>
                    {z}
                  </option>
                ))}
              </select>
            </label>
          </div>
        </fieldset>

        <fieldset>
          <legend>{p.locale}</legend>
          <select
            aria-label={p.locale}
            value={form.locale}
            onChange={(e) => edit({ locale: e.target.value as Form["locale"] })}
          >
            <option value="">{p.localeAuto}</option>
            <option value="ru">Русский</option>
            <option value="en">English</option>
          </select>
        </fieldset>

        {problem && (
          <p className="error" role="alert">
            {problem.field ? `${problem.field}: ` : ""}
            {problem.message}
          </p>
        )}
        <div className="row">
          <button type="submit" disabled={state === "saving" || loading}>
            {state === "saving" ? p.saving : p.save}
          </button>
          <span role="status" className="saved">
            {state === "saved" ? p.saved : ""}
          </span>
        </div>
      </form>
    </section>
  );
}
