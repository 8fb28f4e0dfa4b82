// Admin API keys: scoped (read < operator < admin), stored hashed, shown once at creation.
// A key is `pk_<id>_<secret>`: the id finds the record, the secret is checked against its SHA-256
// (the secret is 256 random bits, so a fast hash is enough: nothing to brute-force), in constant
// time. Keys live with the other durable state: MongoDB when configured (every node sees the same
// keys), else an SQLite file in the data directory.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import Database from 'better-sqlite3'
import type { Collection, Db } from 'mongodb'
import { z } from 'zod'

export const SCOPES = ['read', 'operator', 'admin'] as const
export const Scope = z.enum(SCOPES)
export type Scope = z.infer<typeof Scope>

/** Does a key of scope `have` allow what needs `need`? */
export const scopeAllows = (have: Scope, need: Scope): boolean => SCOPES.indexOf(have) >= SCOPES.indexOf(need)

export const ApiKeyInfo = z.object({
  id: z.string(),
  name: z.string(),
  scope: Scope,
  createdAt: z.number().int().describe('ms since the epoch'),
  expiresAt: z.number().int().optional().describe('ms since the epoch; absent: never'),
  revokedAt: z.number().int().optional()
})
export type ApiKeyInfo = z.infer<typeof ApiKeyInfo>

interface Stored extends ApiKeyInfo {
  hash: string
}

const KEY_FORMAT = /^pk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex')

/** Where keys are kept. */
interface KeyBackend {
  init(): Promise<void>
  insert(record: Stored): Promise<void>
  get(id: string): Promise<Stored | undefined>
  all(): Promise<Stored[]>
  revoke(id: string, at: number): Promise<boolean>
  close(): Promise<void>
}

class SqliteKeys implements KeyBackend {
  private db: Database.Database | undefined
  constructor(private readonly file: string) {}
  private get conn(): Database.Database {
    if (!this.db) throw new Error('admin key store is not open')
    return this.db
  }
  async init() {
    mkdirSync(dirname(this.file), { recursive: true })
    this.db = new Database(this.file)
    this.db.pragma('journal_mode = WAL')
    this.db.exec('CREATE TABLE IF NOT EXISTS admin_keys (id TEXT PRIMARY KEY, record TEXT NOT NULL)')
  }
  async insert(record: Stored) {
    this.conn.prepare('INSERT INTO admin_keys (id, record) VALUES (?, ?)').run(record.id, JSON.stringify(record))
  }
  async get(id: string) {
    const row = this.conn.prepare<[string], { record: string }>('SELECT record FROM admin_keys WHERE id = ?').get(id)
    return row ? (JSON.parse(row.record) as Stored) : undefined
  }
  async all() {
    return this.conn
      .prepare<[], { record: string }>('SELECT record FROM admin_keys')
      .all()
      .map((r) => JSON.parse(r.record) as Stored)
  }
  async revoke(id: string, at: number) {
    const found = await this.get(id)
    if (!found || found.revokedAt) return false
    this.conn.prepare('UPDATE admin_keys SET record = ? WHERE id = ?').run(JSON.stringify({ ...found, revokedAt: at }), id)
    return true
  }
  async close() {
    this.db?.close()
    this.db = undefined
  }
}

class MongoKeys implements KeyBackend {
  private readonly col: Collection<Stored & { _id: string }>
  constructor(db: Db) {
    this.col = db.collection('admin_keys')
  }
  async init() {}
  async insert(record: Stored) {
    await this.col.insertOne({ _id: record.id, ...record })
  }
  async get(id: string) {
    const doc = await this.col.findOne({ _id: id })
    if (!doc) return undefined
    const { _id, ...record } = doc
    return record
  }
  async all() {
    return (await this.col.find({}).toArray()).map(({ _id, ...record }) => record)
  }
  async revoke(id: string, at: number) {
    const r = await this.col.updateOne({ _id: id, revokedAt: { $exists: false } }, { $set: { revokedAt: at } })
    return r.modifiedCount === 1
  }
  async close() {}
}

const publicInfo = ({ hash: _hash, ...info }: Stored): ApiKeyInfo => info

export class ApiKeyStore {
  private readonly backend: KeyBackend

  constructor(where: { mongo?: Db | undefined; dataDir: string }) {
    this.backend = where.mongo ? new MongoKeys(where.mongo) : new SqliteKeys(join(where.dataDir, 'admin.db'))
  }

  init(): Promise<void> {
    return this.backend.init()
  }

  /** Creates a key; the returned `key` is the only time the secret exists outside the caller. */
  async create(input: { name: string; scope: Scope; ttlMs?: number | undefined }, now = Date.now()): Promise<{ key: string; info: ApiKeyInfo }> {
    const id = randomBytes(8).toString('hex')
    const secret = randomBytes(32).toString('base64url')
    const record: Stored = {
      id,
      name: input.name,
      scope: input.scope,
      createdAt: now,
      ...(input.ttlMs ? { expiresAt: now + input.ttlMs } : {}),
      hash: sha256(secret)
    }
    await this.backend.insert(record)
    return { key: `pk_${id}_${secret}`, info: publicInfo(record) }
  }

  /** The key's record if the key is well-formed, known, not revoked and not expired. */
  async verify(key: string, now = Date.now()): Promise<ApiKeyInfo | undefined> {
    const m = KEY_FORMAT.exec(key)
    if (!m) return undefined
    const record = await this.backend.get(m[1]!)
    if (!record) return undefined
    const expected = Buffer.from(record.hash, 'hex')
    const actual = Buffer.from(sha256(m[2]!), 'hex')
    if (expected.length !== actual.length || !timingSafeEqual(expected, actual)) return undefined
    if (record.revokedAt !== undefined || (record.expiresAt !== undefined && record.expiresAt <= now)) return undefined
    return publicInfo(record)
  }

  async list(): Promise<ApiKeyInfo[]> {
    return (await this.backend.all()).map(publicInfo).sort((a, b) => a.createdAt - b.createdAt)
  }

  /** False when there is no such key or it was already revoked. */
  revoke(id: string, now = Date.now()): Promise<boolean> {
    return this.backend.revoke(id, now)
  }

  close(): Promise<void> {
    return this.backend.close()
  }
}
