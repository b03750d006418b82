// Live events as passing messages, announced politely to screen readers.
// The store queues them (at most five) and takes each away after a while.

import { useToasts } from "@herald/client/react";

import { useUi } from "./App";

export function Toasts() {
  const { t } = useUi();
  const { toasts, dismiss } = useToasts();
  return (
    <div className="toasts" role="status" aria-live="polite">
      {toasts.map((toast) => (
        <div key={toast.id} className="toast" data-event={toast.event} data-event-id={toast.id}>
          <div>
            <strong>{toast.notification?.title ?? toast.event}</strong>
            {toast.notification && <p>{toast.notification.body}</p>}
          </div>
          <button type="button" className="quiet" aria-label={t.dismiss} onClick={() => dismiss(toast.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
