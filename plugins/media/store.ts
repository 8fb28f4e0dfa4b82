// Upload records: for each media id the server handed out, which conversation it belongs to, who
// may upload it, the type and size declared, and which message (the uploader's cmid) references
// it. The record is what a media message is checked against, what decides who may download, and
// what the clean-up walks. Embedded: SQLite (media.db); MongoDB when configured. One contract
// (test/store-contract.test.ts) for both.
import type { Collection, Db } from 'mongodb'
import { SqliteBacked } from '../shared/stores.js'
import type { MediaKind } from './config.js'

export interface MediaRecord {
  id: string
  /** The conversation key (`dm:<a>:<b>` or `g:<groupId>`). */
  conversation: string
  /** The user who asked for the upload; only they may send it. */
  uploader: string
  kind: MediaKind
  /** Lower case. */
  mime: string
  size: number
  /** Lower-case hex, when declared. */
  sha256?: string | undefined
  /** Epoch ms: when the upload URL was handed out. */
  createdAt: number
  /** Set when a message references the object: the uploader's client message id and when. */
  ref?: { cmid: string; at: number } | undefined
}

export interface MediaStore {
  init(): Promise<void>
  /** Adds a record; its id is new. */
  create(record: MediaRecord): Promise<void>
  get(id: string): Promise<MediaRecord | undefined>
  /**
   * Marks a record as referenced by the message with this cmid. True when it now is (also when it
   * already was, by the same cmid: a retried send); false when another message references it or
   * the record is gone.
   */
  reference(id: string, cmid: string, at: number): Promise<boolean>
  /** Deletes records. */
  remove(ids: readonly string[]): Promise<void>
  /** Deletes the records among `ids` that no message references; returns the ids deleted. */
  removeUnreferenced(ids: readonly string[]): Promise<string[]>
  /** Records no message references, created before `before`, oldest first. */
  orphans(before: number, limit: number): Promise<MediaRecord[]>
  /** Records created before `before` (referenced or not), oldest first. */
  olderThan(before: number, limit: number): Promise<MediaRecord[]>
  /** How many records of this uploader no message references, created at or after `since`. */
  pending(uploader: string, since: number): Promise<number>
  /** Which of these ids have a record. */
  existing(ids: readonly string[]): Promise<Set<string>>
  close(): Promise<void>
}

interface Row {
  id: string
  conversation: string
  uploader: string
  kind: string
  mime: string
  size: number
  sha256: string | null
  created_at: number
  ref_cmid: string | null
  ref_at: number | null
}

const fromRow = (r: Row): MediaRecord => ({
  id: r.id,
  conversation: r.conversation,
  uploader: r.uploader,
  kind: r.kind as MediaKind,
  mime: r.mime,
  size: r.size,
  ...(r.sha256 ? { sha256: r.sha256 } : {}),
  createdAt: r.created_at,
  ...(r.ref_cmid !== null ? { ref: { cmid: r.ref_cmid, at: r.ref_at ?? 0 } } : {})
})

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS media (
    id TEXT PRIMARY KEY, conversation TEXT NOT NULL, uploader TEXT NOT NULL, kind TEXT NOT NULL,
    mime TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT, created_at INTEGER NOT NULL,
    ref_cmid TEXT, ref_at INTEGER
  );
  CREATE INDEX IF NOT EXISTS media_created ON media (created_at);
  CREATE INDEX IF NOT EXISTS media_uploader ON media (uploader, created_at);
`

export class SqliteMediaStore extends SqliteBacked implements MediaStore {
  constructor(file: string) {
    super(file, SCHEMA)
  }

  async create(r: MediaRecord): Promise<void> {
    this.conn
      .prepare('INSERT INTO media (id, conversation, uploader, kind, mime, size, sha256, created_at, ref_cmid, ref_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(r.id, r.conversation, r.uploader, r.kind, r.mime, r.size, r.sha256 ?? null, r.createdAt, r.ref?.cmid ?? null, r.ref?.at ?? null)
  }

  async get(id: string): Promise<MediaRecord | undefined> {
    const row = this.conn.prepare<[string], Row>('SELECT * FROM media WHERE id = ?').get(id)
    return row ? fromRow(row) : undefined
  }

  async reference(id: string, cmid: string, at: number): Promise<boolean> {
    const changed = this.conn
      .prepare('UPDATE media SET ref_cmid = ?, ref_at = COALESCE(ref_at, ?) WHERE id = ? AND (ref_cmid IS NULL OR ref_cmid = ?)')
      .run(cmid, at, id, cmid).changes
    return changed === 1
  }

  async remove(ids: readonly string[]): Promise<void> {
    const del = this.conn.prepare('DELETE FROM media WHERE id = ?')
    this.conn.transaction(() => ids.forEach((id) => del.run(id)))()
  }

  async removeUnreferenced(ids: readonly string[]): Promise<string[]> {
    const del = this.conn.prepare('DELETE FROM media WHERE id = ? AND ref_cmid IS NULL')
    return this.conn.transaction(() => ids.filter((id) => del.run(id).changes === 1))()
  }

  async orphans(before: number, limit: number): Promise<MediaRecord[]> {
    return this.conn
      .prepare<[number, number], Row>('SELECT * FROM media WHERE ref_cmid IS NULL AND created_at < ? ORDER BY created_at LIMIT ?')
      .all(before, limit)
      .map(fromRow)
  }

  async olderThan(before: number, limit: number): Promise<MediaRecord[]> {
    return this.conn.prepare<[number, number], Row>('SELECT * FROM media WHERE created_at < ? ORDER BY created_at LIMIT ?').all(before, limit).map(fromRow)
  }

  async pending(uploader: string, since: number): Promise<number> {
    return this.conn
      .prepare<[string, number], { n: number }>('SELECT COUNT(*) AS n FROM media WHERE uploader = ? AND created_at >= ? AND ref_cmid IS NULL')
      .get(uploader, since)!.n
  }

  async existing(ids: readonly string[]): Promise<Set<string>> {
    const get = this.conn.prepare<[string], { id: string }>('SELECT id FROM media WHERE id = ?')
    return new Set(ids.filter((id) => get.get(id)))
  }
}

interface Doc {
  _id: string
  conversation: string
  uploader: string
  kind: MediaKind
  mime: string
  size: number
  sha256?: string
  createdAt: number
  /** Explicit, so that "not referenced" is an equality match (no null or $exists semantics). */
  referenced: boolean
  refCmid?: string
  refAt?: number
}

const fromDoc = (d: Doc): MediaRecord => ({
  id: d._id,
  conversation: d.conversation,
  uploader: d.uploader,
  kind: d.kind,
  mime: d.mime,
  size: d.size,
  ...(d.sha256 ? { sha256: d.sha256 } : {}),
  createdAt: d.createdAt,
  ...(d.referenced && d.refCmid !== undefined ? { ref: { cmid: d.refCmid, at: d.refAt ?? 0 } } : {})
})

/**
 * MongoDB. `reference` is one conditional update, atomic on MongoDB. On FerretDB updates are not
 * atomic: two sends racing to reference one upload with different cmids could both pass; only the
 * uploader can race with itself, and the later reference wins the record.
 */
export class MongoMediaStore implements MediaStore {
  private readonly col: Collection<Doc>
  constructor(db: Db) {
    this.col = db.collection<Doc>('media')
  }

  async init(): Promise<void> {
    await this.col.createIndex({ createdAt: 1 }, { name: 'created' })
    await this.col.createIndex({ uploader: 1, createdAt: 1 }, { name: 'uploader_created' })
  }

  async create(r: MediaRecord): Promise<void> {
    await this.col.insertOne({
      _id: r.id,
      conversation: r.conversation,
      uploader: r.uploader,
      kind: r.kind,
      mime: r.mime,
      size: r.size,
      ...(r.sha256 ? { sha256: r.sha256 } : {}),
      createdAt: r.createdAt,
      referenced: Boolean(r.ref),
      ...(r.ref ? { refCmid: r.ref.cmid, refAt: r.ref.at } : {})
    })
  }

  async get(id: string): Promise<MediaRecord | undefined> {
    const doc = await this.col.findOne({ _id: id })
    return doc ? fromDoc(doc) : undefined
  }

  async reference(id: string, cmid: string, at: number): Promise<boolean> {
    const fresh = await this.col.updateOne({ _id: id, referenced: false }, { $set: { referenced: true, refCmid: cmid, refAt: at } })
    if (fresh.matchedCount === 1) return true
    return (await this.col.countDocuments({ _id: id, refCmid: cmid })) === 1
  }

  async remove(ids: readonly string[]): Promise<void> {
    if (ids.length) await this.col.deleteMany({ _id: { $in: [...ids] } })
  }

  async removeUnreferenced(ids: readonly string[]): Promise<string[]> {
    const removed: string[] = []
    for (const id of ids) if ((await this.col.deleteOne({ _id: id, referenced: false })).deletedCount === 1) removed.push(id)
    return removed
  }

  async orphans(before: number, limit: number): Promise<MediaRecord[]> {
    return (await this.col.find({ referenced: false, createdAt: { $lt: before } }).sort({ createdAt: 1 }).limit(limit).toArray()).map(fromDoc)
  }

  async olderThan(before: number, limit: number): Promise<MediaRecord[]> {
    return (await this.col.find({ createdAt: { $lt: before } }).sort({ createdAt: 1 }).limit(limit).toArray()).map(fromDoc)
  }

  async pending(uploader: string, since: number): Promise<number> {
    return this.col.countDocuments({ uploader, referenced: false, createdAt: { $gte: since } })
  }

  async existing(ids: readonly string[]): Promise<Set<string>> {
    if (!ids.length) return new Set()
    const docs = await this.col.find({ _id: { $in: [...ids] } }, { projection: { _id: 1 } }).toArray()
    return new Set(docs.map((d) => d._id))
  }

  async close(): Promise<void> {}
}
