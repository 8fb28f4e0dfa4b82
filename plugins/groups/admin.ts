// Groups in the admin API (parley admin groups): list, show, create, add, remove, and the `groups`
// section of a user's view. An operator is not a member: no membership or admin check, but every
// change goes through the same operations as the members' RPCs (GroupOps), so it has the same
// effects: membership caches dropped on every node, Events to the members, system notices, and
// groups.maxMembers. Changes are made `by` the system user (groups.systemUser).
import { z } from 'zod'
import { AdminError } from '../../broker/admin/api.js'
import type { PluginContext } from '../../broker/plugin-api.js'
import { Id } from '../../schemas/identity.js'
import type { GroupsConfig } from './index.js'
import { ChangeRefused, type GroupOps } from './ops.js'
import type { GroupSummary, ListPosition } from './store.js'

const Role = z.enum(['admin', 'member'])
const Member = z.object({ user: z.string(), role: Role, joinedAt: z.number().int() })
const GroupView = z.object({
  id: z.string(),
  name: z.string(),
  createdBy: z.string().describe('the owner: its first admin'),
  createdAt: z.number().int(),
  members: z.array(Member).describe('in join order')
})
const Summary = z.object({
  id: z.string(),
  name: z.string(),
  createdBy: z.string(),
  createdAt: z.number().int(),
  members: z.number().int().describe('member count'),
  role: Role.optional().describe("with ?user=: that user's role")
})

const Name = z.string().trim().min(1).max(100)
const GroupParam = z.object({ group: Id }).strict()

/** A listing position as the API hands it out: `<createdAt>.<groupId>`. */
const CURSOR = /^(\d{1,16})\.([A-Za-z0-9_-]{1,64})$/
const encodePosition = (g: Pick<GroupSummary, 'createdAt' | 'id'>) => `${g.createdAt}.${g.id}`
const decodePosition = (cursor: string): ListPosition => {
  const m = CURSOR.exec(cursor)!
  return { createdAt: Number(m[1]), id: m[2]! }
}
const after = (a: Pick<GroupSummary, 'createdAt' | 'id'>, b: ListPosition) => a.createdAt > b.createdAt || (a.createdAt === b.createdAt && a.id > b.id)

type Config = z.output<typeof GroupsConfig>

export function registerGroupsAdmin(ctx: PluginContext<Config>, ops: GroupOps): void {
  const { config } = ctx
  const by = config.systemUser

  const mustExist = async (groupId: string) => {
    const group = await (await ops.store()).get(groupId)
    if (!group) throw new AdminError('not_found', `no group ${groupId}`)
    return group
  }
  /** The members' rules, as admin errors: a limit is a conflict with the group's state, unless the request alone breaks it. */
  const refused = async <T>(work: Promise<T>, limitCode: 'conflict' | 'invalid_request'): Promise<T> =>
    work.catch((err: unknown) => {
      if (err instanceof ChangeRefused) throw new AdminError(err.rule === 'limit' ? limitCode : 'invalid_request', err.message)
      throw err
    })

  ctx.admin.userFacet('groups', async (user) => (await ops.store()).groupsOf(user))

  ctx.admin.route({
    method: 'GET',
    path: '/groups',
    tag: 'groups',
    scope: 'read',
    summary: 'Groups, oldest first: every group, or those of one user',
    query: z
      .object({
        user: Id.optional().describe("only this user's groups, with its role"),
        limit: z.coerce.number().int().min(1).max(1000).default(100),
        after: z.string().regex(CURSOR, { error: 'expected the `next` of a previous answer' }).optional()
      })
      .strict(),
    response: z.object({ groups: z.array(Summary), next: z.string().optional().describe('more follow: pass it as ?after=') }),
    handler: async ({ query }) => {
      const s = await ops.store()
      const from = query.after ? decodePosition(query.after) : undefined
      let rows: Array<z.input<typeof Summary>>
      let more: boolean
      if (query.user) {
        // A user's groups are few enough to read whole; the page is cut here.
        const mine = await s.groupsOf(query.user)
        const roles = new Map(mine.map((g) => [g.id, g.role]))
        const all = (await s.summaries(mine.map((g) => g.id))).filter((g) => !from || after(g, from))
        rows = all.slice(0, query.limit).map((g) => ({ ...g, role: roles.get(g.id) }))
        more = all.length > query.limit
      } else {
        const page = await s.list(query.limit + 1, from)
        rows = page.slice(0, query.limit)
        more = page.length > query.limit
      }
      return { groups: rows, ...(more && rows.length ? { next: encodePosition(rows.at(-1)!) } : {}) }
    }
  })

  ctx.admin.route({
    method: 'GET',
    path: '/groups/:group',
    tag: 'groups',
    scope: 'read',
    summary: 'A group: name, owner, members with their roles, creation time',
    params: GroupParam,
    response: GroupView,
    handler: async ({ params }) => mustExist(params.group)
  })

  ctx.admin.route({
    method: 'POST',
    path: '/groups',
    tag: 'groups',
    scope: 'operator',
    status: 201,
    summary: 'Create a group for a user (its owner and first admin), as the members would with groups.create',
    description: `The members get a "created" Event and the conversation starts with the "created" system notice, by the system user (groups.systemUser).`,
    body: z
      .object({
        name: Name,
        owner: Id,
        members: z.array(Id).max(100_000).default([]).describe('besides the owner')
      })
      .strict(),
    response: GroupView,
    handler: async ({ body, audit }) => {
      const group = await refused(ops.create(by, body.owner, body.name, body.members), 'invalid_request')
      audit({ group: group.id, owner: body.owner, members: group.members.length })
      return group
    }
  })

  ctx.admin.route({
    method: 'POST',
    path: '/groups/:group/members',
    tag: 'groups',
    scope: 'operator',
    summary: 'Add members (those already in are skipped), as an admin of the group would with groups.add',
    params: GroupParam,
    body: z.object({ users: z.array(Id).min(1).max(100_000) }).strict(),
    response: z.object({ group: z.string(), added: z.array(z.string()), already: z.array(z.string()).describe('already members: unchanged') }),
    handler: async ({ params, body, audit }) => {
      const group = await mustExist(params.group)
      const added = await refused(ops.add(by, group, body.users), 'conflict')
      audit({ group: params.group, added })
      return { group: params.group, added, already: [...new Set(body.users)].filter((u) => !added.includes(u)) }
    }
  })

  ctx.admin.route({
    method: 'POST',
    path: '/groups/:group/members/remove',
    tag: 'groups',
    scope: 'operator',
    summary: 'Remove members (admins included), as an admin of the group would with groups.remove',
    description:
      'Every user must be a member, else nothing is removed (404). Each removal is a "removed" Event and notice; when no admin remains, the longest-standing member is promoted, as on groups.leave.',
    params: GroupParam,
    body: z.object({ users: z.array(Id).min(1).max(100_000) }).strict(),
    response: z.object({ group: z.string(), removed: z.array(z.string()), promoted: z.string().optional().describe('the new admin, when none was left') }),
    handler: async ({ params, body, audit }) => {
      const group = await mustExist(params.group)
      const users = [...new Set(body.users)]
      const strangers = users.filter((u) => !group.members.some((m) => m.user === u))
      if (strangers.length) throw new AdminError('not_found', `not members of group ${params.group}: ${strangers.join(', ')}`)
      const removed: string[] = []
      for (const user of users) if (await ops.remove(by, params.group, user)) removed.push(user)
      const promoted = await ops.ensureAdmin(by, params.group)
      audit({ group: params.group, removed, ...(promoted ? { promoted } : {}) })
      return { group: params.group, removed, ...(promoted ? { promoted } : {}) }
    }
  })
}
