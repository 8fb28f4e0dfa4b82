// messages: turns a device's publish on s/dm/{userId} or s/g/{groupId} into a stored, numbered message.
//   1. protocol has validated the payload and the sender's right to write (it runs first);
//   2. the message is stamped (server id, per-conversation seq, sender from the session, time)
//      and stored, batched with others arriving in the same few milliseconds;
//   3. only then does the authorizePublish hook return, and Aedes writes the PUBACK after it
//      (lib/handlers/publish.js: authorizePublish, then PUBACK, then publish): PUBACK means stored.
//      If the store fails, the hook throws: no PUBACK, the connection closes, and the client's
//      retry (same cmid) is stored once the store is back; a retry of a stored send is answered
//      with the same id and seq;
//   4. the envelope goes to u/{recipient}/m and, as a carbon, to u/{sender}/m (the sender's
//      devices; the sending device learns its id and seq from it); a group message goes to every
//      member's u/{member}/m at QoS 0 (docs/groups.md explains why).
// Sync: the RPC methods messages.sync (after a seq) and messages.history (before a seq).
// Read state: s/read moves a reader's marker (read event to the reader's devices, read receipt to
// the other user of a one-to-one chat); conversations.list gives last messages and unread counts.
import { z } from 'zod'
import { definePlugin } from '../../broker/plugin-api.js'
import { ConversationRef, DOWN, ReadMarker, SendMessage, parseUpTopic, type Event, type MessageEnvelope, type Receipt } from '../../schemas/protocol.js'
import { RpcError, type Device } from '../protocol/index.js'
import { chooseStore, initInBackground } from '../shared/stores.js'
import { BatchingAppender } from './batcher.js'
import { MongoStateStore, SqliteStateStore, type StateStore } from './state-store.js'
import { MongoMessageStore } from './mongo-store.js'
import { SqliteMessageStore } from './sqlite-store.js'
import { dmKey, groupKey, type ConversationKey, type MessageStore, type StoredMessage } from './store.js'

export const MessagesConfig = z
  .object({
    store: z.enum(['auto', 'embedded', 'mongo']).default('auto').describe('auto: MongoDB when mongo.url is set, else embedded'),
    batchWindowMs: z.number().int().min(0).max(1000).default(2).describe('How long an append waits for others to share its write'),
    maxBatch: z.number().int().positive().max(5000).default(256),
    maxSyncPage: z.number().int().positive().max(1000).default(200)
  })
  .strict()

/** The conversation as the reader sees it: a dm names the other user. */
export function conversationFor(key: ConversationKey, reader: string): ConversationRef {
  if (key.startsWith('g:')) return { kind: 'group', id: key.slice(2) }
  const [, a, b] = key.split(':') as [string, string, string]
  return { kind: 'dm', id: a === reader ? b : a }
}

export function envelopeFor(m: StoredMessage, reader: string): MessageEnvelope {
  return {
    id: m.id,
    seq: m.seq,
    conversation: conversationFor(m.conversation, reader),
    from: { user: m.sender.user, device: m.sender.device },
    cmid: m.cmid,
    type: m.type,
    body: m.body,
    ...(m.replyTo !== undefined ? { replyTo: m.replyTo } : {}),
    e2e: m.e2e,
    ts: m.ts
  }
}

const SyncParams = z
  .object({
    conversation: ConversationRef,
    afterSeq: z.number().int().min(0),
    limit: z.number().int().positive().optional()
  })
  .strict()

const HistoryParams = z
  .object({
    conversation: ConversationRef,
    beforeSeq: z.number().int().min(1).optional(),
    limit: z.number().int().positive().optional()
  })
  .strict()

export interface MessagesApi {
  /** Drains the write queue (tests, shutdown). */
  drain(): Promise<void>
}

export default definePlugin({
  name: 'messages',
  dependencies: ['protocol', 'groups'],
  configSchema: MessagesConfig,
  register(ctx): MessagesApi {
    const config = ctx.config
    const protocol = ctx.dependency('protocol')
    const groups = ctx.dependency('groups')
    const store = chooseStore<MessageStore>(ctx, config.store, {
      mongo: (db) => new MongoMessageStore(db),
      embedded: (file) => new SqliteMessageStore(file),
      file: 'messages.db'
    })
    // Sends wait for the store; /readyz reports it until it is initialised.
    const initialised = initInBackground(ctx, store)
    const stateStore = chooseStore<StateStore>(ctx, config.store, {
      mongo: (db) => new MongoStateStore(db),
      embedded: (file) => new SqliteStateStore(file),
      file: 'conversations.db'
    })
    const state = initInBackground(ctx, stateStore, 'conversation-state')

    const stored = ctx.metrics.counter({ name: 'messages_stored_total', help: 'Messages stored', labelNames: ['kind'] })
    const duplicates = ctx.metrics.counter({ name: 'messages_duplicates_total', help: 'Retried sends answered from the store' })
    const failures = ctx.metrics.counter({ name: 'messages_store_failures_total', help: 'Sends refused because the store failed (no PUBACK)' })
    const batchSize = ctx.metrics.histogram({
      name: 'messages_batch_size',
      help: 'Messages per store write',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    })
    const appender = new BatchingAppender(initialised, config.batchWindowMs, config.maxBatch, (size) => batchSize.observe(size))

    /**
     * One-to-one messages go out at QoS 1 (a persistent session queues them). Group messages go out
     * at QoS 0: a large group must not leave one queued copy per offline member in the session
     * store; the message store is the copy, and a device catches up with messages.sync (on
     * reconnect, or on a gap in seq).
     */
    const deliver = (m: StoredMessage, recipients: readonly string[], qos: 0 | 1): void => {
      const shared = m.conversation.startsWith('g:') ? JSON.stringify(envelopeFor(m, '')) : undefined
      for (const user of new Set(recipients)) {
        ctx
          .publish({ topic: DOWN.messages(user), payload: shared ?? JSON.stringify(envelopeFor(m, user)), qos })
          .catch((err: unknown) => ctx.log.error({ err, id: m.id, user }, 'delivery failed'))
      }
    }

    /** Moves a reader's marker; tells the reader's devices and, in a one-to-one chat, the other user. */
    const markRead = async (device: Device, conversation: ConversationRef, wanted: number): Promise<void> => {
      const key = await keyFor(device, conversation)
      const [s, st] = [await initialised(), await state()]
      const before = (await st.get(device.userId, key))?.readSeq ?? 0
      const now = await st.markRead(device.userId, key, Math.min(wanted, await s.lastSeq(key)))
      if (now <= before) return
      const ts = Date.now()
      const event: Event = { type: 'read', conversation, seq: now }
      await ctx.publish({ topic: DOWN.events(device.userId), payload: JSON.stringify(event), qos: 1 })
      if (conversation.kind === 'dm' && conversation.id !== device.userId) {
        const receipt: Receipt = { kind: 'read', conversation: { kind: 'dm', id: device.userId }, upToSeq: now, by: device.userId, ts }
        await ctx.publish({ topic: DOWN.receipts(conversation.id), payload: JSON.stringify(receipt), qos: 1 })
      }
    }

    /** Conversation state that trails a stored message: the list order, and "sending reads". */
    const recordActivity = (m: StoredMessage, users: readonly string[]): void => {
      void state()
        .then(async (st) => {
          await st.touch(users, m.conversation, m.ts)
          await st.markRead(m.sender.user, m.conversation, m.seq)
        })
        .catch((err: unknown) => ctx.log.error({ err, id: m.id }, 'conversation state not updated'))
    }

    ctx.hook('authorizePublish', async (client, packet, { will }) => {
      if (will) return undefined
      const up = parseUpTopic(packet.topic)
      if (up?.kind === 'read') {
        const device = protocol.deviceOf(client)
        if (!device) return undefined
        const marker = ReadMarker.parse(JSON.parse(packet.payload.toString()))
        await markRead(device, marker.conversation, marker.seq) // PUBACK once the marker is stored
        return undefined
      }
      if (up?.kind !== 'dm' && up?.kind !== 'group') return undefined
      const device = protocol.deviceOf(client)
      if (!device) return undefined // protocol has refused it already
      const body = SendMessage.parse(JSON.parse(packet.payload.toString()))
      let result
      try {
        result = await appender.append({
          conversation: up.kind === 'dm' ? dmKey(device.userId, up.peer) : groupKey(up.groupId),
          sender: { user: device.userId, device: device.deviceId },
          cmid: body.cmid,
          type: body.type,
          body: body.body,
          replyTo: body.replyTo,
          e2e: body.e2e,
          ts: Date.now()
        })
      } catch (err) {
        failures.inc()
        ctx.log.error({ err, clientId: client.id }, 'message not stored: no PUBACK, the client will retry')
        throw err
      }
      if (result.duplicate) duplicates.inc()
      else {
        stored.inc({ kind: up.kind })
        // Groups are listed from the groups plugin: only one-to-one rows carry activity times.
        recordActivity(result.message, up.kind === 'dm' ? [device.userId, up.peer] : [])
      }
      // At least once: a retry is delivered again (devices drop duplicate ids).
      if (up.kind === 'dm') deliver(result.message, [up.peer, device.userId], 1)
      else deliver(result.message, await groups.members(up.groupId), 0)
      return undefined
    })

    const keyFor = async (device: Device, conversation: ConversationRef): Promise<ConversationKey> => {
      if (conversation.kind === 'dm') return dmKey(device.userId, conversation.id)
      if (!(await protocol.isMember(conversation.id, device.userId))) {
        throw new RpcError('not_a_member', `you are not a member of group ${conversation.id}`)
      }
      return groupKey(conversation.id)
    }

    /** What a page request needs: the store, the conversation (membership checked) and the page size. */
    const pageRequest = async (device: Device, p: { conversation: ConversationRef; limit?: number | undefined }) => ({
      s: await initialised(),
      key: await keyFor(device, p.conversation),
      limit: Math.min(p.limit ?? config.maxSyncPage, config.maxSyncPage)
    })

    protocol.registerMethod('messages.sync', {
      params: SyncParams,
      handler: async (device, p) => {
        const { s, key, limit } = await pageRequest(device, p)
        const page = await s.after(key, p.afterSeq, limit + 1)
        return {
          messages: page.slice(0, limit).map((m) => envelopeFor(m, device.userId)),
          hasMore: page.length > limit,
          lastSeq: await s.lastSeq(key)
        }
      }
    })

    protocol.registerMethod('messages.history', {
      params: HistoryParams,
      handler: async (device, p) => {
        const { s, key, limit } = await pageRequest(device, p)
        const page = await s.before(key, p.beforeSeq ?? Number.MAX_SAFE_INTEGER, limit + 1)
        return { messages: page.slice(-limit).map((m) => envelopeFor(m, device.userId)), hasMore: page.length > limit }
      }
    })

    protocol.registerMethod('conversations.list', {
      params: z.object({ limit: z.number().int().positive().max(500).optional() }).strict(),
      handler: async (device, p) => {
        const [s, st] = [await initialised(), await state()]
        const limit = p.limit ?? 100
        const keys = new Set((await st.list(device.userId, limit)).map((c) => c.conversation).filter((k) => k.startsWith('dm:')))
        for (const g of await groups.groupsOf(device.userId)) keys.add(groupKey(g.id))
        const rows = await Promise.all(
          [...keys].map(async (key) => {
            const [last] = await s.before(key, Number.MAX_SAFE_INTEGER, 1)
            const readSeq = (await st.get(device.userId, key))?.readSeq ?? 0
            const lastSeq = last?.seq ?? 0
            return {
              conversation: conversationFor(key, device.userId),
              lastSeq,
              readSeq,
              unread: Math.max(0, lastSeq - readSeq),
              ...(last ? { last: envelopeFor(last, device.userId) } : {})
            }
          })
        )
        // A conversation without messages (say, a read marker sent to an empty chat) is not listed.
        const conversations = rows.filter((r) => r.lastSeq > 0).sort((a, b) => (b.last?.ts ?? 0) - (a.last?.ts ?? 0)).slice(0, limit)
        return { conversations, totalUnread: conversations.reduce((n, c) => n + c.unread, 0) }
      }
    })

    ctx.hook('shutdown', async () => {
      await appender.drain()
      await store.close()
      await stateStore.close()
    })

    return { drain: () => appender.drain() }
  }
})

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    messages: MessagesApi
  }
}
