// Per-user conversation state: which one-to-one conversations a user has (for the conversation
// list) and how far each user has read. Markers only move forward. Group conversations come from
// the groups plugin; their read markers are kept here too.
import type { Collection, Db } from 'mongodb'
import { SqliteBacked } from '../shared/stores.js'
import type { ConversationKey } from './store.js'

export interface ConversationState {
  user: string
  conversation: ConversationKey
  /** Highest seq this user has read (0: nothing). */
  readSeq: number
  /** Last activity, epoch ms (orders the conversation list). */
  ts: number
}

export interface StateStore {
  init(): Promise<void>
  /** Records activity in a conversation for these users (creating their rows). */
  touch(users: readonly string[], conversation: ConversationKey, ts: number): Promise<void>
  /** Moves a user's read marker forward to `seq`; returns the marker after the call. */
  markRead(user: string, conversation: ConversationKey, seq: number): Promise<number>
  get(user: string, conversation: ConversationKey): Promise<ConversationState | undefined>
  /** A user's conversations with a row, most recent activity first. */
  list(user: string, limit: number): Promise<ConversationState[]>
  close(): Promise<void>
}

interface Row {
  user_id: string
  conversation: string
  read_seq: number
  ts: number
}
const fromRow = (r: Row): ConversationState => ({ user: r.user_id, conversation: r.conversation, readSeq: r.read_seq, ts: r.ts })

const SCHEMA = `
      CREATE TABLE IF NOT EXISTS conversation_state (
        user_id TEXT NOT NULL, conversation TEXT NOT NULL, read_seq INTEGER NOT NULL, ts INTEGER NOT NULL,
        PRIMARY KEY (user_id, conversation)
      );
      CREATE INDEX IF NOT EXISTS conversation_state_user_ts ON conversation_state (user_id, ts DESC);
    `

export class SqliteStateStore extends SqliteBacked implements StateStore {
  constructor(file: string) {
    super(file, SCHEMA)
  }

  async touch(users: readonly string[], conversation: ConversationKey, ts: number): Promise<void> {
    const upsert = this.conn.prepare(
      `INSERT INTO conversation_state (user_id, conversation, read_seq, ts) VALUES (?, ?, 0, ?)
       ON CONFLICT (user_id, conversation) DO UPDATE SET ts = MAX(ts, excluded.ts)`
    )
    this.conn.transaction(() => users.forEach((u) => upsert.run(u, conversation, ts)))()
  }

  async markRead(user: string, conversation: ConversationKey, seq: number): Promise<number> {
    this.conn
      .prepare(
        `INSERT INTO conversation_state (user_id, conversation, read_seq, ts) VALUES (?, ?, ?, 0)
         ON CONFLICT (user_id, conversation) DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)`
      )
      .run(user, conversation, seq)
    return (await this.get(user, conversation))!.readSeq
  }

  async get(user: string, conversation: ConversationKey): Promise<ConversationState | undefined> {
    const row = this.conn.prepare<[string, string], Row>('SELECT * FROM conversation_state WHERE user_id = ? AND conversation = ?').get(user, conversation)
    return row ? fromRow(row) : undefined
  }

  async list(user: string, limit: number): Promise<ConversationState[]> {
    return this.conn.prepare<[string, number], Row>('SELECT * FROM conversation_state WHERE user_id = ? ORDER BY ts DESC LIMIT ?').all(user, limit).map(fromRow)
  }

}

interface Doc {
  _id: string
  user: string
  conversation: string
  readSeq: number
  ts: number
}

/**
 * MongoDB: `$max` keeps markers monotonic. On FerretDB an update is not atomic, so two devices of
 * one user marking at the same instant could leave the lower marker; the next mark repairs it.
 */
export class MongoStateStore implements StateStore {
  private readonly col: Collection<Doc>
  constructor(db: Db) {
    this.col = db.collection<Doc>('conversation_state')
  }

  async init(): Promise<void> {
    await this.col.createIndex({ user: 1, ts: -1 }, { name: 'user_ts' })
  }

  private id(user: string, conversation: string): string {
    return `${user}\u0000${conversation}`
  }

  async touch(users: readonly string[], conversation: ConversationKey, ts: number): Promise<void> {
    await this.col.bulkWrite(
      users.map((user) => ({
        updateOne: {
          filter: { _id: this.id(user, conversation) },
          update: { $max: { ts }, $setOnInsert: { user, conversation, readSeq: 0 } },
          upsert: true
        }
      }))
    )
  }

  async markRead(user: string, conversation: ConversationKey, seq: number): Promise<number> {
    await this.col.updateOne(
      { _id: this.id(user, conversation) },
      { $max: { readSeq: seq }, $setOnInsert: { user, conversation, ts: 0 } },
      { upsert: true }
    )
    return (await this.get(user, conversation))!.readSeq
  }

  async get(user: string, conversation: ConversationKey): Promise<ConversationState | undefined> {
    const doc = await this.col.findOne({ _id: this.id(user, conversation) })
    return doc ? { user: doc.user, conversation: doc.conversation, readSeq: doc.readSeq, ts: doc.ts } : undefined
  }

  async list(user: string, limit: number): Promise<ConversationState[]> {
    const docs = await this.col.find({ user }).sort({ ts: -1 }).limit(limit).toArray()
    return docs.map((d) => ({ user: d.user, conversation: d.conversation, readSeq: d.readSeq, ts: d.ts }))
  }

  async close(): Promise<void> {}
}
