// How operators name a conversation (parley admin messages, the admin API): `dm:<userA>:<userB>`
// (either order) or `group:<groupId>`. Ids never contain ':', so the name splits unambiguously.
// Kept free of heavy imports: the CLI checks names with it before sending any request.
import { ID_PATTERN } from '../../schemas/identity.js'
import { dmKey, groupKey, type ConversationKey } from './store.js'

export type ConversationName = { kind: 'dm'; users: [string, string] } | { kind: 'group'; id: string }

export const CONVERSATION_SYNTAX = 'dm:<userA>:<userB> or group:<groupId>'

/** The conversation a name means, or a reason it is not one. */
export function parseConversationName(text: string): { ok: true; name: ConversationName } | { ok: false; error: string } {
  const parts = text.split(':')
  const bad = (why: string) => ({ ok: false as const, error: `"${text}": ${why}; expected ${CONVERSATION_SYNTAX}` })
  if (parts[0] === 'dm') {
    if (parts.length !== 3) return bad('a one-to-one conversation names two users')
    const [, a, b] = parts as [string, string, string]
    if (!ID_PATTERN.test(a) || !ID_PATTERN.test(b)) return bad('user ids are 1-64 characters of A-Z a-z 0-9 _ -')
    return { ok: true, name: { kind: 'dm', users: a <= b ? [a, b] : [b, a] } }
  }
  if (parts[0] === 'group') {
    if (parts.length !== 2 || !ID_PATTERN.test(parts[1]!)) return bad('a group id is 1-64 characters of A-Z a-z 0-9 _ -')
    return { ok: true, name: { kind: 'group', id: parts[1]! } }
  }
  return bad('unknown kind')
}

/** The canonical spelling (a dm's users sorted). */
export function formatConversationName(name: ConversationName): string {
  return name.kind === 'dm' ? `dm:${name.users[0]}:${name.users[1]}` : `group:${name.id}`
}

export function conversationKeyOf(name: ConversationName): ConversationKey {
  return name.kind === 'dm' ? dmKey(name.users[0], name.users[1]) : groupKey(name.id)
}

/** The operator's name of a stored conversation key. */
export function nameOfKey(key: ConversationKey): string {
  return key.startsWith('g:') ? `group:${key.slice(2)}` : key
}
