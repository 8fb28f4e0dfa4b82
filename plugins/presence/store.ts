// What a user decides about their presence: an explicit contact list (people the user shows their
// presence to even without a shared conversation) and who may see their online status and last
// seen. Embedded (SQLite) and MongoDB, one contract (test/store-contract.test.ts).
import type { Collection, Db } from 'mongodb'
import { SqliteBacked, upsertRetrying } from '../shared/stores.js'

/** everyone: every user who shares a conversation with me, and my contacts; contacts: my contact list only; nobody. */
export type Audience = 'everyone' | 'contacts' | 'nobody'
export interface PresencePrivacy {
  online: Audience
  lastSeen: Audience
}
export const DEFAULT_PRESENCE_PRIVACY: PresencePrivacy = { online: 'everyone', lastSeen: 'everyone' }

export interface PresenceStore {
  init(): Promise<void>
  contacts(owner: string): Promise<string[]>
  /** Adds contacts; returns the list's size after the change. */
  addContacts(owner: string, users: readonly string[]): Promise<number>
  removeContacts(owner: string, users: readonly string[]): Promise<void>
  privacy(users: readonly string[]): Promise<Map<string, PresencePrivacy>>
  setPrivacy(user: string, privacy: PresencePrivacy): Promise<void>
  close(): Promise<void>
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS contacts (owner TEXT NOT NULL, contact TEXT NOT NULL, PRIMARY KEY (owner, contact));
  CREATE TABLE IF NOT EXISTS presence_privacy (user_id TEXT PRIMARY KEY, online TEXT NOT NULL, last_seen TEXT NOT NULL);
`

export class SqlitePresenceStore extends SqliteBacked implements PresenceStore {
  constructor(file: string) {
    super(file, SCHEMA)
  }

  async contacts(owner: string): Promise<string[]> {
    return this.conn.prepare<[string], { contact: string }>('SELECT contact FROM contacts WHERE owner = ? ORDER BY contact').all(owner).map((r) => r.contact)
  }

  async addContacts(owner: string, users: readonly string[]): Promise<number> {
    const insert = this.conn.prepare('INSERT OR IGNORE INTO contacts (owner, contact) VALUES (?, ?)')
    this.conn.transaction(() => users.forEach((u) => insert.run(owner, u)))()
    return this.conn.prepare<[string], { n: number }>('SELECT COUNT(*) AS n FROM contacts WHERE owner = ?').get(owner)!.n
  }

  async removeContacts(owner: string, users: readonly string[]): Promise<void> {
    const remove = this.conn.prepare('DELETE FROM contacts WHERE owner = ? AND contact = ?')
    this.conn.transaction(() => users.forEach((u) => remove.run(owner, u)))()
  }

  async privacy(users: readonly string[]): Promise<Map<string, PresencePrivacy>> {
    const get = this.conn.prepare<[string], { online: Audience; last_seen: Audience }>('SELECT online, last_seen FROM presence_privacy WHERE user_id = ?')
    return new Map(
      users.map((u) => {
        const row = get.get(u)
        return [u, row ? { online: row.online, lastSeen: row.last_seen } : { ...DEFAULT_PRESENCE_PRIVACY }]
      })
    )
  }

  async setPrivacy(user: string, p: PresencePrivacy): Promise<void> {
    this.conn
      .prepare(
        'INSERT INTO presence_privacy (user_id, online, last_seen) VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET online = excluded.online, last_seen = excluded.last_seen'
      )
      .run(user, p.online, p.lastSeen)
  }
}

export class MongoPresenceStore implements PresenceStore {
  private readonly contactsCol: Collection<{ _id: string; owner: string; contact: string }>
  private readonly privacyCol: Collection<{ _id: string } & PresencePrivacy>

  constructor(db: Db) {
    this.contactsCol = db.collection('contacts')
    this.privacyCol = db.collection('presence_privacy')
  }

  async init(): Promise<void> {
    await this.contactsCol.createIndex({ owner: 1, contact: 1 }, { name: 'owner_contact' })
  }

  async contacts(owner: string): Promise<string[]> {
    return (await this.contactsCol.find({ owner }).sort({ contact: 1 }).toArray()).map((d) => d.contact)
  }

  async addContacts(owner: string, users: readonly string[]): Promise<number> {
    if (users.length) {
      await upsertRetrying(() => this.contactsCol.bulkWrite(
        users.map((contact) => ({
          updateOne: { filter: { _id: `${owner}\u0000${contact}` }, update: { $set: { owner, contact } }, upsert: true }
        }))
      ))
    }
    return this.contactsCol.countDocuments({ owner })
  }

  async removeContacts(owner: string, users: readonly string[]): Promise<void> {
    await this.contactsCol.deleteMany({ _id: { $in: users.map((u) => `${owner}\u0000${u}`) } })
  }

  async privacy(users: readonly string[]): Promise<Map<string, PresencePrivacy>> {
    const docs = await this.privacyCol.find({ _id: { $in: [...users] } }).toArray()
    const chosen = new Map(docs.map((d) => [d._id, { online: d.online, lastSeen: d.lastSeen }]))
    return new Map(users.map((u) => [u, chosen.get(u) ?? { ...DEFAULT_PRESENCE_PRIVACY }]))
  }

  async setPrivacy(user: string, p: PresencePrivacy): Promise<void> {
    await upsertRetrying(() => this.privacyCol.updateOne({ _id: user }, { $set: { online: p.online, lastSeen: p.lastSeen } }, { upsert: true }))
  }

  async close(): Promise<void> {}
}
