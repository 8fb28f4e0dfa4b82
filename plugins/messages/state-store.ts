// Per-user conversation state, kept apart from the messages themselves:
//  - which one-to-one conversations a user has (for the conversation list) and when they last moved;
//  - how far each user has received (delivered) and read each conversation: markers only move
//    forward, and reading also counts as receiving;
//  - each user's privacy choices (whether they share read receipts);
//  - each device's sync cursor: how far, per conversation, the device has confirmed it has every
//    message (messages.pull answers "everything since my cursor" across all conversations).
// Group conversations are listed from the groups plugin; their markers are kept here too.
import type Database from 'better-sqlite3'
import type { Collection, Db } from 'mongodb'
import { SqliteBacked, upsertRetrying } from '../shared/stores.js'
import { mapLimited } from './pull.js'
import type { ConversationKey } from './store.js'

export interface ConversationState {
  user: string
  conversation: ConversationKey
  /** Highest seq this user has read (0: nothing). */
  readSeq: number
  /** Highest seq one of this user's devices has received (at least readSeq). */
  deliveredSeq: number
  /** Last activity, epoch ms (orders the conversation list). */
  ts: number
}

export type Marker = 'read' | 'delivered'

/** A marker before and after a move; it moved when after > before. */
export interface Moved {
  before: number
  after: number
}

export interface MarkerMove {
  user: string
  conversation: ConversationKey
  marker: Marker
  seq: number
}

export interface Privacy {
  /** Share read receipts (and, reciprocally, see those of others in one-to-one chats). */
  readReceipts: boolean
}
export const DEFAULT_PRIVACY: Privacy = { readReceipts: true }

export interface StateStore {
  init(): Promise<void>
  /** Records activity in a conversation for these users (creating their rows). */
  touch(users: readonly string[], conversation: ConversationKey, ts: number): Promise<void>
  /** Several touch()es at once (embedded: one transaction; MongoDB: one bulk write). */
  touchMany(activity: ReadonlyArray<{ users: readonly string[]; conversation: ConversationKey; ts: number }>): Promise<void>
  /** Moves a user's marker forward to `seq` (read also moves delivered); returns the marker before and after. */
  advance(user: string, conversation: ConversationKey, marker: Marker, seq: number): Promise<Moved>
  /** Several advance()s at once (embedded: one transaction); results in the same order. */
  advanceMany(moves: readonly MarkerMove[]): Promise<Moved[]>
  get(user: string, conversation: ConversationKey): Promise<ConversationState | undefined>
  /** A user's conversations with a row, most recent activity first. */
  list(user: string, limit: number): Promise<ConversationState[]>
  /** Every user's markers in one conversation (for group receipt counts). */
  markers(conversation: ConversationKey): Promise<ConversationState[]>
  /** Privacy settings of these users (the defaults for those who never chose). */
  privacy(users: readonly string[]): Promise<Map<string, Privacy>>
  setPrivacy(user: string, privacy: Privacy): Promise<void>
  /** A device's sync cursor per conversation; undefined when the device never synced. */
  cursors(user: string, device: string): Promise<Map<ConversationKey, number> | undefined>
  /** Moves a device's cursors forward (and records the device as syncing, even with no positions). */
  advanceCursors(user: string, device: string, positions: ReadonlyMap<ConversationKey, number>): Promise<void>
  close(): Promise<void>
}

interface Row {
  user_id: string
  conversation: string
  read_seq: number
  delivered_seq: number
  ts: number
}
const fromRow = (r: Row): ConversationState => ({
  user: r.user_id,
  conversation: r.conversation,
  readSeq: r.read_seq,
  deliveredSeq: Math.max(r.delivered_seq, r.read_seq),
  ts: r.ts
})

/** Marker updates one MongoDB advanceMany runs at once. */
const ADVANCE_CONCURRENCY = 4

/** The cursor row that records a device as syncing (no conversation has an empty key). */
const DEVICE_ROW = ''

const SCHEMA = `
      CREATE TABLE IF NOT EXISTS conversation_state (
        user_id TEXT NOT NULL, conversation TEXT NOT NULL, read_seq INTEGER NOT NULL, ts INTEGER NOT NULL,
        delivered_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, conversation)
      );
      CREATE INDEX IF NOT EXISTS conversation_state_user_ts ON conversation_state (user_id, ts DESC);
      CREATE TABLE IF NOT EXISTS user_privacy (user_id TEXT PRIMARY KEY, read_receipts INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS device_cursor (
        user_id TEXT NOT NULL, device_id TEXT NOT NULL, conversation TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id, conversation)
      );
    `

export class SqliteStateStore extends SqliteBacked implements StateStore {
  constructor(file: string) {
    super(file, SCHEMA)
  }

  protected override migrate(db: Database.Database): void {
    SqliteBacked.addColumnIfMissing(db, 'conversation_state', 'delivered_seq', 'INTEGER NOT NULL DEFAULT 0')
    db.exec('CREATE INDEX IF NOT EXISTS conversation_state_conversation ON conversation_state (conversation)')
  }

  async touch(users: readonly string[], conversation: ConversationKey, ts: number): Promise<void> {
    await this.touchMany([{ users, conversation, ts }])
  }

  async touchMany(activity: ReadonlyArray<{ users: readonly string[]; conversation: ConversationKey; ts: number }>): Promise<void> {
    if (!activity.length) return
    const upsert = this.conn.prepare(
      `INSERT INTO conversation_state (user_id, conversation, read_seq, ts) VALUES (?, ?, 0, ?)
       ON CONFLICT (user_id, conversation) DO UPDATE SET ts = MAX(ts, excluded.ts)`
    )
    this.conn.transaction(() => {
      for (const a of activity) for (const u of a.users) upsert.run(u, a.conversation, a.ts)
    })()
  }

  async advance(user: string, conversation: ConversationKey, marker: Marker, seq: number): Promise<Moved> {
    return (await this.advanceMany([{ user, conversation, marker, seq }]))[0]!
  }

  async advanceMany(moves: readonly MarkerMove[]): Promise<Moved[]> {
    if (!moves.length) return []
    const upsert = this.conn.prepare<[string, string, number, number], { read_seq: number; delivered_seq: number }>(
      `INSERT INTO conversation_state (user_id, conversation, read_seq, delivered_seq, ts) VALUES (?, ?, ?, ?, 0)
       ON CONFLICT (user_id, conversation) DO UPDATE SET
         read_seq = MAX(read_seq, excluded.read_seq), delivered_seq = MAX(delivered_seq, excluded.delivered_seq)
       RETURNING read_seq, delivered_seq`
    )
    // One transaction: two devices moving the same marker at once see distinct before/after pairs,
    // and a batch of moves (PUBACKs of a burst) costs one commit.
    return this.conn.transaction((): Moved[] =>
      moves.map(({ user, conversation, marker, seq }) => {
        const value = (s: Pick<ConversationState, 'readSeq' | 'deliveredSeq'> | undefined) => (s ? (marker === 'read' ? s.readSeq : s.deliveredSeq) : 0)
        const before = value(this.getSync(user, conversation))
        const row = upsert.get(user, conversation, marker === 'read' ? seq : 0, seq)!
        return { before, after: value({ readSeq: row.read_seq, deliveredSeq: Math.max(row.delivered_seq, row.read_seq) }) }
      })
    )()
  }

  private getSync(user: string, conversation: ConversationKey): ConversationState | undefined {
    const row = this.conn.prepare<[string, string], Row>('SELECT * FROM conversation_state WHERE user_id = ? AND conversation = ?').get(user, conversation)
    return row ? fromRow(row) : undefined
  }

  async get(user: string, conversation: ConversationKey): Promise<ConversationState | undefined> {
    return this.getSync(user, conversation)
  }

  async list(user: string, limit: number): Promise<ConversationState[]> {
    return this.conn.prepare<[string, number], Row>('SELECT * FROM conversation_state WHERE user_id = ? ORDER BY ts DESC LIMIT ?').all(user, limit).map(fromRow)
  }

  async markers(conversation: ConversationKey): Promise<ConversationState[]> {
    return this.conn.prepare<[string], Row>('SELECT * FROM conversation_state WHERE conversation = ?').all(conversation).map(fromRow)
  }

  async privacy(users: readonly string[]): Promise<Map<string, Privacy>> {
    const get = this.conn.prepare<[string], { read_receipts: number }>('SELECT read_receipts FROM user_privacy WHERE user_id = ?')
    return new Map(
      users.map((u) => {
        const row = get.get(u)
        return [u, row ? { readReceipts: row.read_receipts === 1 } : { ...DEFAULT_PRIVACY }]
      })
    )
  }

  async setPrivacy(user: string, privacy: Privacy): Promise<void> {
    this.conn
      .prepare('INSERT INTO user_privacy (user_id, read_receipts) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE SET read_receipts = excluded.read_receipts')
      .run(user, privacy.readReceipts ? 1 : 0)
  }

  async cursors(user: string, device: string): Promise<Map<ConversationKey, number> | undefined> {
    const rows = this.conn
      .prepare<[string, string], { conversation: string; seq: number }>('SELECT conversation, seq FROM device_cursor WHERE user_id = ? AND device_id = ?')
      .all(user, device)
    if (!rows.length) return undefined
    return new Map(rows.filter((r) => r.conversation !== DEVICE_ROW).map((r) => [r.conversation, r.seq]))
  }

  async advanceCursors(user: string, device: string, positions: ReadonlyMap<ConversationKey, number>): Promise<void> {
    const upsert = this.conn.prepare(
      `INSERT INTO device_cursor (user_id, device_id, conversation, seq) VALUES (?, ?, ?, ?)
       ON CONFLICT (user_id, device_id, conversation) DO UPDATE SET seq = MAX(seq, excluded.seq)`
    )
    this.conn.transaction(() => {
      upsert.run(user, device, DEVICE_ROW, 0)
      for (const [conversation, seq] of positions) upsert.run(user, device, conversation, seq)
    })()
  }
}

interface Doc {
  _id: string
  user: string
  conversation: string
  readSeq: number
  deliveredSeq?: number
  ts: number
}
const fromDoc = (d: Doc): ConversationState => ({
  user: d.user,
  conversation: d.conversation,
  readSeq: d.readSeq,
  deliveredSeq: Math.max(d.deliveredSeq ?? 0, d.readSeq),
  ts: d.ts
})

interface CursorDoc {
  _id: string
  user: string
  device: string
  conversation: string
  seq: number
}

/**
 * MongoDB: `$max` keeps markers monotonic. On FerretDB an update is not atomic, so two devices of
 * one user marking at the same instant could leave the lower marker, or both see the move; the
 * next mark repairs the marker, and a repeated receipt changes nothing for its reader.
 */
export class MongoStateStore implements StateStore {
  private readonly col: Collection<Doc>
  private readonly privacyCol: Collection<{ _id: string; readReceipts: boolean }>
  private readonly cursorCol: Collection<CursorDoc>
  constructor(db: Db) {
    this.col = db.collection<Doc>('conversation_state')
    this.privacyCol = db.collection('user_privacy')
    this.cursorCol = db.collection<CursorDoc>('device_cursors')
  }

  async init(): Promise<void> {
    await this.col.createIndex({ user: 1, ts: -1 }, { name: 'user_ts' })
    await this.col.createIndex({ conversation: 1 }, { name: 'conversation' })
    await this.cursorCol.createIndex({ user: 1, device: 1 }, { name: 'user_device' })
  }

  private id(...parts: string[]): string {
    return parts.join('\u0000')
  }

  async touch(users: readonly string[], conversation: ConversationKey, ts: number): Promise<void> {
    await this.touchMany([{ users, conversation, ts }])
  }

  async touchMany(activity: ReadonlyArray<{ users: readonly string[]; conversation: ConversationKey; ts: number }>): Promise<void> {
    const ops = activity.flatMap(({ users, conversation, ts }) =>
      users.map((user) => ({
        updateOne: {
          filter: { _id: this.id(user, conversation) },
          update: { $max: { ts }, $setOnInsert: { user, conversation, readSeq: 0, deliveredSeq: 0 } },
          upsert: true
        }
      }))
    )
    if (ops.length) await upsertRetrying(() => this.col.bulkWrite(ops))
  }

  async advance(user: string, conversation: ConversationKey, marker: Marker, seq: number): Promise<Moved> {
    const update =
      marker === 'read'
        ? { $max: { readSeq: seq, deliveredSeq: seq }, $setOnInsert: { user, conversation, ts: 0 } }
        : { $max: { deliveredSeq: seq }, $setOnInsert: { user, conversation, ts: 0, readSeq: 0 } }
    const previous = await upsertRetrying(() => this.col.findOneAndUpdate({ _id: this.id(user, conversation) }, update, { upsert: true, returnDocument: 'before' }))
    const state = previous ? fromDoc(previous) : undefined
    const before = state ? (marker === 'read' ? state.readSeq : state.deliveredSeq) : 0
    return { before, after: Math.max(before, seq) }
  }

  /**
   * One findOneAndUpdate per move, a few at a time: a batch of hundreds at once would take the whole
   * connection pool, queueing the node's message reads (syncs) behind it, and FerretDB deadlocks
   * near 100 concurrent updates across the cluster (NOTES.md). The fault tests caught the first.
   */
  async advanceMany(moves: readonly MarkerMove[]): Promise<Moved[]> {
    return mapLimited(moves, ADVANCE_CONCURRENCY, (m) => this.advance(m.user, m.conversation, m.marker, m.seq))
  }

  async get(user: string, conversation: ConversationKey): Promise<ConversationState | undefined> {
    const doc = await this.col.findOne({ _id: this.id(user, conversation) })
    return doc ? fromDoc(doc) : undefined
  }

  async list(user: string, limit: number): Promise<ConversationState[]> {
    return (await this.col.find({ user }).sort({ ts: -1 }).limit(limit).toArray()).map(fromDoc)
  }

  async markers(conversation: ConversationKey): Promise<ConversationState[]> {
    return (await this.col.find({ conversation }).toArray()).map(fromDoc)
  }

  async privacy(users: readonly string[]): Promise<Map<string, Privacy>> {
    const docs = await this.privacyCol.find({ _id: { $in: [...users] } }).toArray()
    const chosen = new Map(docs.map((d) => [d._id, { readReceipts: d.readReceipts }]))
    return new Map(users.map((u) => [u, chosen.get(u) ?? { ...DEFAULT_PRIVACY }]))
  }

  async setPrivacy(user: string, privacy: Privacy): Promise<void> {
    await upsertRetrying(() => this.privacyCol.updateOne({ _id: user }, { $set: { readReceipts: privacy.readReceipts } }, { upsert: true }))
  }

  async cursors(user: string, device: string): Promise<Map<ConversationKey, number> | undefined> {
    const docs = await this.cursorCol.find({ user, device }).toArray()
    if (!docs.length) return undefined
    return new Map(docs.filter((d) => d.conversation !== DEVICE_ROW).map((d) => [d.conversation, d.seq]))
  }

  async advanceCursors(user: string, device: string, positions: ReadonlyMap<ConversationKey, number>): Promise<void> {
    await upsertRetrying(() => this.cursorCol.bulkWrite(
      [[DEVICE_ROW, 0] as const, ...positions].map(([conversation, seq]) => ({
        updateOne: {
          filter: { _id: this.id(user, device, conversation) },
          update: { $max: { seq }, $setOnInsert: { user, device, conversation } },
          upsert: true
        }
      }))
    ))
  }

  async close(): Promise<void> {}
}
