// The device registry: per device (user and device id), its push token and settings; per user, the
// conversations they muted and until when; per device, how many pushed messages are still unread
// (the badge, until the messages plugin can tell the unread total). Two implementations of one
// contract (test/registry-contract.test.ts): embedded SQLite and MongoDB.
//
// A token belongs to one device at a time: registering it removes it from any other registration
// (an app reinstalled under another account must not receive the old account's pushes).
import type Database from 'better-sqlite3'
import type { Collection, Db } from 'mongodb'
import { SqliteBacked, upsertRetrying } from '../shared/stores.js'
import type { DeviceStatus, ProviderName, PushResult, Registration } from './types.js'

export interface Mute {
  conversation: string
  /** Epoch ms. */
  until: number
}

export interface RegistrationPatch {
  locale?: string | null | undefined
  previews?: boolean | undefined
}

export interface RegistryStore {
  init(): Promise<void>
  /** Creates or replaces a device's registration; other devices holding the same token lose it. */
  register(registration: Registration): Promise<void>
  /** Changes settings of an existing registration; undefined when the device has none. */
  update(user: string, device: string, patch: RegistrationPatch, now: number): Promise<Registration | undefined>
  /** Removes a device's registration (and its badge count); false when there was none. */
  unregister(user: string, device: string): Promise<boolean>
  /** Removes a registration only while it still holds `token` (a token the provider called dead). */
  removeToken(user: string, device: string, token: string): Promise<boolean>
  get(user: string, device: string): Promise<Registration | undefined>
  /** Every registration of these users. */
  devicesOf(users: readonly string[]): Promise<Registration[]>
  /** A user's registrations with their creation time and last push result (admin). */
  statusOf(user: string): Promise<DeviceStatus[]>
  /** Records how a push to a device went, only while the registration still holds `token`. */
  recordResult(user: string, device: string, token: string, result: PushResult): Promise<void>
  /** Mutes a conversation for a user until `until` (epoch ms); `until` <= now unmutes. */
  mute(user: string, conversation: string, until: number, now: number): Promise<void>
  /** The user's mutes still in force at `now`. */
  mutes(user: string, now: number): Promise<Mute[]>
  /** The users among `users` who muted `conversation` beyond `now`, with the end of each mute. */
  mutedAmong(users: readonly string[], conversation: string, now: number): Promise<Map<string, number>>
  /** Records `count` messages pushed to a device in a conversation, up to `seq`. */
  addPushed(user: string, device: string, conversation: string, count: number, seq: number): Promise<void>
  /** Pushed messages still unread on a device, over all conversations. */
  pushedUnread(user: string, device: string): Promise<number>
  /** The user read a conversation up to `seq`: every device's pushed count shrinks accordingly. */
  markRead(user: string, conversation: string, seq: number): Promise<void>
  close(): Promise<void>
}

interface DeviceRow {
  user_id: string
  device_id: string
  provider: string
  token: string
  topic: string | null
  environment: string | null
  locale: string | null
  previews: number
  updated_at: number
  created_at: number | null
  last_result: string | null
}
const fromRow = (r: DeviceRow): Registration => ({
  user: r.user_id,
  device: r.device_id,
  provider: r.provider as ProviderName,
  token: r.token,
  ...(r.topic !== null ? { topic: r.topic } : {}),
  ...(r.environment !== null ? { environment: r.environment as 'production' | 'sandbox' } : {}),
  ...(r.locale !== null ? { locale: r.locale } : {}),
  previews: r.previews === 1,
  updatedAt: r.updated_at
})

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS push_devices (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, provider TEXT NOT NULL, token TEXT NOT NULL,
    topic TEXT, environment TEXT, locale TEXT, previews INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    created_at INTEGER, last_result TEXT,
    PRIMARY KEY (user_id, device_id)
  );
  CREATE UNIQUE INDEX IF NOT EXISTS push_devices_token ON push_devices (provider, token);
  CREATE TABLE IF NOT EXISTS push_mutes (
    user_id TEXT NOT NULL, conversation TEXT NOT NULL, until INTEGER NOT NULL, PRIMARY KEY (user_id, conversation)
  );
  CREATE TABLE IF NOT EXISTS push_unread (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, conversation TEXT NOT NULL, count INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, conversation)
  );
  CREATE INDEX IF NOT EXISTS push_unread_conversation ON push_unread (user_id, conversation);
`

/** After a read marker: the pushed count left, or 0 when everything pushed is read. */
const unreadAfterRead = (count: number, pushedSeq: number, readSeq: number): number => (pushedSeq <= readSeq ? 0 : Math.min(count, pushedSeq - readSeq))

export class SqliteRegistry extends SqliteBacked implements RegistryStore {
  constructor(file: string) {
    super(file, SCHEMA)
  }

  async register(r: Registration): Promise<void> {
    const db = this.conn
    db.transaction(() => {
      const others = db
        .prepare<[string, string, string, string], { user_id: string; device_id: string }>(
          'SELECT user_id, device_id FROM push_devices WHERE provider = ? AND token = ? AND NOT (user_id = ? AND device_id = ?)'
        )
        .all(r.provider, r.token, r.user, r.device)
      for (const o of others) this.removeSync(o.user_id, o.device_id)
      const previous = db.prepare<[string, string], { token: string }>('SELECT token FROM push_devices WHERE user_id = ? AND device_id = ?').get(r.user, r.device)
      // A new token is a new app installation: what was pushed to the old one does not count.
      if (previous && previous.token !== r.token) db.prepare('DELETE FROM push_unread WHERE user_id = ? AND device_id = ?').run(r.user, r.device)
      db.prepare(
        // created_at stays; the last result belongs to the token it was sent to.
        `INSERT INTO push_devices (user_id, device_id, provider, token, topic, environment, locale, previews, updated_at, created_at)
         VALUES (@user, @device, @provider, @token, @topic, @environment, @locale, @previews, @updatedAt, @updatedAt)
         ON CONFLICT (user_id, device_id) DO UPDATE SET provider = excluded.provider, token = excluded.token, topic = excluded.topic,
           environment = excluded.environment, locale = excluded.locale, previews = excluded.previews, updated_at = excluded.updated_at,
           last_result = CASE WHEN push_devices.token = excluded.token THEN push_devices.last_result ELSE NULL END`
      ).run({
        user: r.user,
        device: r.device,
        provider: r.provider,
        token: r.token,
        topic: r.topic ?? null,
        environment: r.environment ?? null,
        locale: r.locale ?? null,
        previews: r.previews ? 1 : 0,
        updatedAt: r.updatedAt
      })
    })()
  }

  async update(user: string, device: string, patch: RegistrationPatch, now: number): Promise<Registration | undefined> {
    const current = await this.get(user, device)
    if (!current) return undefined
    const locale = patch.locale === undefined ? (current.locale ?? null) : patch.locale
    const previews = patch.previews ?? current.previews
    this.conn.prepare('UPDATE push_devices SET locale = ?, previews = ?, updated_at = ? WHERE user_id = ? AND device_id = ?').run(locale, previews ? 1 : 0, now, user, device)
    return this.get(user, device)
  }

  private removeSync(user: string, device: string): boolean {
    const removed = this.conn.prepare('DELETE FROM push_devices WHERE user_id = ? AND device_id = ?').run(user, device).changes > 0
    this.conn.prepare('DELETE FROM push_unread WHERE user_id = ? AND device_id = ?').run(user, device)
    return removed
  }

  async unregister(user: string, device: string): Promise<boolean> {
    return this.conn.transaction(() => this.removeSync(user, device))()
  }

  async removeToken(user: string, device: string, token: string): Promise<boolean> {
    return this.conn.transaction(() => {
      const row = this.conn.prepare<[string, string], { token: string }>('SELECT token FROM push_devices WHERE user_id = ? AND device_id = ?').get(user, device)
      return row?.token === token ? this.removeSync(user, device) : false
    })()
  }

  async get(user: string, device: string): Promise<Registration | undefined> {
    const row = this.conn.prepare<[string, string], DeviceRow>('SELECT * FROM push_devices WHERE user_id = ? AND device_id = ?').get(user, device)
    return row ? fromRow(row) : undefined
  }

  async devicesOf(users: readonly string[]): Promise<Registration[]> {
    if (!users.length) return []
    // One statement for the whole list (a 1,000-member group's message asked 999 times before).
    return this.conn
      .prepare<[string], DeviceRow>('SELECT * FROM push_devices WHERE user_id IN (SELECT value FROM json_each(?)) ORDER BY user_id, device_id')
      .all(JSON.stringify([...new Set(users)]))
      .map(fromRow)
  }

  async statusOf(user: string): Promise<DeviceStatus[]> {
    return this.conn
      .prepare<[string], DeviceRow>('SELECT * FROM push_devices WHERE user_id = ? ORDER BY device_id')
      .all(user)
      .map((r) => ({
        ...fromRow(r),
        ...(r.created_at !== null ? { createdAt: r.created_at } : {}),
        ...(r.last_result !== null ? { lastResult: JSON.parse(r.last_result) as PushResult } : {})
      }))
  }

  async recordResult(user: string, device: string, token: string, result: PushResult): Promise<void> {
    this.conn.prepare('UPDATE push_devices SET last_result = ? WHERE user_id = ? AND device_id = ? AND token = ?').run(JSON.stringify(result), user, device, token)
  }

  async mute(user: string, conversation: string, until: number, now: number): Promise<void> {
    if (until <= now) {
      this.conn.prepare('DELETE FROM push_mutes WHERE user_id = ? AND conversation = ?').run(user, conversation)
      return
    }
    this.conn
      .prepare('INSERT INTO push_mutes (user_id, conversation, until) VALUES (?, ?, ?) ON CONFLICT (user_id, conversation) DO UPDATE SET until = excluded.until')
      .run(user, conversation, until)
  }

  async mutes(user: string, now: number): Promise<Mute[]> {
    this.conn.prepare('DELETE FROM push_mutes WHERE user_id = ? AND until <= ?').run(user, now)
    return this.conn.prepare<[string], Mute>('SELECT conversation, until FROM push_mutes WHERE user_id = ? ORDER BY conversation').all(user)
  }

  async mutedAmong(users: readonly string[], conversation: string, now: number): Promise<Map<string, number>> {
    const select = this.conn.prepare<[string, string, number], { until: number }>('SELECT until FROM push_mutes WHERE user_id = ? AND conversation = ? AND until > ?')
    const out = new Map<string, number>()
    for (const u of new Set(users)) {
      const row = select.get(u, conversation, now)
      if (row) out.set(u, row.until)
    }
    return out
  }

  async addPushed(user: string, device: string, conversation: string, count: number, seq: number): Promise<void> {
    this.conn
      .prepare(
        `INSERT INTO push_unread (user_id, device_id, conversation, count, seq) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (user_id, device_id, conversation) DO UPDATE SET count = count + excluded.count, seq = MAX(seq, excluded.seq)`
      )
      .run(user, device, conversation, count, seq)
  }

  async pushedUnread(user: string, device: string): Promise<number> {
    return this.conn.prepare<[string, string], { n: number | null }>('SELECT SUM(count) AS n FROM push_unread WHERE user_id = ? AND device_id = ?').get(user, device)?.n ?? 0
  }

  async markRead(user: string, conversation: string, seq: number): Promise<void> {
    const db = this.conn
    db.transaction(() => {
      const rows = db
        .prepare<[string, string], { device_id: string; count: number; seq: number }>('SELECT device_id, count, seq FROM push_unread WHERE user_id = ? AND conversation = ?')
        .all(user, conversation)
      for (const r of rows) {
        const left = unreadAfterRead(r.count, r.seq, seq)
        if (left === 0) db.prepare('DELETE FROM push_unread WHERE user_id = ? AND device_id = ? AND conversation = ?').run(user, r.device_id, conversation)
        else db.prepare('UPDATE push_unread SET count = ? WHERE user_id = ? AND device_id = ? AND conversation = ?').run(left, user, r.device_id, conversation)
      }
    })()
  }

  protected override migrate(db: Database.Database): void {
    SqliteBacked.addColumnIfMissing(db, 'push_devices', 'created_at', 'INTEGER')
    SqliteBacked.addColumnIfMissing(db, 'push_devices', 'last_result', 'TEXT')
  }
}

interface DeviceDoc extends Registration {
  _id: string
  createdAt?: number
  lastResult?: PushResult
}
interface MuteDoc {
  _id: string
  user: string
  conversation: string
  until: number
}
interface UnreadDoc {
  _id: string
  user: string
  device: string
  conversation: string
  count: number
  seq: number
}
const fromDoc = (d: DeviceDoc): Registration => ({
  user: d.user,
  device: d.device,
  provider: d.provider,
  token: d.token,
  ...(d.topic !== undefined && d.topic !== null ? { topic: d.topic } : {}),
  ...(d.environment !== undefined && d.environment !== null ? { environment: d.environment } : {}),
  ...(d.locale !== undefined && d.locale !== null ? { locale: d.locale } : {}),
  previews: d.previews,
  updatedAt: d.updatedAt
})

/**
 * MongoDB. The unique (provider, token) index makes a token belong to one registration; a
 * registration that loses the race to take a token over retries (upsertRetrying). On FerretDB, $inc
 * is not atomic: two pushes to one device counted at the same instant may count one (a badge one
 * too low until the next read marker).
 */
export class MongoRegistry implements RegistryStore {
  private readonly devices: Collection<DeviceDoc>
  private readonly mutesCol: Collection<MuteDoc>
  private readonly unread: Collection<UnreadDoc>

  constructor(db: Db) {
    this.devices = db.collection<DeviceDoc>('push_devices')
    this.mutesCol = db.collection<MuteDoc>('push_mutes')
    this.unread = db.collection<UnreadDoc>('push_unread')
  }

  private id(...parts: string[]): string {
    return parts.join('\u0000')
  }

  async init(): Promise<void> {
    await this.devices.createIndex({ provider: 1, token: 1 }, { name: 'provider_token', unique: true })
    await this.devices.createIndex({ user: 1 }, { name: 'user' })
    await this.mutesCol.createIndex({ user: 1 }, { name: 'user' })
    await this.unread.createIndex({ user: 1, device: 1 }, { name: 'user_device' })
    await this.unread.createIndex({ user: 1, conversation: 1 }, { name: 'user_conversation' })
  }

  async register(r: Registration): Promise<void> {
    const _id = this.id(r.user, r.device)
    await upsertRetrying(async () => {
      const others = await this.devices.find({ provider: r.provider, token: r.token, _id: { $ne: _id } }).toArray()
      for (const o of others) await this.unregister(o.user, o.device)
      const previous = await this.devices.findOne({ _id })
      if (previous && previous.token !== r.token) await this.unread.deleteMany({ user: r.user, device: r.device })
      const doc: DeviceDoc = { _id, user: r.user, device: r.device, provider: r.provider, token: r.token, previews: r.previews, updatedAt: r.updatedAt }
      // Created once; the last result belongs to the token it was sent to.
      const createdAt = previous ? previous.createdAt : r.updatedAt
      if (createdAt !== undefined) doc.createdAt = createdAt
      if (previous?.lastResult && previous.token === r.token) doc.lastResult = previous.lastResult
      if (r.topic !== undefined) doc.topic = r.topic
      if (r.environment !== undefined) doc.environment = r.environment
      if (r.locale !== undefined) doc.locale = r.locale
      await this.devices.replaceOne({ _id }, doc, { upsert: true })
    })
  }

  async update(user: string, device: string, patch: RegistrationPatch, now: number): Promise<Registration | undefined> {
    const set: Partial<DeviceDoc> = { updatedAt: now }
    const unset: Record<string, ''> = {}
    if (patch.previews !== undefined) set.previews = patch.previews
    if (typeof patch.locale === 'string') set.locale = patch.locale
    if (patch.locale === null) unset.locale = ''
    const doc = await this.devices.findOneAndUpdate(
      { _id: this.id(user, device) },
      Object.keys(unset).length ? { $set: set, $unset: unset } : { $set: set },
      { returnDocument: 'after' }
    )
    return doc ? fromDoc(doc) : undefined
  }

  async unregister(user: string, device: string): Promise<boolean> {
    const { deletedCount } = await this.devices.deleteOne({ _id: this.id(user, device) })
    await this.unread.deleteMany({ user, device })
    return deletedCount > 0
  }

  async removeToken(user: string, device: string, token: string): Promise<boolean> {
    const { deletedCount } = await this.devices.deleteOne({ _id: this.id(user, device), token })
    if (deletedCount > 0) await this.unread.deleteMany({ user, device })
    return deletedCount > 0
  }

  async get(user: string, device: string): Promise<Registration | undefined> {
    const doc = await this.devices.findOne({ _id: this.id(user, device) })
    return doc ? fromDoc(doc) : undefined
  }

  async devicesOf(users: readonly string[]): Promise<Registration[]> {
    if (!users.length) return []
    const docs = await this.devices.find({ user: { $in: [...new Set(users)] } }).toArray()
    return docs.map(fromDoc).sort((a, b) => (a.user === b.user ? a.device.localeCompare(b.device) : a.user.localeCompare(b.user)))
  }

  async statusOf(user: string): Promise<DeviceStatus[]> {
    const docs = await this.devices.find({ user }).toArray()
    return docs
      .map((d) => ({ ...fromDoc(d), ...(d.createdAt !== undefined ? { createdAt: d.createdAt } : {}), ...(d.lastResult ? { lastResult: d.lastResult } : {}) }))
      .sort((a, b) => a.device.localeCompare(b.device))
  }

  async recordResult(user: string, device: string, token: string, result: PushResult): Promise<void> {
    await this.devices.updateOne({ _id: this.id(user, device), token }, { $set: { lastResult: result } })
  }

  async mute(user: string, conversation: string, until: number, now: number): Promise<void> {
    const _id = this.id(user, conversation)
    if (until <= now) {
      await this.mutesCol.deleteOne({ _id })
      return
    }
    await upsertRetrying(() => this.mutesCol.updateOne({ _id }, { $set: { user, conversation, until } }, { upsert: true }))
  }

  async mutes(user: string, now: number): Promise<Mute[]> {
    await this.mutesCol.deleteMany({ user, until: { $lte: now } })
    const docs = await this.mutesCol.find({ user }).toArray()
    return docs.map((d) => ({ conversation: d.conversation, until: d.until })).sort((a, b) => a.conversation.localeCompare(b.conversation))
  }

  async mutedAmong(users: readonly string[], conversation: string, now: number): Promise<Map<string, number>> {
    if (!users.length) return new Map()
    const docs = await this.mutesCol.find({ _id: { $in: [...new Set(users)].map((u) => this.id(u, conversation)) } }).toArray()
    return new Map(docs.filter((d) => d.until > now).map((d) => [d.user, d.until]))
  }

  async addPushed(user: string, device: string, conversation: string, count: number, seq: number): Promise<void> {
    await upsertRetrying(() =>
      this.unread.updateOne(
        { _id: this.id(user, device, conversation) },
        { $inc: { count }, $max: { seq }, $setOnInsert: { user, device, conversation } },
        { upsert: true }
      )
    )
  }

  async pushedUnread(user: string, device: string): Promise<number> {
    const docs = await this.unread.find({ user, device }).toArray()
    return docs.reduce((n, d) => n + d.count, 0)
  }

  async markRead(user: string, conversation: string, seq: number): Promise<void> {
    const docs = await this.unread.find({ user, conversation }).toArray()
    for (const d of docs) {
      const left = unreadAfterRead(d.count, d.seq, seq)
      if (left === 0) await this.unread.deleteOne({ _id: d._id, seq: d.seq })
      else await this.unread.updateOne({ _id: d._id }, { $min: { count: left } })
    }
  }

  async close(): Promise<void> {}
}
