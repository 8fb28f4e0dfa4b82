// Messages in the admin API (parley admin messages): a conversation's history, and operator notices.
//  - History reads private messages, so it needs the admin scope, and each read is written to the
//    log as an audit line (the API audits changes only; this read is worth the same trace).
//  - A notice is a `system` message with a `body` from the system user (groups.systemUser), stored,
//    numbered and delivered like the group-change notices: to a group's conversation, or to the
//    one-to-one conversation between the system user and a user.
import { z } from 'zod'
import { AdminError } from '../../broker/admin/api.js'
import type { PluginContext } from '../../broker/plugin-api.js'
import { Id } from '../../schemas/identity.js'
import { MAX_BODY_CHARS } from '../../schemas/protocol.js'
import type { GroupsApi } from '../groups/index.js'
import { envelopeFor } from './envelope.js'
import { CONVERSATION_SYNTAX, conversationKeyOf, formatConversationName, nameOfKey, parseConversationName } from './conversation-name.js'
import { dmKey, groupKey, type ConversationKey, type MessageStore, type StoredMessage } from './store.js'

const AdminMessage = z.object({
  id: z.string(),
  seq: z.number().int(),
  from: z.object({ user: z.string(), device: z.string() }),
  cmid: z.string(),
  type: z.enum(['text', 'media', 'edit', 'delete', 'system']),
  body: z.string().optional().describe('absent when empty or deleted; ciphertext when e2e'),
  media: z.record(z.string(), z.unknown()).optional(),
  ref: z.string().optional(),
  notice: z.record(z.string(), z.unknown()).optional(),
  deleted: z.boolean().optional(),
  replyTo: z.string().optional(),
  e2e: z.boolean(),
  ts: z.number().int()
})

/** The envelope without the conversation (the history names it once). */
const toAdmin = (m: StoredMessage): z.input<typeof AdminMessage> => {
  const { conversation: _conversation, ...fields } = envelopeFor(m, m.sender.user)
  return fields
}

export interface MessagesAdminDeps {
  store(): Promise<MessageStore>
  groups: GroupsApi
  maxPage: number
  /** Stores and delivers a notice from the system user; resolves with the stored message and its recipients. */
  notify(key: ConversationKey, text: string, recipients: () => Promise<readonly string[]>, listedFor: readonly string[]): Promise<{ message: StoredMessage; recipients: number }>
}

export function registerMessagesAdmin(ctx: PluginContext<unknown>, deps: MessagesAdminDeps): void {
  const system = deps.groups.systemUser
  const groupMustExist = async (id: string) => {
    if (!(await deps.groups.get(id))) throw new AdminError('not_found', `no group ${id}`)
  }

  ctx.admin.route({
    method: 'GET',
    path: '/conversations/:conversation/messages',
    tag: 'messages',
    scope: 'admin',
    summary: "A conversation's stored messages (admin scope: it reads private messages; every read is audited)",
    description: `The conversation is ${CONVERSATION_SYNTAX}. Without before/after: the newest messages. With after: the first messages after that seq. With before: the newest messages before it. Ascending by seq.`,
    params: z.object({
      conversation: z
        .string()
        .describe(CONVERSATION_SYNTAX)
        .transform((text, c) => {
          const parsed = parseConversationName(text)
          if (!parsed.ok) {
            c.addIssue({ code: 'custom', message: parsed.error })
            return z.NEVER
          }
          return parsed.name
        })
    }),
    query: z
      .object({
        before: z.coerce.number().int().min(1).optional().describe('only messages with a lower seq'),
        after: z.coerce.number().int().min(0).optional().describe('only messages with a higher seq (paging forward)'),
        limit: z.coerce.number().int().min(1).max(100_000).optional().describe(`default ${Math.min(50, deps.maxPage)}; capped at messages.maxSyncPage (${deps.maxPage})`)
      })
      .strict(),
    response: z.object({
      conversation: z.string(),
      lastSeq: z.number().int().describe('the highest seq of the conversation (0: empty)'),
      messages: z.array(AdminMessage),
      hasMore: z.boolean().describe('with after: newer ones follow in the range; otherwise: older ones exist')
    }),
    handler: async ({ params, query, caller }) => {
      const name = params.conversation
      if (name.kind === 'group') await groupMustExist(name.id)
      const key = conversationKeyOf(name)
      const s = await deps.store()
      const limit = Math.min(query.limit ?? 50, deps.maxPage)
      const before = query.before ?? Number.MAX_SAFE_INTEGER
      let page: StoredMessage[]
      let hasMore: boolean
      if (query.after !== undefined) {
        const read = (await s.after(key, query.after, limit + 1)).filter((m) => m.seq < before)
        page = read.slice(0, limit)
        hasMore = read.length > limit
      } else {
        const read = await s.before(key, before, limit + 1)
        page = read.slice(-limit)
        hasMore = read.length > limit
      }
      const conversation = formatConversationName(name)
      ctx.log.info(
        {
          audit: {
            key: caller.id,
            keyName: caller.name,
            action: 'GET /conversations/:conversation/messages',
            conversation,
            ...query,
            returned: page.length
          }
        },
        'admin audit'
      )
      return { conversation, lastSeq: await s.lastSeq(key), messages: page.map(toAdmin), hasMore }
    }
  })

  ctx.admin.route({
    method: 'POST',
    path: '/messages/notices',
    tag: 'messages',
    scope: 'operator',
    status: 201,
    summary: "Send a system notice to a user's devices or to a group's members; stored in the conversation like any message",
    description: `A message of type "system" with a body, from the system user (groups.systemUser, device "server"). To a user: in the one-to-one conversation dm:<systemUser>:<user>, delivered at QoS 1. To a group: in the group's conversation, delivered at QoS 0 to every member, like the group-change notices.`,
    body: z
      .object({
        user: Id.optional(),
        group: Id.optional(),
        text: z
          .string()
          .min(1)
          .max(MAX_BODY_CHARS)
          .refine((t) => t.trim().length > 0, { error: 'expected some text' })
      })
      .strict()
      .refine((b) => (b.user === undefined) !== (b.group === undefined), { error: 'give exactly one of user or group' }),
    response: z.object({
      conversation: z.string(),
      id: z.string(),
      seq: z.number().int(),
      ts: z.number().int(),
      recipients: z.number().int().describe('users it was published to')
    }),
    handler: async ({ body, audit }) => {
      let sent: { message: StoredMessage; recipients: number }
      if (body.group !== undefined) {
        const group = body.group
        await groupMustExist(group)
        sent = await deps.notify(groupKey(group), body.text, () => deps.groups.members(group), [])
      } else {
        const user = body.user!
        if (user === system) throw new AdminError('invalid_request', `${system} is the system user itself (groups.systemUser)`)
        sent = await deps.notify(dmKey(system, user), body.text, async () => [user], [user])
      }
      const conversation = nameOfKey(sent.message.conversation)
      audit({ conversation, id: sent.message.id, seq: sent.message.seq, recipients: sent.recipients })
      return { conversation, id: sent.message.id, seq: sent.message.seq, ts: sent.message.ts, recipients: sent.recipients }
    }
  })
}
