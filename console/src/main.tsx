// Herald's console: the entry point. Reads the token (see session.ts), then
// shows the sign-in form or the console for that token.

import { useState } from "react";
import { createRoot } from "react-dom/client";

import { App } from "./App";
import { browserLang, STRINGS, type Lang } from "./i18n";
import { clear, decode, expired, load, store, type Session } from "./session";
import "./styles.css";

function Root() {
  const [session, setSession] = useState<Session | undefined>(() => {
    const s = load();
    return s && !expired(s) ? s : undefined;
  });
  if (!session) {
    return (
      <SignIn
        onSignIn={(s) => {
          store(s);
          setSession(s);
        }}
      />
    );
  }
  return (
    <App
      key={session.token}
      session={session}
      onSignOut={() => {
        clear();
        setSession(undefined);
      }}
    />
  );
}

function SignIn({ onSignIn }: { onSignIn: (s: Session) => void }) {
  const [lang] = useState<Lang>(() => (localStorage.getItem("herald.console.lang") as Lang | null) ?? browserLang());
  const t = STRINGS[lang] ?? STRINGS.en;
  const [value, setValue] = useState("");
  const [error, setError] = useState<string>();
  return (
    <main className="signin">
      <h1>{t.appName}</h1>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          const s = decode(value);
          if (!s) setError(t.tokenInvalid);
          else if (expired(s)) setError(t.tokenExpired);
          else onSignIn(s);
        }}
      >
        <p>{t.signInLead}</p>
        <label htmlFor="token">{t.token}</label>
        <textarea
          id="token"
          value={value}
          onChange={(e) => setValue(e.target.value)}
          rows={4}
          spellCheck={false}
          autoComplete="off"
          aria-invalid={error ? true : undefined}
          aria-describedby={error ? "token-error" : undefined}
        />
        {error && (
          <p id="token-error" className="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit">{t.signIn}</button>
      </form>
    </main>
  );
}

// No StrictMode: its double effects would open every socket twice in
// development, and the console is only ever built for production.
createRoot(document.getElementById("root")!).render(<Root />);
