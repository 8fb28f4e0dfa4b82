// A stored message as a device receives it (its envelope): the conversation named from the
// reader's side, absent optional fields left out.
import type { ConversationRef, MessageEnvelope } from '../../schemas/protocol.js'
import type { ConversationKey, StoredMessage } from './store.js'

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
    ...(m.body !== '' ? { body: m.body } : {}),
    ...(m.media ? { media: m.media } : {}),
    ...(m.ref !== undefined ? { ref: m.ref } : {}),
    ...(m.notice ? { notice: m.notice } : {}),
    ...(m.deleted ? { deleted: true } : {}),
    ...(m.replyTo !== undefined ? { replyTo: m.replyTo } : {}),
    e2e: m.e2e,
    ts: m.ts
  }
}
