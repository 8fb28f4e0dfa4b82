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
// Sync: messages.sync (one conversation after a seq), messages.history (before a seq) and
// messages.pull (every conversation since the device's server-kept cursor, pull.ts).
// Receipts (receipts.ts): delivered and read markers from s/delivered, s/read and PUBACKs of
// one-to-one deliveries; receipts to senders; group counts; conversations.list with unread counts.
// Kinds: text, media references, edits and deletes (new messages referencing the original; a
// delete also removes the original's content from the store), and system notices of group changes
// and from operators (admin.ts: history and notices in the admin API).
import { randomBytes } from 'node:crypto'
import { z } from 'zod'
import { definePlugin, type PublishRejection } from '../../broker/plugin-api.js'
import { ConversationRef, DOWN, DeliveredMarker, ReadMarker, SendMessage, parseDownTopic, parseUpTopic, type MessageEnvelope, type MessageType } from '../../schemas/protocol.js'
import { RpcError, type Device } from '../protocol/index.js'
import { chooseStore, initInBackground } from '../shared/stores.js'
import { registerMessagesAdmin } from './admin.js'
import { BatchingAppender } from './batcher.js'
import { conversationFor, envelopeFor } from './envelope.js'
import { PullParams, decodeCursor, encodeCursor, mapLimited, presentPositions, pullPage } from './pull.js'
import { Receipts } from './receipts.js'
import { MongoStateStore, SqliteStateStore, type MarkerMove, type StateStore } from './state-store.js'
import { MongoMessageStore } from './mongo-store.js'
import { SqliteMessageStore } from './sqlite-store.js'
import { dmKey, groupKey, type ConversationKey, type MessageStore, type NewMessage, type StoredMessage } from './store.js'

export const MessagesConfig = z
  .object({
    store: z.enum(['auto', 'embedded', 'mongo']).default('auto').describe('auto: MongoDB when mongo.url is set, else embedded'),
    batchWindowMs: z.number().int().min(0).max(1000).default(2).describe('How long an append waits for others to share its write'),
    maxBatch: z.number().int().positive().max(5000).default(256),
    maxSyncPage: z.number().int().positive().max(1000).default(200),
    maxDeltaMessages: z
      .number()
      .int()
      .positive()
      .default(1000)
      .describe('messages.pull answers reset for a conversation a device is further behind in than this'),
    editWindowMs: z.number().int().min(0).default(15 * 60_000).describe('How long after sending a message its sender may edit it'),
    deleteWindowMs: z.number().int().min(0).default(48 * 3_600_000).describe('How long after sending a message its sender may delete it for everyone'),
    receiptBatchMs: z.number().int().min(10).max(60_000).default(1000).describe('How long group receipt changes are collected into one summary per sender'),
    stateBatchMs: z
      .number()
      .int()
      .min(0)
      .max(1000)
      .default(5)
      .describe('How long delivered/read marker moves (and their one-to-one receipts) and conversation activity wait to share one write: at 3,000 stored msg/s, 0 (one write per event-loop turn) cost the broker 0.88 cores and 5 ms cost 0.68'),
    maxReceiptRange: z.number().int().positive().max(1000).default(100).describe('Messages one group receipt summary or request covers at most'),
    systemNotices: z.boolean().default(true).describe('Record group changes as system messages in the group conversation')
  })
  .strict()

/** How many one-to-one conversations of a user sync and the conversation list look at. */
const MAX_CONVERSATIONS = 10_000

export { conversationFor, envelopeFor }

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

const ReceiptsParams = z
  .object({
    conversation: ConversationRef,
    fromSeq: z.number().int().min(1).describe('Counts for the requester\'s own messages from this seq on')
  })
  .strict()

const PrivacyParams = z.object({ readReceipts: z.boolean() }).strict()

export interface MessagesApi {
  /** Drains the write queue (tests, shutdown). */
  drain(): Promise<void>
  /** The users a user has one-to-one conversations with (presence shows itself to them). */
  peersOf(user: string): Promise<string[]>
  /** Calls `listener` with the two users once the first message of their conversation is recorded (on the node that stored it). */
  onNewConversation(listener: (users: readonly string[]) => Promise<void>): void
  /**
   * Adds a check every new send of these kinds must pass before it is stored (media: the object
   * exists and matches). A rejection refuses the send (PUBACK + error to the device); a throw fails
   * it (no PUBACK). Sends of other kinds skip it (and the retry lookup it needs).
   */
  addSendCheck(types: readonly MessageType[], check: (message: NewMessage, sender: Device) => Promise<PublishRejection | undefined>): void
  /** Calls `listener` once per newly stored message with its recipients other than the sender (push), on the storing node. */
  onStored(listener: (message: StoredMessage, recipients: readonly string[]) => Promise<void>): void
  /** Calls `listener` with a message as it was before its sender deleted it for everyone (media: remove the object). */
  onDeleted(listener: (original: StoredMessage) => Promise<void>): void
  /** The user's unread messages over every conversation (an app badge). */
  unreadTotal(user: string): Promise<number>
}

export type { NewMessage, StoredMessage } from './store.js'

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

    const systemUser = groups.systemUser
    const stored = ctx.metrics.counter({ name: 'messages_stored_total', help: 'Messages stored', labelNames: ['kind'] })
    const duplicates = ctx.metrics.counter({ name: 'messages_duplicates_total', help: 'Retried sends answered from the store' })
    const failures = ctx.metrics.counter({ name: 'messages_store_failures_total', help: 'Sends refused because the store failed (no PUBACK)' })
    const batchSize = ctx.metrics.histogram({
      name: 'messages_batch_size',
      help: 'Messages per store write',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    })
    const messagesIn = ctx.metrics.counter({
      name: 'messages_in_total',
      help: 'What the plugin takes in, by kind: dm and group sends (retries included), system notices (notice), read and delivered markers, PUBACKs of one-to-one deliveries (ack)',
      labelNames: ['kind']
    })
    const messagesOut = ctx.metrics.counter({
      name: 'messages_out_total',
      help: "Message envelopes published, one per recipient user's u/{userId}/m (carbons included), by kind: dm, group, notice",
      labelNames: ['kind']
    })
    const storeSeconds = ctx.metrics.histogram({
      name: 'messages_store_append_seconds',
      help: 'Duration of one batched append to the message store, by outcome',
      labelNames: ['outcome'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20]
    })
    const deliverySeconds = ctx.metrics.histogram({
      name: 'messages_delivery_seconds',
      help: "From a message's server stamp (ts) to its recipient's acknowledgement: a device's PUBACK (via=puback, one-to-one, persistent sessions) or a delivered marker that moved (via=marker, its newest message)",
      labelNames: ['kind', 'via'],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86_400]
    })
    const markersMoved = ctx.metrics.counter({
      name: 'receipt_markers_moved_total',
      help: 'Delivered and read markers moved by devices (s/delivered, s/read, PUBACKs), by marker and conversation kind',
      labelNames: ['marker', 'kind']
    })
    const receiptsSent = ctx.metrics.counter({
      name: 'receipts_sent_total',
      help: 'Receipts published to senders, by kind: delivered and read (one-to-one), group (summaries)',
      labelNames: ['kind']
    })
    const syncSeconds = ctx.metrics.histogram({
      name: 'sync_request_seconds',
      help: 'Catch-up requests answered (messages.sync, messages.history, messages.pull), by method and outcome',
      labelNames: ['method', 'outcome'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    })
    const syncMessages = ctx.metrics.counter({
      name: 'sync_messages_total',
      help: 'Messages returned by catch-up requests, by method',
      labelNames: ['method']
    })
    const pullResets = ctx.metrics.counter({
      name: 'pull_resets_total',
      help: 'Conversations messages.pull answered with reset (a device more than maxDeltaMessages behind)'
    })
    const appender = new BatchingAppender(initialised, config.batchWindowMs, config.maxBatch, (size, ms, ok) => {
      batchSize.observe(size)
      storeSeconds.observe({ outcome: ok ? 'ok' : 'error' }, ms / 1000)
    })

    /** A delivery's latency from the server stamp; clocks of two nodes may differ a little, never below 0. */
    const observeDelivery = (ts: number, kind: 'dm' | 'group', via: 'puback' | 'marker') => deliverySeconds.observe({ kind, via }, Math.max(0, Date.now() - ts) / 1000)

    /**
     * One-to-one messages go out at QoS 1 (a persistent session queues them). Group messages go out
     * at QoS 0: a large group must not leave one queued copy per offline member in the session
     * store; the message store is the copy, and a device catches up with messages.sync (on
     * reconnect, or on a gap in seq).
     */
    const deliver = (m: StoredMessage, recipients: readonly string[], qos: 0 | 1): number => {
      const shared = m.conversation.startsWith('g:') ? JSON.stringify(envelopeFor(m, '')) : undefined
      const kind = m.type === 'system' ? 'notice' : shared ? 'group' : 'dm'
      const to = new Set(recipients)
      for (const user of to) {
        ctx
          .publish({ topic: DOWN.messages(user), payload: shared ?? JSON.stringify(envelopeFor(m, user)), qos })
          .then(() => messagesOut.inc({ kind }))
          .catch((err: unknown) => ctx.log.error({ err, id: m.id, user }, 'delivery failed'))
      }
      return to.size
    }

    const receipts = new Receipts(ctx, initialised, state, groups, {
      batchMs: config.receiptBatchMs,
      moveBatchMs: config.stateBatchMs,
      maxRange: config.maxReceiptRange,
      systemUser,
      metrics: { markersMoved, receiptsSent }
    })

    const newConversation: Array<(users: readonly string[]) => Promise<void>> = []

    /** Conversation state that trails a stored message: the list order, and "sending reads". */
    // Coalesced per conversation: a burst of N messages costs one touch and one marker write per
    // sender, not N of each (on MongoDB those writes would cost more than the batched inserts).
    interface Activity {
      users: Set<string>
      ts: number
      first: boolean
      reads: Map<string, { seq: number; system: boolean }>
    }
    const pendingActivity = new Map<ConversationKey, Activity>()
    let activityFlush: Promise<void> | undefined
    const flushActivity = async (): Promise<void> => {
      await new Promise((r) => setTimeout(r, config.stateBatchMs)) // let the rest of this burst join
      try {
        const st = await state()
        while (pendingActivity.size) {
          const batch = [...pendingActivity]
          pendingActivity.clear()
          try {
            // One write for the whole burst's activity, one for its "sending reads".
            const touched = batch.filter(([, a]) => a.users.size > 0)
            await st.touchMany(touched.map(([key, a]) => ({ users: [...a.users], conversation: key, ts: a.ts })))
            const reads: MarkerMove[] = []
            for (const [key, a] of batch) {
              for (const [user, r] of a.reads) {
                // A system notice is not its author reading the conversation; it is only not unread
                // for them when they had read everything before it.
                const caughtUp = !r.system || ((await st.get(user, key))?.readSeq ?? 0) >= r.seq - 1
                if (caughtUp) reads.push({ user, conversation: key, marker: 'read', seq: r.seq })
              }
            }
            await st.advanceMany(reads)
          } catch (err) {
            ctx.log.error({ err, conversations: batch.length }, 'conversation state not updated')
          }
          const first = batch.filter(([, a]) => a.first && a.users.size > 0)
          await mapLimited(first, 16, async ([key, a]) => {
            try {
              for (const listener of newConversation) await listener([...a.users])
            } catch (err) {
              ctx.log.error({ err, conversation: key }, 'new-conversation listener failed')
            }
          })
        }
      } catch (err) {
        ctx.log.error({ err }, 'conversation state not updated')
      } finally {
        activityFlush = undefined
      }
    }
    const recordActivity = (m: StoredMessage, users: readonly string[]): void => {
      const a: Activity = pendingActivity.get(m.conversation) ?? { users: new Set<string>(), ts: 0, first: false, reads: new Map<string, { seq: number; system: boolean }>() }
      users.forEach((u) => a.users.add(u))
      a.ts = Math.max(a.ts, m.ts)
      if (m.seq === 1) a.first = true
      const read = a.reads.get(m.sender.user)
      // The system user reads nothing: it has no devices, and no conversation state of its own.
      if (m.sender.user !== systemUser && (!read || read.seq < m.seq)) a.reads.set(m.sender.user, { seq: m.seq, system: m.type === 'system' })
      pendingActivity.set(m.conversation, a)
      activityFlush ??= flushActivity()
    }

    const rejection = (reject: PublishRejection['reject'], message: string): PublishRejection => ({ reject, message })

    /** An edit or delete must reference the sender's own, still editable message of the same conversation. */
    const checkReference = async (key: ConversationKey, user: string, body: Extract<SendMessage, { ref: string }>): Promise<PublishRejection | undefined> => {
      const original = await (await initialised()).get(key, body.ref)
      if (!original || original.type === 'system' || original.type === 'edit' || original.type === 'delete') {
        return rejection('unknown_message', `no message ${body.ref} to ${body.type} in this conversation`)
      }
      if (original.sender.user !== user) return rejection('forbidden', `only its sender may ${body.type} message ${body.ref}`)
      if (original.deleted && body.type === 'edit') return rejection('unknown_message', `message ${body.ref} was deleted`)
      const window = body.type === 'edit' ? config.editWindowMs : config.deleteWindowMs
      if (!original.deleted && Date.now() - original.ts > window) {
        return rejection('too_late', `messages can be ${body.type === 'edit' ? 'edited' : 'deleted'} for ${Math.round(window / 60_000)} minutes after sending`)
      }
      return undefined
    }

    const sendChecks: Array<{ types: readonly MessageType[]; check: (message: NewMessage, sender: Device) => Promise<PublishRejection | undefined> }> = []
    const storedListeners: Array<(message: StoredMessage, recipients: readonly string[]) => Promise<void>> = []
    const deletedListeners: Array<(original: StoredMessage) => Promise<void>> = []
    /** Runs listeners after the fact: their failures are logged, never the sender's problem. */
    const tell = <A extends unknown[]>(listeners: Array<(...args: A) => Promise<void>>, ...args: A) => {
      for (const l of listeners) void l(...args).catch((err: unknown) => ctx.log.error({ err }, 'message listener failed'))
    }

    /** Stores a message (no PUBACK until it is), then records activity and delivers it; resolves with the stored message and how many users it went to. */
    const send = async (client: { id: string }, message: NewMessage, recipients: () => Promise<readonly string[]>, activityUsers: readonly string[]) => {
      const kind = message.conversation.startsWith('g:') ? 'group' : 'dm'
      messagesIn.inc({ kind: message.type === 'system' ? 'notice' : kind })
      let result
      try {
        result = await appender.append(message)
      } catch (err) {
        failures.inc()
        ctx.log.error({ err, clientId: client.id }, 'message not stored: no PUBACK, the client will retry')
        throw err
      }
      if (result.duplicate) duplicates.inc()
      else {
        stored.inc({ kind })
        recordActivity(result.message, activityUsers)
      }
      // A delete removes the original's content (again on a retry: the first may have been cut short).
      if (message.type === 'delete' && message.ref) {
        const s = await initialised()
        const original = await s.get(message.conversation, message.ref)
        await s.redact(message.conversation, message.ref)
        if (original && !original.deleted) tell(deletedListeners, original)
      }
      const to = await recipients()
      // At least once: a retry is delivered again (devices drop duplicate ids).
      const reached = deliver(result.message, to, kind === 'dm' ? 1 : 0)
      if (!result.duplicate) tell(storedListeners, result.message, to.filter((u) => u !== message.sender.user))
      return { message: result.message, recipients: reached }
    }

    ctx.hook('authorizePublish', async (client, packet, { will }) => {
      if (will) return undefined
      const up = parseUpTopic(packet.topic)
      if (up?.kind === 'read' || up?.kind === 'delivered') {
        const device = protocol.deviceOf(client)
        if (!device) return undefined
        const marker = (up.kind === 'read' ? ReadMarker : DeliveredMarker).parse(JSON.parse(packet.payload.toString()))
        messagesIn.inc({ kind: up.kind })
        // PUBACK once the marker is stored.
        const key = await keyFor(device, marker.conversation)
        const moved = await receipts.move(device.userId, marker.conversation, key, up.kind, marker.seq)
        if (up.kind === 'delivered' && moved.after > moved.before) {
          // The newest message the move covers stands for the batch; read after the PUBACK, off its path.
          void initialised()
            .then((s) => s.after(key, moved.after - 1, 1))
            .then(([m]) => {
              if (m && m.sender.user !== device.userId) observeDelivery(m.ts, marker.conversation.kind, 'marker')
            })
            .catch(() => undefined)
        }
        return undefined
      }
      if (up?.kind !== 'dm' && up?.kind !== 'group') return undefined
      const device = protocol.deviceOf(client)
      if (!device) return undefined // protocol has refused it already
      // Nobody reads the system user's side of its notice conversations: a message there would be lost.
      if (up.kind === 'dm' && up.peer === systemUser) return rejection('forbidden', `${systemUser} is the service's own user: it takes no messages`)
      const body = SendMessage.parse(JSON.parse(packet.payload.toString()))
      const key = up.kind === 'dm' ? dmKey(device.userId, up.peer) : groupKey(up.groupId)
      const referencing = body.type === 'edit' || body.type === 'delete'
      // A retry of a stored send is answered like any retry, even once a check would refuse it (an
      // edit window closed). The lookup costs a query, so it is made only when there is something to check.
      const checks = sendChecks.filter((c) => c.types.includes(body.type))
      const retried = (referencing || checks.length > 0) && Boolean(await (await initialised()).findSent(device.userId, body.cmid))
      if (referencing && !retried) {
        const refused = await checkReference(key, device.userId, body)
        if (refused) return refused
      }
      const message: NewMessage = {
        conversation: key,
        sender: { user: device.userId, device: device.deviceId },
        cmid: body.cmid,
        type: body.type,
        body: body.type === 'delete' ? '' : (body.body ?? ''),
        media: body.type === 'media' ? body.media : undefined,
        ref: body.type === 'edit' || body.type === 'delete' ? body.ref : undefined,
        replyTo: body.type === 'text' || body.type === 'media' ? body.replyTo : undefined,
        e2e: body.type === 'delete' ? false : body.e2e,
        ts: Date.now()
      }
      if (!retried) {
        for (const { check } of checks) {
          const refused = await check(message, device)
          if (refused) return refused
        }
      }
      // Groups are listed from the groups plugin: only one-to-one rows carry activity times.
      if (up.kind === 'dm') await send(client, message, async () => [up.peer, device.userId], [device.userId, up.peer])
      else await send(client, message, () => groups.members(up.groupId), [])
      return undefined
    })

    // A device's PUBACK of a one-to-one message it received: delivered. Aedes has the packet only
    // for persistent sessions (NOTES.md, aedes #518); clean sessions send s/delivered.
    ctx.hook('deliveryAck', async (client, packet) => {
      if (packet?.cmd !== 'publish') return
      const device = protocol.deviceOf(client)
      const down = parseDownTopic(packet.topic)
      if (!device || !down || down.userId !== device.userId || packet.topic !== DOWN.messages(device.userId)) return
      let envelope: Pick<MessageEnvelope, 'seq' | 'conversation' | 'from' | 'ts'>
      try {
        envelope = JSON.parse(packet.payload.toString()) as MessageEnvelope
      } catch {
        return
      }
      if (envelope.conversation.kind !== 'dm' || envelope.from.user === device.userId) return // carbons are not receipts
      messagesIn.inc({ kind: 'ack' })
      if (typeof envelope.ts === 'number') observeDelivery(envelope.ts, 'dm', 'puback')
      const conversation: ConversationRef = { kind: 'dm', id: envelope.conversation.id }
      // The seq is that of an envelope this server stored and sent: no clamping query needed.
      if (!Number.isSafeInteger(envelope.seq) || envelope.seq < 1) return
      await receipts.move(device.userId, conversation, dmKey(device.userId, conversation.id), 'delivered', envelope.seq, false)
    })

    if (config.systemNotices) {
      groups.onChange(async (group, change) => {
        const message: NewMessage = {
          conversation: groupKey(group),
          sender: { user: change.by, device: 'server' },
          cmid: `sys-${randomBytes(12).toString('hex')}`,
          type: 'system',
          body: '',
          notice: { ...change },
          e2e: false,
          ts: Date.now()
        }
        await send({ id: 'server' }, message, () => groups.members(group), [])
      })
    }

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

    /** Times a catch-up request and counts what it returns. */
    const timed = async <R>(method: 'sync' | 'history' | 'pull', work: () => Promise<R>, returned: (r: R) => number): Promise<R> => {
      const done = syncSeconds.startTimer({ method })
      try {
        const result = await work()
        done({ outcome: 'ok' })
        syncMessages.inc({ method }, returned(result))
        return result
      } catch (err) {
        done({ outcome: 'error' })
        throw err
      }
    }

    const sync = async (device: Device, p: z.output<typeof SyncParams>) => {
      const { s, key, limit } = await pageRequest(device, p)
      const page = await s.after(key, p.afterSeq, limit + 1)
      return {
        messages: page.slice(0, limit).map((m) => envelopeFor(m, device.userId)),
        hasMore: page.length > limit,
        lastSeq: await s.lastSeq(key)
      }
    }

    protocol.registerMethod('messages.sync', {
      params: SyncParams,
      handler: async (device, p) => timed('sync', () => sync(device, p), (r) => r.messages.length)
    })

    protocol.registerMethod('messages.history', {
      params: HistoryParams,
      handler: async (device, p) =>
        timed(
          'history',
          async () => {
            const { s, key, limit } = await pageRequest(device, p)
            const page = await s.before(key, p.beforeSeq ?? Number.MAX_SAFE_INTEGER, limit + 1)
            return { messages: page.slice(-limit).map((m) => envelopeFor(m, device.userId)), hasMore: page.length > limit }
          },
          (r) => r.messages.length
        )
    })

    /** Every conversation of a user: one-to-one rows of the state store, and the user's groups. */
    const conversationsOf = async (user: string): Promise<ConversationKey[]> => {
      const keys = new Set((await (await state()).list(user, MAX_CONVERSATIONS)).map((c) => c.conversation).filter((k) => k.startsWith('dm:')))
      for (const g of await groups.groupsOf(user)) keys.add(groupKey(g.id))
      return [...keys]
    }

    /** Every conversation of a user with its last message and markers. */
    const conversationRows = async (user: string) => {
      const [s, st] = [await initialised(), await state()]
      return mapLimited(await conversationsOf(user), 32, async (key) => {
        const [last] = await s.before(key, Number.MAX_SAFE_INTEGER, 1)
        const marks = await st.get(user, key)
        const lastSeq = last?.seq ?? 0
        const readSeq = marks?.readSeq ?? 0
        return {
          conversation: conversationFor(key, user),
          lastSeq,
          readSeq,
          deliveredSeq: marks?.deliveredSeq ?? 0,
          unread: Math.max(0, lastSeq - readSeq),
          ...(last ? { last: envelopeFor(last, user) } : {})
        }
      })
    }

    protocol.registerMethod('conversations.list', {
      params: z.object({ limit: z.number().int().positive().max(500).optional() }).strict(),
      handler: async (device, p) => {
        const limit = p.limit ?? 100
        // Every conversation counts toward the total; the `limit` most recent are listed.
        const rows = await conversationRows(device.userId)
        // A conversation without messages (say, a read marker sent to an empty chat) is not listed.
        const listed = rows.filter((r) => r.lastSeq > 0).sort((a, b) => (b.last?.ts ?? 0) - (a.last?.ts ?? 0))
        return { conversations: listed.slice(0, limit), totalUnread: listed.reduce((n, c) => n + c.unread, 0) }
      }
    })

    const pull = async (device: Device, p: z.output<typeof PullParams>) => {
      const [s, st] = [await initialised(), await state()]
      const conversations = await conversationsOf(device.userId)
      if (p.ack !== undefined) {
        const positions = decodeCursor(p.ack)
        if (!positions) throw new RpcError('invalid_params', 'ack is not a cursor this server gave out')
        // Only the user's own conversations, and never past their end (that would hide messages).
        const own = new Set(conversations)
        const committed = new Map<ConversationKey, number>()
        for (const [key, seq] of positions) if (own.has(key)) committed.set(key, Math.min(seq, await s.lastSeq(key)))
        await st.advanceCursors(device.userId, device.deviceId, committed)
      }
      const deps = {
        store: s,
        state: st,
        conversations,
        toRef: (key: ConversationKey) => conversationFor(key, device.userId),
        toEnvelope: (m: StoredMessage) => envelopeFor(m, device.userId),
        maxDeltaMessages: config.maxDeltaMessages
      }
      const cursors = await st.cursors(device.userId, device.deviceId)
      if (!cursors) {
        await st.advanceCursors(device.userId, device.deviceId, await presentPositions(deps))
        return { fresh: true, changes: [], cursor: encodeCursor(new Map()), hasMore: false }
      }
      return pullPage(deps, cursors, Math.min(p.limit ?? config.maxSyncPage, config.maxSyncPage))
    }

    protocol.registerMethod('messages.pull', {
      params: PullParams,
      handler: async (device, p) =>
        timed(
          'pull',
          () => pull(device, p),
          (r) => {
            pullResets.inc(r.changes.filter((c) => c.reset).length)
            return r.changes.reduce((n, c) => n + c.messages.length, 0)
          }
        )
    })

    protocol.registerMethod('messages.receipts', {
      params: ReceiptsParams,
      handler: async (device, p) => receipts.counts(device.userId, p.conversation, await keyFor(device, p.conversation), p.fromSeq)
    })

    protocol.registerMethod('privacy.get', {
      params: z.object({}).strict(),
      handler: async (device) => (await (await state()).privacy([device.userId])).get(device.userId)
    })

    protocol.registerMethod('privacy.set', {
      params: PrivacyParams,
      handler: async (device, p) => {
        await (await state()).setPrivacy(device.userId, p)
        return p
      }
    })

    registerMessagesAdmin(ctx, {
      store: initialised,
      groups,
      maxPage: config.maxSyncPage,
      notify: (key, text, recipients, listedFor) =>
        send(
          { id: 'admin' },
          {
            conversation: key,
            sender: { user: systemUser, device: 'server' },
            cmid: `sys-${randomBytes(12).toString('hex')}`,
            type: 'system',
            body: text,
            e2e: false,
            ts: Date.now()
          },
          recipients,
          listedFor
        )
    })

    ctx.hook('shutdown', async () => {
      await appender.drain()
      await activityFlush
      await receipts.drain()
      await store.close()
      await stateStore.close()
    })

    return {
      drain: () => appender.drain(),
      peersOf: async (user) =>
        (await conversationsOf(user))
          .filter((k) => k.startsWith('dm:'))
          .map((k) => conversationFor(k, user).id)
          .filter((peer) => peer !== user && peer !== systemUser),
      onNewConversation: (listener) => {
        newConversation.push(listener)
      },
      addSendCheck: (types, check) => {
        sendChecks.push({ types, check })
      },
      onStored: (listener) => {
        storedListeners.push(listener)
      },
      onDeleted: (listener) => {
        deletedListeners.push(listener)
      },
      unreadTotal: async (user) => (await conversationRows(user)).reduce((n, r) => n + r.unread, 0)
    }
  }
})

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    messages: MessagesApi
  }
}
