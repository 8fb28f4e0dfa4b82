// parley admin groups list | show | create | add | remove
// Operators act on groups without being members; the changes have the members' own effects
// (Events, system notices, membership caches dropped on every node, groups.maxMembers), made by
// the system user (groups.systemUser). Routes: plugins/groups/admin.ts.
import type { Command } from 'commander'
import { ADMIN_EXIT, CliError } from './client.js'
import { action, requireId, show, withCommon } from './kit.js'
import { fields, table, when } from './output.js'

interface Member {
  user: string
  role: 'admin' | 'member'
  joinedAt: number
}
interface Group {
  id: string
  name: string
  createdBy: string
  createdAt: number
  members: Member[]
}
interface Summary {
  id: string
  name: string
  createdBy: string
  createdAt: number
  members: number
  role?: string
}

/** A positive integer option, checked before any request. */
export function positiveInt(option: string, value: string, max: number): number {
  const n = Number(value)
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1 || n > max) throw new CliError(ADMIN_EXIT.usage, `${option} "${value}": expected an integer from 1 to ${max}`)
  return n
}

/** Users given as arguments or as a comma-separated list, each checked locally. */
function userList(what: string, values: string[]): string[] {
  const users = values.flatMap((v) => v.split(',')).map((u) => u.trim()).filter(Boolean)
  if (!users.length) throw new CliError(ADMIN_EXIT.usage, `${what}: expected at least one user id`)
  return users.map((u) => requireId(what, u))
}

function renderGroup(g: Group): string {
  const admins = g.members.filter((m) => m.role === 'admin').map((m) => m.user)
  return [
    fields([
      ['group', g.id],
      ['name', g.name],
      ['owner', g.createdBy],
      ['admins', admins.join(', ')],
      ['created', when(g.createdAt)],
      ['members', g.members.length]
    ]),
    '',
    table(
      ['user', 'role', 'joined'],
      g.members.map((m) => [m.user, m.role, when(m.joinedAt)])
    )
  ].join('\n')
}

export function registerGroupsCommands(admin: Command): void {
  const groups = admin.command('groups').description('groups: list, show, create, add and remove members (as an operator, no membership needed)')

  withCommon(groups.command('list'))
    .description('list groups, oldest first: every group, or those of one user with its role')
    .option('--user <user>', "only this user's groups")
    .option('--limit <n>', 'at most this many (1-1000)', '100')
    .option('--after <cursor>', 'continue a listing: the cursor the previous page printed')
    .action(
      action('groups list', async (ctx, options: { user?: string; limit: string; after?: string }) => {
        if (options.user !== undefined) requireId('--user', options.user)
        const limit = positiveInt('--limit', options.limit, 1000)
        if (options.after !== undefined && !/^\d{1,16}\.[A-Za-z0-9_-]{1,64}$/.test(options.after)) {
          throw new CliError(ADMIN_EXIT.usage, `--after "${options.after}": expected the cursor a previous page printed`)
        }
        const answer = await ctx.client.request<{ groups: Summary[]; next?: string }>('GET', '/groups', { query: { user: options.user, limit, after: options.after } })
        show(ctx, answer, () => {
          const columns = ['group', 'name', 'members', 'owner', 'created', ...(options.user ? ['role'] : [])]
          const rows = answer.groups.map((g) => [g.id, g.name, g.members, g.createdBy, when(g.createdAt), ...(options.user ? [g.role] : [])])
          return answer.groups.length ? table(columns, rows) : options.user ? `${options.user} is in no group` : 'no groups'
        })
        if (answer.next && !ctx.json) ctx.note(`more groups: --after ${answer.next}`)
      })
    )

  withCommon(groups.command('show'))
    .description('a group: name, owner, admins, members with their roles, creation time')
    .argument('<group>', 'the group id')
    .action(
      action('groups show', async (ctx, group: string) => {
        requireId('group', group)
        const g = await ctx.client.request<Group>('GET', `/groups/${group}`)
        show(ctx, g, () => renderGroup(g))
      })
    )

  withCommon(groups.command('create'))
    .description("create a group for a user, its owner and first admin; the members get the \"created\" Event and notice")
    .requiredOption('-n, --name <name>', 'the group name (1-100 characters)')
    .requiredOption('-o, --owner <user>', 'the owner: its first admin')
    .option('-m, --members <users>', 'other members, comma-separated: a,b,c')
    .action(
      action('groups create', async (ctx, options: { name: string; owner: string; members?: string }) => {
        const name = options.name.trim()
        if (!name || name.length > 100) throw new CliError(ADMIN_EXIT.usage, '--name: expected 1-100 characters')
        requireId('--owner', options.owner)
        const members = options.members === undefined ? [] : userList('--members', [options.members])
        const g = await ctx.client.request<Group>('POST', '/groups', { body: { name, owner: options.owner, members } })
        show(ctx, g, () => renderGroup(g))
        if (!ctx.json) ctx.note(`group ${g.id} created`)
      })
    )

  withCommon(groups.command('add'))
    .description('add members to a group (members already in are skipped); they and the members are told')
    .argument('<group>', 'the group id')
    .argument('<users...>', 'user ids (space- or comma-separated)')
    .action(
      action('groups add', async (ctx, group: string, users: string[]) => {
        requireId('group', group)
        const list = userList('user', users)
        const answer = await ctx.client.request<{ group: string; added: string[]; already: string[] }>('POST', `/groups/${group}/members`, { body: { users: list } })
        show(ctx, answer, () =>
          [
            answer.added.length ? `added to ${group}: ${answer.added.join(', ')}` : `nobody added to ${group}`,
            ...(answer.already.length ? [`already members: ${answer.already.join(', ')}`] : [])
          ].join('\n')
        )
      })
    )

  withCommon(groups.command('remove'))
    .description('remove members from a group (all must be members, else nothing is removed); when no admin remains, the longest-standing member becomes admin')
    .argument('<group>', 'the group id')
    .argument('<users...>', 'user ids (space- or comma-separated)')
    .action(
      action('groups remove', async (ctx, group: string, users: string[]) => {
        requireId('group', group)
        const list = userList('user', users)
        const answer = await ctx.client.request<{ group: string; removed: string[]; promoted?: string }>('POST', `/groups/${group}/members/remove`, { body: { users: list } })
        show(ctx, answer, () =>
          [`removed from ${group}: ${answer.removed.join(', ')}`, ...(answer.promoted ? [`${answer.promoted} is now an admin (no admin was left)`] : [])].join('\n')
        )
      })
    )
}
