// Media object ids. A MediaRef id must be 1-128 of [A-Za-z0-9._-]; ours are
//   <conversation tag>.<random>
// where the tag is the first 16 hex digits of SHA-256(conversation key) (every object of a
// conversation shares it, so an operator can find them by prefix) and the random part is 128 bits,
// base64url (22 characters). The scope in the id is a convenience: what the server enforces is the
// record kept for each id (conversation, uploader, declared type and size).
import { createHash, randomBytes } from 'node:crypto'

export const MEDIA_ID = /^[0-9a-f]{16}\.[A-Za-z0-9_-]{22}$/

/** The conversation part of a media id. */
export function conversationTag(conversation: string): string {
  return createHash('sha256').update(conversation).digest('hex').slice(0, 16)
}

export function newMediaId(conversation: string): string {
  return `${conversationTag(conversation)}.${randomBytes(16).toString('base64url')}`
}

/** True for ids this plugin hands out: safe as a file name and an object key. */
export function isMediaId(id: string): boolean {
  return MEDIA_ID.test(id)
}
