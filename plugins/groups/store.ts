// Group store: one interface, an embedded (SQLite) and a MongoDB implementation, one contract.
import { SqliteBacked } from '../shared/stores.js'
import type { Collection, Db } from 'mongodb'

export type Role = 'admin' | 'member'

export interface Member {
  user: string
  role: Role
  joinedAt: number
}

export interface Group {
  id: string
  name: string
  createdBy: string
  createdAt: number
  members: Member[]
}

/** A group without its member list: what an operator's listing shows. */
export interface GroupSummary {
  id: string
  name: string
  createdBy: string
  createdAt: number
  /** How many members it has. */
  members: number
}

/** Where a listing of every group resumes: after this group, in creation order. */
export interface ListPosition {
  createdAt: number
  id: string
}

export interface GroupStore {
  init(): Promise<void>
  /** Creates a group whose creator is its first admin. */
  create(group: { id: string; name: string; createdBy: string; createdAt: number; members: readonly string[] }): Promise<Group>
  get(id: string): Promise<Group | undefined>
  rename(id: string, name: string): Promise<void>
  /** Adds users as members (those already in keep their role); returns the users actually added. */
  add(id: string, users: readonly string[], at: number): Promise<string[]>
  /** Removes a member; false when the user was not one. */
  remove(id: string, user: string): Promise<boolean>
  setRole(id: string, user: string, role: Role): Promise<void>
  role(id: string, user: string): Promise<Role | undefined>
  /** Member user ids, in join order. */
  members(id: string): Promise<string[]>
  /** The groups a user belongs to. */
  groupsOf(user: string): Promise<Array<{ id: string; name: string; role: Role }>>
  /** Every group, oldest first (then by id), after `after`, at most `limit` (admin listings). */
  list(limit: number, after?: ListPosition): Promise<GroupSummary[]>
  /** Summaries of these groups, in the order given; unknown ids are left out. */
  summaries(ids: readonly string[]): Promise<GroupSummary[]>
  close(): Promise<void>
}

const SQLITE_SCHEMA = `
      CREATE TABLE IF NOT EXISTS groups (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_by TEXT NOT NULL, created_at INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS group_members (
        group_id TEXT NOT NULL, user_id TEXT NOT NULL, role TEXT NOT NULL, joined_at INTEGER NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (group_id, user_id)
      );
      CREATE INDEX IF NOT EXISTS group_members_user ON group_members (user_id);
      -- Member lists are read in join order: without this index SQLite sorts the group's rows each time.
      CREATE INDEX IF NOT EXISTS group_members_group_seq ON group_members (group_id, seq);
      CREATE INDEX IF NOT EXISTS groups_created ON groups (created_at, id);
    `

export class SqliteGroupStore extends SqliteBacked implements GroupStore {
  constructor(file: string) {
    super(file, SQLITE_SCHEMA)
  }

  async create(g: { id: string; name: string; createdBy: string; createdAt: number; members: readonly string[] }): Promise<Group> {
    const db = this.conn
    db.transaction(() => {
      db.prepare('INSERT INTO groups (id, name, created_by, created_at) VALUES (?, ?, ?, ?)').run(g.id, g.name, g.createdBy, g.createdAt)
      const insert = db.prepare('INSERT OR IGNORE INTO group_members (group_id, user_id, role, joined_at, seq) VALUES (?, ?, ?, ?, ?)')
      ;[g.createdBy, ...g.members].forEach((u, i) => insert.run(g.id, u, u === g.createdBy ? 'admin' : 'member', g.createdAt, i))
    })()
    return (await this.get(g.id))!
  }

  async get(id: string): Promise<Group | undefined> {
    const row = this.conn.prepare<[string], { id: string; name: string; created_by: string; created_at: number }>('SELECT * FROM groups WHERE id = ?').get(id)
    if (!row) return undefined
    const members = this.conn
      .prepare<[string], { user_id: string; role: Role; joined_at: number }>('SELECT user_id, role, joined_at FROM group_members WHERE group_id = ? ORDER BY seq')
      .all(id)
      .map((m) => ({ user: m.user_id, role: m.role, joinedAt: m.joined_at }))
    return { id: row.id, name: row.name, createdBy: row.created_by, createdAt: row.created_at, members }
  }

  async rename(id: string, name: string): Promise<void> {
    this.conn.prepare('UPDATE groups SET name = ? WHERE id = ?').run(name, id)
  }

  async add(id: string, users: readonly string[], at: number): Promise<string[]> {
    const db = this.conn
    return db.transaction(() => {
      const next = (db.prepare<[string], { s: number | null }>('SELECT MAX(seq) AS s FROM group_members WHERE group_id = ?').get(id)?.s ?? -1) + 1
      const insert = db.prepare('INSERT OR IGNORE INTO group_members (group_id, user_id, role, joined_at, seq) VALUES (?, ?, ?, ?, ?)')
      return [...new Set(users)].filter((u, i) => insert.run(id, u, 'member', at, next + i).changes === 1)
    })()
  }

  async remove(id: string, user: string): Promise<boolean> {
    return this.conn.prepare('DELETE FROM group_members WHERE group_id = ? AND user_id = ?').run(id, user).changes === 1
  }

  async setRole(id: string, user: string, role: Role): Promise<void> {
    this.conn.prepare('UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?').run(role, id, user)
  }

  async role(id: string, user: string): Promise<Role | undefined> {
    return this.conn.prepare<[string, string], { role: Role }>('SELECT role FROM group_members WHERE group_id = ? AND user_id = ?').get(id, user)?.role
  }

  async members(id: string): Promise<string[]> {
    return this.conn.prepare<[string], { user_id: string }>('SELECT user_id FROM group_members WHERE group_id = ? ORDER BY seq').all(id).map((r) => r.user_id)
  }

  async groupsOf(user: string): Promise<Array<{ id: string; name: string; role: Role }>> {
    return this.conn
      .prepare<[string], { id: string; name: string; role: Role }>(
        'SELECT g.id AS id, g.name AS name, m.role AS role FROM group_members m JOIN groups g ON g.id = m.group_id WHERE m.user_id = ? ORDER BY g.created_at, g.id'
      )
      .all(user)
  }

  private static readonly SUMMARY = `SELECT g.id AS id, g.name AS name, g.created_by AS createdBy, g.created_at AS createdAt,
      (SELECT COUNT(*) FROM group_members m WHERE m.group_id = g.id) AS members FROM groups g`

  async list(limit: number, after?: ListPosition): Promise<GroupSummary[]> {
    const from = after ?? { createdAt: -1, id: '' }
    return this.conn
      .prepare<[number, number, string, number], GroupSummary>(
        `${SqliteGroupStore.SUMMARY} WHERE g.created_at > ? OR (g.created_at = ? AND g.id > ?) ORDER BY g.created_at, g.id LIMIT ?`
      )
      .all(from.createdAt, from.createdAt, from.id, limit)
  }

  async summaries(ids: readonly string[]): Promise<GroupSummary[]> {
    const one = this.conn.prepare<[string], GroupSummary>(`${SqliteGroupStore.SUMMARY} WHERE g.id = ?`)
    return ids.map((id) => one.get(id)).filter((g): g is GroupSummary => g !== undefined)
  }
}

interface GroupDoc {
  _id: string
  name: string
  createdBy: string
  createdAt: number
}
interface MemberDoc {
  _id: string
  group: string
  user: string
  role: Role
  joinedAt: number
  seq: number
}

/** MongoDB: one document per group and one per membership (a 1,024-member group stays small documents). */
export class MongoGroupStore implements GroupStore {
  private readonly groups: Collection<GroupDoc>
  private readonly memberships: Collection<MemberDoc>
  constructor(db: Db) {
    this.groups = db.collection<GroupDoc>('groups')
    this.memberships = db.collection<MemberDoc>('group_members')
  }

  async init(): Promise<void> {
    await this.memberships.createIndex({ group: 1, seq: 1 }, { name: 'group_seq' })
    await this.memberships.createIndex({ user: 1 }, { name: 'user' })
    await this.groups.createIndex({ createdAt: 1, _id: 1 }, { name: 'created' })
  }

  async create(g: { id: string; name: string; createdBy: string; createdAt: number; members: readonly string[] }): Promise<Group> {
    await this.groups.insertOne({ _id: g.id, name: g.name, createdBy: g.createdBy, createdAt: g.createdAt })
    const users = [...new Set([g.createdBy, ...g.members])]
    await this.memberships.insertMany(
      users.map((u, i) => ({ _id: `${g.id}:${u}`, group: g.id, user: u, role: u === g.createdBy ? 'admin' : 'member', joinedAt: g.createdAt, seq: i }))
    )
    return (await this.get(g.id))!
  }

  async get(id: string): Promise<Group | undefined> {
    const doc = await this.groups.findOne({ _id: id })
    if (!doc) return undefined
    const members = await this.memberships.find({ group: id }).sort({ seq: 1 }).toArray()
    return {
      id: doc._id,
      name: doc.name,
      createdBy: doc.createdBy,
      createdAt: doc.createdAt,
      members: members.map((m) => ({ user: m.user, role: m.role, joinedAt: m.joinedAt }))
    }
  }

  async rename(id: string, name: string): Promise<void> {
    await this.groups.updateOne({ _id: id }, { $set: { name } })
  }

  async add(id: string, users: readonly string[], at: number): Promise<string[]> {
    const [last] = await this.memberships.find({ group: id }).sort({ seq: -1 }).limit(1).toArray()
    const next = (last?.seq ?? -1) + 1
    const added: string[] = []
    // One insert per user: the _id (group:user) refuses a member twice, on MongoDB and FerretDB alike.
    for (const [i, user] of [...new Set(users)].entries()) {
      try {
        await this.memberships.insertOne({ _id: `${id}:${user}`, group: id, user, role: 'member', joinedAt: at, seq: next + i })
        added.push(user)
      } catch (err) {
        if ((err as { code?: number }).code !== 11000) throw err
      }
    }
    return added
  }

  async remove(id: string, user: string): Promise<boolean> {
    return (await this.memberships.deleteOne({ _id: `${id}:${user}` })).deletedCount === 1
  }

  async setRole(id: string, user: string, role: Role): Promise<void> {
    await this.memberships.updateOne({ _id: `${id}:${user}` }, { $set: { role } })
  }

  async role(id: string, user: string): Promise<Role | undefined> {
    return (await this.memberships.findOne({ _id: `${id}:${user}` }))?.role
  }

  async members(id: string): Promise<string[]> {
    return (await this.memberships.find({ group: id }).sort({ seq: 1 }).project<{ user: string }>({ user: 1 }).toArray()).map((m) => m.user)
  }

  async groupsOf(user: string): Promise<Array<{ id: string; name: string; role: Role }>> {
    const memberships = await this.memberships.find({ user }).toArray()
    const docs = await this.groups.find({ _id: { $in: memberships.map((m) => m.group) } }).toArray()
    const byId = new Map(docs.map((d) => [d._id, d]))
    return memberships
      .filter((m) => byId.has(m.group))
      .map((m) => ({ id: m.group, name: byId.get(m.group)!.name, role: m.role, createdAt: byId.get(m.group)!.createdAt }))
      .sort((x, y) => x.createdAt - y.createdAt || x.id.localeCompare(y.id))
      .map(({ id, name, role }) => ({ id, name, role }))
  }

  /** Member counts by the {group, seq} index, a few groups at a time (a listing is at most a page). */
  private async summarise(docs: readonly GroupDoc[]): Promise<GroupSummary[]> {
    const out: GroupSummary[] = []
    for (let i = 0; i < docs.length; i += 16) {
      const counts = await Promise.all(docs.slice(i, i + 16).map((d) => this.memberships.countDocuments({ group: d._id })))
      docs.slice(i, i + 16).forEach((d, j) => out.push({ id: d._id, name: d.name, createdBy: d.createdBy, createdAt: d.createdAt, members: counts[j]! }))
    }
    return out
  }

  async list(limit: number, after?: ListPosition): Promise<GroupSummary[]> {
    const filter = after ? { $or: [{ createdAt: { $gt: after.createdAt } }, { createdAt: after.createdAt, _id: { $gt: after.id } }] } : {}
    return this.summarise(await this.groups.find(filter).sort({ createdAt: 1, _id: 1 }).limit(limit).toArray())
  }

  async summaries(ids: readonly string[]): Promise<GroupSummary[]> {
    const byId = new Map((await this.groups.find({ _id: { $in: [...ids] } }).toArray()).map((d) => [d._id, d]))
    return this.summarise(ids.map((id) => byId.get(id)).filter((d): d is GroupDoc => d !== undefined))
  }

  async close(): Promise<void> {}
}
