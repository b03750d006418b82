// @herald/client: Herald's browser client.
//
// | module | owns |
// |---|---|
// | rest.ts | the REST API, typed; problem documents as HeraldError; token refresh on 401 |
// | realtime.ts | the socket.io-client connection: offset and epoch kept, resume, refetch when Herald cannot |
// | store.ts | the notification store: items, unread count, paging, toasts, live events and read sync |
// | client.ts | HeraldClient: the three on one token source |
// | react.tsx | HeraldProvider and hooks (import from "@herald/client/react") |
// | generated/api.ts | every REST shape and socket event, generated from Herald's OpenAPI document |

export * from "./generated/api.js";
export { HeraldClient, createHerald, type HeraldOptions } from "./client.js";
export {
  HeraldRealtime,
  type AnyEventHandler,
  type ConnectionStatus,
  type EventHandler,
  type EventName,
  type Position,
  type RealtimeOptions,
  type RefetchReason,
  type Subscription,
  type SubscriptionAck,
} from "./realtime.js";
export { HeraldError, HeraldRest, subjectOf, type ListOptions, type RestOptions, type TokenSource } from "./rest.js";
export { NotificationStore, type NotificationState, type StoreOptions, type Toast } from "./store.js";
