// Parley client SDK: the transport-independent core (no MQTT client, no Node-only modules).
// Inbox: exactly-once, in-order delivery per conversation (docs/delivery.md).
// Outbox: idempotent sends with a cmid, tracked until the server stored them (docs/protocol.md).
export { Inbox, conversationKey } from './inbox.js'
export type { InboxCounters, InboxOptions, ReceiveOutcome, Sequenced, SyncRequest } from './inbox.js'
export { MemoryOutboxStore, Outbox, sendTopic } from './outbox.js'
export type { Draft, OutboxEntry, OutboxOptions, OutboxState, OutboxStore, OutgoingPayload } from './outbox.js'
export { newCmid } from './cmid.js'
