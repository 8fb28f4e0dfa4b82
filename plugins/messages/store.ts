// The message store: one interface, an embedded implementation (SQLite in the data directory) and
// a MongoDB one, held to the same contract (test/contract.ts). The store assigns each message its
// per-conversation sequence number and makes a retried send idempotent by (sender, cmid).
import { randomFillSync } from 'node:crypto'
import type { MediaRef, MessageType, Notice } from '../../schemas/protocol.js'

/** A conversation as stored: `dm:<userA>:<userB>` (the two users sorted) or `g:<groupId>`. */
export type ConversationKey = string

export function dmKey(a: string, b: string): ConversationKey {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`
}

export function groupKey(groupId: string): ConversationKey {
  return `g:${groupId}`
}

export interface NewMessage {
  conversation: ConversationKey
  sender: { user: string; device: string }
  cmid: string
  type: MessageType
  /** text and edit: the text; media: the caption; else empty. */
  body: string
  media?: MediaRef | undefined
  /** edit and delete: the server id of the original. */
  ref?: string | undefined
  /** system: what changed. */
  notice?: Notice | undefined
  replyTo?: string | undefined
  e2e: boolean
  /** Server time, epoch ms. */
  ts: number
}

export interface StoredMessage extends NewMessage {
  /** Server message id: time-ordered, unique. */
  id: string
  /** Per-conversation sequence number, from 1, without gaps. */
  seq: number
  /** Deleted for everyone: body and media are gone. */
  deleted?: boolean
}

export interface AppendResult {
  message: StoredMessage
  /** True when (sender, cmid) was already stored: nothing new was written. */
  duplicate: boolean
}

export interface MessageStore {
  /** Creates tables, collections and indexes. */
  init(): Promise<void>
  /**
   * Stores new messages, in order, assigning sequence numbers. A message whose (sender.user, cmid)
   * is already stored is not stored again: its result is the stored one with duplicate: true.
   * Rejects when nothing could be stored; then no message of the batch is visible.
   */
  append(batch: readonly NewMessage[]): Promise<AppendResult[]>
  /** Messages of a conversation with seq > afterSeq, ascending, at most `limit`. */
  after(conversation: ConversationKey, afterSeq: number, limit: number): Promise<StoredMessage[]>
  /** Messages of a conversation with seq < beforeSeq, ascending, the `limit` closest to beforeSeq. */
  before(conversation: ConversationKey, beforeSeq: number, limit: number): Promise<StoredMessage[]>
  /** The highest seq of a conversation (0 when empty). */
  lastSeq(conversation: ConversationKey): Promise<number>
  /** One message of a conversation by server id. */
  get(conversation: ConversationKey, id: string): Promise<StoredMessage | undefined>
  /** A sender's stored message by its client message id (what a retry of that send would get). */
  findSent(user: string, cmid: string): Promise<StoredMessage | undefined>
  /**
   * Deletes a message's content for everyone (body and media), and the text of its edits, keeping
   * their places and ids. Idempotent.
   */
  redact(conversation: ConversationKey, id: string): Promise<void>
  close(): Promise<void>
}

// Random bytes drawn 4 KiB at a time: one call per message cost 5% of the broker's CPU in the
// stored-chat benchmark (each randomBytes call goes to OpenSSL); the bytes are the same CSPRNG's.
const RANDOM_POOL = Buffer.alloc(4096)
let randomOffset = RANDOM_POOL.length

/** A server message id: 9 base-36 characters of time (sorts by time) and 16 hex characters of randomness. */
export function newMessageId(ts: number): string {
  if (randomOffset + 8 > RANDOM_POOL.length) {
    randomFillSync(RANDOM_POOL)
    randomOffset = 0
  }
  const random = RANDOM_POOL.toString('hex', randomOffset, randomOffset + 8)
  randomOffset += 8
  return `${ts.toString(36).padStart(9, '0')}${random}`
}
