// Who may not connect: banned users and revoked devices (parley admin users ban, devices revoke).
// Embedded (SQLite) and MongoDB, one contract (test/store-contract.test.ts). Both are small tables
// written only by operators; authenticate reads them through a per-user cache (index.ts).
import type { Collection, Db } from 'mongodb'
import { SqliteBacked, upsertRetrying } from '../shared/stores.js'

export interface Ban {
  user: string
  /** Epoch ms. */
  since: number
  /** Epoch ms; none: until unbanned. */
  until?: number | undefined
  reason?: string | undefined
  /** Who banned (the admin API key's name). */
  by: string
}

export interface Revocation {
  user: string
  device: string
  /** Epoch ms: tokens of this device issued up to this moment's second are refused. */
  revokedAt: number
  by: string
}

/** What authenticate needs to know about one user. */
export interface UserAccess {
  /** The ban, if one is in force or was until recently (check `until` against the clock). */
  ban?: Ban | undefined
  revocations: Revocation[]
}

export interface AccessStore {
  init(): Promise<void>
  /** Bans a user, replacing a ban in force (a new reason or end); returns the ban it replaced. */
  ban(ban: Ban): Promise<Ban | undefined>
  /** Lifts a ban; returns it, or undefined when none was in force at `now`. */
  unban(user: string, now: number): Promise<Ban | undefined>
  /** Bans in force at `now`, by user id. */
  bans(now: number): Promise<Ban[]>
  /** Records a revocation (a later one of the same device replaces it). */
  revoke(revocation: Revocation): Promise<void>
  access(user: string): Promise<UserAccess>
  close(): Promise<void>
}

const inForce = (ban: Ban | undefined, now: number): Ban | undefined => (ban && (ban.until === undefined || ban.until > now) ? ban : undefined)

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS bans (user_id TEXT PRIMARY KEY, since INTEGER NOT NULL, until INTEGER, reason TEXT, banned_by TEXT NOT NULL);
  CREATE TABLE IF NOT EXISTS revocations (user_id TEXT NOT NULL, device_id TEXT NOT NULL, revoked_at INTEGER NOT NULL, revoked_by TEXT NOT NULL, PRIMARY KEY (user_id, device_id));
`

interface BanRow {
  user_id: string
  since: number
  until: number | null
  reason: string | null
  banned_by: string
}

const banOfRow = (r: BanRow): Ban => ({
  user: r.user_id,
  since: r.since,
  ...(r.until !== null ? { until: r.until } : {}),
  ...(r.reason !== null ? { reason: r.reason } : {}),
  by: r.banned_by
})

export class SqliteAccessStore extends SqliteBacked implements AccessStore {
  constructor(file: string) {
    super(file, SCHEMA)
  }

  private banRow(user: string): Ban | undefined {
    const row = this.conn.prepare<[string], BanRow>('SELECT * FROM bans WHERE user_id = ?').get(user)
    return row ? banOfRow(row) : undefined
  }

  async ban(ban: Ban): Promise<Ban | undefined> {
    return this.conn.transaction(() => {
      const previous = inForce(this.banRow(ban.user), ban.since)
      this.conn
        .prepare(
          `INSERT INTO bans (user_id, since, until, reason, banned_by) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT (user_id) DO UPDATE SET since = excluded.since, until = excluded.until, reason = excluded.reason, banned_by = excluded.banned_by`
        )
        .run(ban.user, ban.since, ban.until ?? null, ban.reason ?? null, ban.by)
      return previous
    })()
  }

  async unban(user: string, now: number): Promise<Ban | undefined> {
    return this.conn.transaction(() => {
      const previous = inForce(this.banRow(user), now)
      this.conn.prepare('DELETE FROM bans WHERE user_id = ?').run(user)
      return previous
    })()
  }

  async bans(now: number): Promise<Ban[]> {
    // Expired bans are dropped here, the only place that reads them all.
    this.conn.prepare('DELETE FROM bans WHERE until IS NOT NULL AND until <= ?').run(now)
    return this.conn.prepare<[], BanRow>('SELECT * FROM bans ORDER BY user_id').all().map(banOfRow)
  }

  async revoke(r: Revocation): Promise<void> {
    this.conn
      .prepare(
        `INSERT INTO revocations (user_id, device_id, revoked_at, revoked_by) VALUES (?, ?, ?, ?)
         ON CONFLICT (user_id, device_id) DO UPDATE SET revoked_at = max(revoked_at, excluded.revoked_at), revoked_by = excluded.revoked_by`
      )
      .run(r.user, r.device, r.revokedAt, r.by)
  }

  async access(user: string): Promise<UserAccess> {
    const revocations = this.conn
      .prepare<[string], { device_id: string; revoked_at: number; revoked_by: string }>('SELECT device_id, revoked_at, revoked_by FROM revocations WHERE user_id = ? ORDER BY device_id')
      .all(user)
      .map((r) => ({ user, device: r.device_id, revokedAt: r.revoked_at, by: r.revoked_by }))
    return { ban: this.banRow(user), revocations }
  }
}

type BanDoc = { _id: string } & Omit<Ban, 'user'>
type RevocationDoc = { _id: string } & Revocation

const banOfDoc = ({ _id, since, until, reason, by }: BanDoc): Ban => ({
  user: _id,
  since,
  ...(until !== undefined && until !== null ? { until } : {}),
  ...(reason !== undefined && reason !== null ? { reason } : {}),
  by
})

export class MongoAccessStore implements AccessStore {
  private readonly bansCol: Collection<BanDoc>
  private readonly revocationsCol: Collection<RevocationDoc>

  constructor(db: Db) {
    this.bansCol = db.collection('auth_bans')
    this.revocationsCol = db.collection('auth_revocations')
  }

  async init(): Promise<void> {
    await this.revocationsCol.createIndex({ user: 1 }, { name: 'user' })
  }

  async ban(ban: Ban): Promise<Ban | undefined> {
    const doc: Omit<BanDoc, '_id'> = { since: ban.since, by: ban.by, ...(ban.until !== undefined ? { until: ban.until } : {}), ...(ban.reason !== undefined ? { reason: ban.reason } : {}) }
    // A replacement, not a $set: a ban without an end must not keep the previous ban's end.
    const previous = await upsertRetrying(() => this.bansCol.findOneAndReplace({ _id: ban.user }, doc, { upsert: true, returnDocument: 'before' }))
    return inForce(previous ? banOfDoc(previous) : undefined, ban.since)
  }

  async unban(user: string, now: number): Promise<Ban | undefined> {
    const previous = await this.bansCol.findOneAndDelete({ _id: user })
    return inForce(previous ? banOfDoc(previous) : undefined, now)
  }

  async bans(now: number): Promise<Ban[]> {
    await this.bansCol.deleteMany({ until: { $lte: now } })
    return (await this.bansCol.find({}).sort({ _id: 1 }).toArray()).map(banOfDoc)
  }

  async revoke(r: Revocation): Promise<void> {
    await upsertRetrying(() =>
      this.revocationsCol.updateOne(
        { _id: `${r.user}:${r.device}` },
        { $max: { revokedAt: r.revokedAt }, $set: { user: r.user, device: r.device, by: r.by } },
        { upsert: true }
      )
    )
  }

  async access(user: string): Promise<UserAccess> {
    const [ban, revocations] = await Promise.all([this.bansCol.findOne({ _id: user }), this.revocationsCol.find({ user }).sort({ device: 1 }).toArray()])
    return {
      ban: ban ? banOfDoc(ban) : undefined,
      revocations: revocations.map(({ user: u, device, revokedAt, by }) => ({ user: u, device, revokedAt, by }))
    }
  }

  async close(): Promise<void> {}
}
