// parley admin messages history | send
// history reads private messages: its route needs an admin key, and every read is audited.
// send stores and delivers a system notice from the system user (groups.systemUser). Routes:
// plugins/messages/admin.ts.
import type { Command } from 'commander'
import { CONVERSATION_SYNTAX, parseConversationName } from '../../plugins/messages/conversation-name.js'
import { ADMIN_EXIT, CliError } from './client.js'
import { positiveInt } from './groups.js'
import { action, requireId, show, withCommon } from './kit.js'
import { table, when } from './output.js'

interface AdminMessage {
  id: string
  seq: number
  from: { user: string; device: string }
  cmid: string
  type: 'text' | 'media' | 'edit' | 'delete' | 'system'
  body?: string
  media?: { mime?: string; size?: number; name?: string }
  ref?: string
  notice?: { change?: string; by?: string; users?: string[]; name?: string }
  deleted?: boolean
  e2e: boolean
  ts: number
}
interface History {
  conversation: string
  lastSeq: number
  messages: AdminMessage[]
  hasMore: boolean
}

const PREVIEW = 60

const truncate = (text: string) => {
  const flat = text.replace(/\s+/g, ' ').trim()
  return flat.length > PREVIEW ? `${flat.slice(0, PREVIEW - 1)}…` : flat
}

const size = (bytes: number | undefined) =>
  bytes === undefined ? '' : bytes < 1024 ? `${bytes} B` : bytes < 1024 * 1024 ? `${Math.round(bytes / 1024)} KB` : `${(bytes / 1024 / 1024).toFixed(1)} MB`

/** One line saying what a message is; never ciphertext (e2e bodies are shown as [encrypted]). */
export function preview(m: AdminMessage): string {
  if (m.deleted) return '[deleted]'
  const text = m.body === undefined ? '' : m.e2e ? '[encrypted]' : m.body
  switch (m.type) {
    case 'system': {
      if (!m.notice) return truncate(`[notice] ${text}`)
      const n = m.notice
      const what = n.change === 'renamed' ? `renamed to "${n.name ?? ''}"` : n.change === 'created' ? `created "${n.name ?? ''}"` : `${n.change ?? '?'} ${(n.users ?? []).join(', ')}`
      return truncate(`[group] ${what} by ${n.by ?? '?'}`)
    }
    case 'media':
      return truncate(`[${[m.media?.mime, size(m.media?.size)].filter(Boolean).join(' ')}] ${text}`)
    case 'edit':
      return truncate(`[edit of ${m.ref ?? '?'}] ${text}`)
    case 'delete':
      return `[delete of ${m.ref ?? '?'}]`
    default:
      return m.e2e ? '[encrypted]' : truncate(text)
  }
}

/** A seq option, checked before any request. */
function seqOption(option: string, value: string | undefined, min: number): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min) throw new CliError(ADMIN_EXIT.usage, `${option} "${value}": expected a sequence number (an integer ≥ ${min})`)
  return n
}

export function registerMessagesCommands(admin: Command): void {
  const messages = admin.command('messages').description("conversations' stored messages, and system notices to users and groups")

  withCommon(messages.command('history'))
    .description(`a conversation's stored messages, oldest first (needs an admin key: it reads private messages; every read is audited)`)
    .argument('<conversation>', CONVERSATION_SYNTAX)
    .option('--before <seq>', 'only messages before this seq (page back: the first seq of the previous page)')
    .option('--after <seq>', 'only messages after this seq (page forward)')
    .option('--limit <n>', 'at most this many (default 50; the node caps it at messages.maxSyncPage)')
    .addHelpText(
      'after',
      `
Conversations: dm:<userA>:<userB> is the one-to-one conversation of two users (either order);
group:<groupId> a group's. Notices sent with \`messages send --to-user U\` are in dm:<systemUser>:U
(groups.systemUser, default parley).
Without --before/--after: the newest messages. The table previews bodies (e2e ones as [encrypted]);
--json prints every field.`
    )
    .action(
      action('messages history', async (ctx, conversation: string, options: { before?: string; after?: string; limit?: string }) => {
        const parsed = parseConversationName(conversation)
        if (!parsed.ok) throw new CliError(ADMIN_EXIT.usage, parsed.error)
        const before = seqOption('--before', options.before, 1)
        const after = seqOption('--after', options.after, 0)
        const limit = options.limit === undefined ? undefined : positiveInt('--limit', options.limit, 1000)
        const history = await ctx.client.request<History>('GET', `/conversations/${encodeURIComponent(conversation)}/messages`, { query: { before, after, limit } })
        show(ctx, history, () =>
          history.messages.length
            ? table(
                ['seq', 'time', 'sender', 'type', 'body'],
                history.messages.map((m) => [m.seq, when(m.ts), `${m.from.user}:${m.from.device}`, m.type, preview(m)])
              )
            : `no messages in ${history.conversation}${history.lastSeq ? ` in that range (last seq ${history.lastSeq})` : ''}`
        )
        if (history.hasMore && !ctx.json && history.messages.length) {
          ctx.note(after !== undefined ? `more: --after ${history.messages.at(-1)!.seq}` : `older: --before ${history.messages[0]!.seq}`)
        }
      })
    )

  withCommon(messages.command('send'))
    .description('send a system notice from the service to a user\'s devices or to a group\'s members; it is stored in the conversation like any message')
    .option('--to-user <user>', 'a user: the notice goes to dm:<systemUser>:<user>')
    .option('--to-group <group>', "a group: the notice goes to the group's conversation, to every member")
    .requiredOption('-t, --text <text>', 'the notice (1-16384 characters)')
    .action(
      action('messages send', async (ctx, options: { toUser?: string; toGroup?: string; text: string }) => {
        if ((options.toUser === undefined) === (options.toGroup === undefined)) throw new CliError(ADMIN_EXIT.usage, 'give exactly one of --to-user or --to-group')
        if (options.toUser !== undefined) requireId('--to-user', options.toUser)
        if (options.toGroup !== undefined) requireId('--to-group', options.toGroup)
        if (!options.text.trim() || options.text.length > 16_384) throw new CliError(ADMIN_EXIT.usage, '--text: expected 1-16384 characters')
        const sent = await ctx.client.request<{ conversation: string; id: string; seq: number; ts: number; recipients: number }>('POST', '/messages/notices', {
          body: { ...(options.toUser !== undefined ? { user: options.toUser } : { group: options.toGroup }), text: options.text }
        })
        show(ctx, sent, () => `notice ${sent.id} stored as seq ${sent.seq} of ${sent.conversation}, sent to ${sent.recipients} user${sent.recipients === 1 ? '' : 's'}`)
      })
    )
}
