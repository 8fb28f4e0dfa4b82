// groups: group conversations' membership, over RPC (groups.create, .get, .list, .rename, .add,
// .remove, .promote, .leave). Admins manage; a group holds at most `maxMembers`. Every change is
// an event on each member's tree (u/{userId}/e, also to those removed), and the protocol plugin's
// membership cache is invalidated on every node. The protocol asks this store who is a member.
// Operators manage groups through the admin API (admin.ts) with the same effects, as `systemUser`.
import { randomBytes } from 'node:crypto'
import { z } from 'zod'
import { definePlugin } from '../../broker/plugin-api.js'
import { Id } from '../../schemas/identity.js'
import { DOWN, type Notice } from '../../schemas/protocol.js'
import { RpcError } from '../protocol/index.js'
import { chooseStore, initInBackground } from '../shared/stores.js'
import { registerGroupsAdmin } from './admin.js'
import { MemberListCache } from './member-list-cache.js'
import { ChangeRefused, type GroupOps } from './ops.js'
import { MongoGroupStore, SqliteGroupStore, type Group, type GroupStore } from './store.js'

export const GroupsConfig = z
  .object({
    maxMembers: z.number().int().min(2).max(100_000).default(1024),
    store: z.enum(['auto', 'embedded', 'mongo']).default('auto'),
    memberListCacheMs: z.number().int().min(0).default(60_000).describe('How long a group\'s member list is reused (0: read it for every message); every member change drops it on every node'),
    memberListCacheSize: z.number().int().positive().default(10_000).describe('Groups whose member lists are cached at most'),
    systemUser: Id.default('parley').describe(
      'The service\'s own user id: `by` of group changes made through the admin API, and sender of operator notices. Reserved: it takes no messages and joins no group'
    )
  })
  .strict()

export interface GroupsApi {
  /** Member user ids of a group (empty when there is no such group). */
  members(groupId: string): Promise<string[]>
  /** The groups a user belongs to. */
  groupsOf(userId: string): Promise<Array<{ id: string; name: string; role: 'admin' | 'member' }>>
  /** Calls `listener` after each change, on the node that made it (messages records system notices). */
  onChange(listener: (group: string, change: GroupChange) => Promise<void>): void
  /** A group with its members, or undefined when there is no such group (no membership check). */
  get(groupId: string): Promise<Group | undefined>
  /** The service's own user id (config `systemUser`): operators act as it, notices come from it. */
  readonly systemUser: string
}


/** A change of a group, as its event and system notice tell it. */
export type GroupChange = Notice

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    groups: GroupsApi
  }
}

const Name = z.string().trim().min(1).max(100)
const GroupRef = z.object({ group: Id }).strict()

export default definePlugin({
  name: 'groups',
  dependencies: ['protocol'],
  configSchema: GroupsConfig,
  register(ctx): GroupsApi {
    const { config } = ctx
    const protocol = ctx.dependency('protocol')
    const store = chooseStore<GroupStore>(ctx, config.store, {
      mongo: (db) => new MongoGroupStore(db),
      embedded: (file) => new SqliteGroupStore(file),
      file: 'groups.db'
    })
    const initialised = initInBackground(ctx, store)

    const memberLists = new MemberListCache(config.memberListCacheMs, config.memberListCacheSize)
    ctx.cluster.subscribe('members', (data) => memberLists.invalidate((data as { groupId: string }).groupId))
    const members = (groupId: string) => memberLists.get(groupId, async (id) => (await initialised()).members(id))

    protocol.setMembershipSource(async (groupId, userId) => (await (await initialised()).role(groupId, userId)) !== undefined)

    /** Tells every member (and `alsoTo`) about a change, and forgets cached memberships everywhere. */
    const listeners: Array<(group: string, change: GroupChange) => Promise<void>> = []
    const announce = async (group: string, event: GroupChange, alsoTo: readonly string[] = []) => {
      const s = await initialised()
      await Promise.all([protocol.invalidateMembership(group), ctx.cluster.broadcast('members', { groupId: group })])
      const payload = JSON.stringify({ type: 'group', group, ...event })
      const to = new Set([...(await s.members(group)), ...alsoTo])
      await Promise.all([...to].map((user) => ctx.publish({ topic: DOWN.events(user), payload, qos: 1 })))
      for (const listener of listeners) {
        await listener(group, event).catch((err: unknown) => ctx.log.error({ err, group }, 'group change listener failed'))
      }
    }

    // Devices recognise the service's notices by their sender: no member may share its id.
    const refuseReserved = (users: readonly string[]) => {
      if (users.includes(config.systemUser)) throw new ChangeRefused('reserved', `${config.systemUser} is the service's own user id (groups.systemUser): it cannot be a member`)
    }
    const ops: GroupOps = {
      store: initialised,
      create: async (by, owner, name, wanted) => {
        const s = await initialised()
        const members = [...new Set(wanted.filter((u) => u !== owner))]
        refuseReserved([owner, ...members])
        if (members.length + 1 > config.maxMembers) throw new ChangeRefused('limit', `a group holds at most ${config.maxMembers} members`)
        const group = await s.create({ id: randomBytes(8).toString('hex'), name, createdBy: owner, createdAt: Date.now(), members })
        await announce(group.id, { change: 'created', by, name: group.name, users: group.members.map((m) => m.user) })
        return group
      },
      add: async (by, group, users) => {
        const s = await initialised()
        const fresh = [...new Set(users)].filter((u) => !group.members.some((m) => m.user === u))
        refuseReserved(fresh)
        if (group.members.length + fresh.length > config.maxMembers) {
          throw new ChangeRefused('limit', `a group holds at most ${config.maxMembers} members (it has ${group.members.length})`)
        }
        const added = await s.add(group.id, fresh, Date.now())
        if (added.length) await announce(group.id, { change: 'added', by, users: added })
        return added
      },
      remove: async (by, groupId, user) => {
        if (!(await (await initialised()).remove(groupId, user))) return false
        await announce(groupId, { change: 'removed', by, users: [user] }, [user])
        return true
      },
      ensureAdmin: async (by, groupId) => {
        const s = await initialised()
        const rest = (await s.get(groupId))?.members ?? []
        const heir = rest.length && !rest.some((m) => m.role === 'admin') ? rest[0]!.user : undefined
        if (!heir) return undefined
        await s.setRole(groupId, heir, 'admin')
        await announce(groupId, { change: 'promoted', by, users: [heir] })
        return heir
      }
    }
    const limited = async <T>(work: Promise<T>): Promise<T> =>
      work.catch((err: unknown) => {
        throw err instanceof ChangeRefused ? new RpcError('invalid_params', err.message) : err
      })

    const load = async (groupId: string, userId: string): Promise<{ s: GroupStore; group: Group; admin: boolean }> => {
      const s = await initialised()
      const group = await s.get(groupId)
      const me = group?.members.find((m) => m.user === userId)
      if (!group || !me) throw new RpcError('not_a_member', `you are not a member of group ${groupId}`)
      return { s, group, admin: me.role === 'admin' }
    }
    const requireAdmin = (admin: boolean, groupId: string) => {
      if (!admin) throw new RpcError('forbidden', `only admins of group ${groupId} may do this`)
    }

    protocol.registerMethod('groups.create', {
      params: z.object({ name: Name, members: z.array(Id).max(config.maxMembers).default([]) }).strict(),
      handler: async (device, p) => limited(ops.create(device.userId, device.userId, p.name, p.members))
    })

    protocol.registerMethod('groups.get', {
      params: GroupRef,
      handler: async (device, p) => (await load(p.group, device.userId)).group
    })

    protocol.registerMethod('groups.list', {
      params: z.object({}).strict(),
      handler: async (device) => ({ groups: await (await initialised()).groupsOf(device.userId) })
    })

    protocol.registerMethod('groups.rename', {
      params: z.object({ group: Id, name: Name }).strict(),
      handler: async (device, p) => {
        const { s, admin } = await load(p.group, device.userId)
        requireAdmin(admin, p.group)
        await s.rename(p.group, p.name)
        await announce(p.group, { change: 'renamed', by: device.userId, name: p.name })
        return { ok: true }
      }
    })

    protocol.registerMethod('groups.add', {
      params: z.object({ group: Id, users: z.array(Id).min(1).max(config.maxMembers) }).strict(),
      handler: async (device, p) => {
        const { group, admin } = await load(p.group, device.userId)
        requireAdmin(admin, p.group)
        return { added: await limited(ops.add(device.userId, group, p.users)) }
      }
    })

    protocol.registerMethod('groups.remove', {
      params: z.object({ group: Id, user: Id }).strict(),
      handler: async (device, p) => {
        const { admin } = await load(p.group, device.userId)
        requireAdmin(admin, p.group)
        if (p.user === device.userId) throw new RpcError('invalid_params', 'use groups.leave to leave a group')
        if (!(await ops.remove(device.userId, p.group, p.user))) throw new RpcError('invalid_params', `${p.user} is not a member`)
        return { ok: true }
      }
    })

    protocol.registerMethod('groups.promote', {
      params: z.object({ group: Id, user: Id }).strict(),
      handler: async (device, p) => {
        const { s, group, admin } = await load(p.group, device.userId)
        requireAdmin(admin, p.group)
        if (!group.members.some((m) => m.user === p.user)) throw new RpcError('invalid_params', `${p.user} is not a member`)
        await s.setRole(p.group, p.user, 'admin')
        await announce(p.group, { change: 'promoted', by: device.userId, users: [p.user] })
        return { ok: true }
      }
    })

    protocol.registerMethod('groups.leave', {
      params: GroupRef,
      handler: async (device, p) => {
        const { s, group } = await load(p.group, device.userId)
        await s.remove(p.group, device.userId)
        const rest = group.members.filter((m) => m.user !== device.userId)
        // A group is never left without an admin: the longest-standing member takes over.
        const heir = rest.length && !rest.some((m) => m.role === 'admin') ? rest[0]!.user : undefined
        if (heir) await s.setRole(p.group, heir, 'admin')
        await announce(p.group, { change: 'left', by: device.userId, users: [device.userId] }, [device.userId])
        if (heir) await announce(p.group, { change: 'promoted', by: device.userId, users: [heir] })
        return { ok: true }
      }
    })

    registerGroupsAdmin(ctx, ops)

    ctx.hook('shutdown', async () => {
      await store.close()
    })

    return {
      members,
      groupsOf: async (userId) => (await initialised()).groupsOf(userId),
      onChange: (listener) => {
        listeners.push(listener)
      },
      get: async (groupId) => (await initialised()).get(groupId),
      systemUser: config.systemUser
    }
  }
})
