// The embedded message store: SQLite (better-sqlite3) in the node's data directory. One node owns
// the file, so a transaction makes sequence allocation and the idempotency check atomic, and a
// whole batch is one transaction (one fsync) however many messages it holds.
import type Database from 'better-sqlite3'
import type { MessageType } from '../../schemas/protocol.js'
import { SqliteBacked } from '../shared/stores.js'
import { newMessageId, type AppendResult, type ConversationKey, type MessageStore, type NewMessage, type StoredMessage } from './store.js'

interface Row {
  id: string
  conversation: string
  seq: number
  sender_user: string
  sender_device: string
  cmid: string
  type: MessageType
  body: string
  reply_to: string | null
  e2e: number
  ts: number
  /** JSON of what only some kinds have: media, ref, notice, deleted. */
  extra: string | null
}

type Extra = Pick<StoredMessage, 'media' | 'ref' | 'notice' | 'deleted'>

function toMessage(r: Row): StoredMessage {
  const extra = r.extra ? (JSON.parse(r.extra) as Extra) : {}
  return {
    ...extra,
    id: r.id,
    conversation: r.conversation,
    seq: r.seq,
    sender: { user: r.sender_user, device: r.sender_device },
    cmid: r.cmid,
    type: r.type,
    body: r.body,
    ...(r.reply_to !== null ? { replyTo: r.reply_to } : {}),
    e2e: r.e2e === 1,
    ts: r.ts
  }
}

const SCHEMA = `
      CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        conversation TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sender_user TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        cmid TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL,
        reply_to TEXT,
        e2e INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        extra TEXT
      );
      CREATE UNIQUE INDEX IF NOT EXISTS messages_conversation_seq ON messages (conversation, seq);
      CREATE UNIQUE INDEX IF NOT EXISTS messages_sender_cmid ON messages (sender_user, cmid);
    `

function extraOf(m: Extra): string | null {
  const extra: Extra = {}
  if (m.media) extra.media = m.media
  if (m.ref !== undefined) extra.ref = m.ref
  if (m.notice) extra.notice = m.notice
  if (m.deleted) extra.deleted = true
  return Object.keys(extra).length ? JSON.stringify(extra) : null
}

export class SqliteMessageStore extends SqliteBacked implements MessageStore {
  constructor(file: string) {
    super(file, SCHEMA)
  }

  protected override migrate(db: Database.Database): void {
    SqliteBacked.addColumnIfMissing(db, 'messages', 'extra', 'TEXT')
  }

  async append(batch: readonly NewMessage[]): Promise<AppendResult[]> {
    const db = this.conn
    const existing = db.prepare<[string, string], Row>('SELECT * FROM messages WHERE sender_user = ? AND cmid = ?')
    const last = db.prepare<[string], { seq: number | null }>('SELECT MAX(seq) AS seq FROM messages WHERE conversation = ?')
    const insert = db.prepare(
      `INSERT INTO messages (id, conversation, seq, sender_user, sender_device, cmid, type, body, reply_to, e2e, ts, extra)
       VALUES (@id, @conversation, @seq, @sender_user, @sender_device, @cmid, @type, @body, @reply_to, @e2e, @ts, @extra)`
    )
    const run = db.transaction((messages: readonly NewMessage[]): AppendResult[] => {
      const lastSeq = new Map<string, number>()
      return messages.map((m) => {
        const found = existing.get(m.sender.user, m.cmid)
        if (found) return { message: toMessage(found), duplicate: true }
        const seq = (lastSeq.get(m.conversation) ?? last.get(m.conversation)?.seq ?? 0) + 1
        lastSeq.set(m.conversation, seq)
        const stored: StoredMessage = { ...m, id: newMessageId(m.ts), seq }
        insert.run({
          id: stored.id,
          conversation: m.conversation,
          seq,
          sender_user: m.sender.user,
          sender_device: m.sender.device,
          cmid: m.cmid,
          type: m.type,
          body: m.body,
          reply_to: m.replyTo ?? null,
          e2e: m.e2e ? 1 : 0,
          ts: m.ts,
          extra: extraOf(m)
        })
        return { message: stored, duplicate: false }
      })
    })
    return run(batch)
  }

  async after(conversation: ConversationKey, afterSeq: number, limit: number): Promise<StoredMessage[]> {
    return this.conn
      .prepare<[string, number, number], Row>('SELECT * FROM messages WHERE conversation = ? AND seq > ? ORDER BY seq ASC LIMIT ?')
      .all(conversation, afterSeq, limit)
      .map(toMessage)
  }

  async before(conversation: ConversationKey, beforeSeq: number, limit: number): Promise<StoredMessage[]> {
    return this.conn
      .prepare<[string, number, number], Row>('SELECT * FROM messages WHERE conversation = ? AND seq < ? ORDER BY seq DESC LIMIT ?')
      .all(conversation, beforeSeq, limit)
      .map(toMessage)
      .reverse()
  }

  async lastSeq(conversation: ConversationKey): Promise<number> {
    return this.conn.prepare<[string], { seq: number | null }>('SELECT MAX(seq) AS seq FROM messages WHERE conversation = ?').get(conversation)?.seq ?? 0
  }

  async get(conversation: ConversationKey, id: string): Promise<StoredMessage | undefined> {
    const row = this.conn.prepare<[string, string], Row>('SELECT * FROM messages WHERE id = ? AND conversation = ?').get(id, conversation)
    return row ? toMessage(row) : undefined
  }

  async findSent(user: string, cmid: string): Promise<StoredMessage | undefined> {
    const row = this.conn.prepare<[string, string], Row>('SELECT * FROM messages WHERE sender_user = ? AND cmid = ?').get(user, cmid)
    return row ? toMessage(row) : undefined
  }

  async redact(conversation: ConversationKey, id: string): Promise<void> {
    const edits = this.conn
      .prepare<[string, string], Row>("SELECT * FROM messages WHERE conversation = ? AND type = 'edit' AND json_extract(extra, '$.ref') = ?")
      .all(conversation, id)
      .map(toMessage)
    const found = await this.get(conversation, id)
    const update = this.conn.prepare("UPDATE messages SET body = '', extra = ? WHERE id = ?")
    this.conn.transaction(() => {
      for (const m of [...(found ? [found] : []), ...edits]) {
        const { media: _media, ...kept } = m
        update.run(extraOf({ ...kept, deleted: true }), m.id)
      }
    })()
  }

}
