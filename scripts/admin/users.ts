// parley admin users show | ban | unban | bans, and parley admin devices revoke
import type { Command } from 'commander'
import { ADMIN_EXIT, CliError } from './client.js'
import { action, requireId, show, withCommon, type AdminRun } from './kit.js'
import { ago, fields, table, when, type Cell } from './output.js'

interface UserClient {
  clientId: string
  node: string
  connectedAt?: number
  address?: string
}
interface UserView {
  user: string
  clients: UserClient[]
  missing: string[]
  facets: Record<string, unknown>
}
interface Ban {
  user: string
  since: number
  until?: number
  reason?: string
  by: string
}
interface Enforced {
  disconnected: Array<{ clientId: string; node: string }>
  missing: string[]
}
interface AuthFacet {
  banned: boolean
  ban?: Ban
  revokedDevices: Array<{ device: string; revokedAt: number; by: string }>
}
interface PresenceFacet {
  online: boolean
  lastSeen?: number
  devices: string[]
  privacy?: { online: string; lastSeen: string }
  contacts?: number
}

const DURATION = /^[1-9]\d{0,5}(s|m|h|d)$/

type Obj = Record<string, unknown>
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v)
const facetError = (v: unknown): string | undefined => (isObj(v) && Object.keys(v).length === 1 && typeof v.error === 'string' ? v.error : undefined)
/** A facet's list: the facet itself when it is an array, else its `key` field when that is one. */
const listOf = (facet: unknown, key: string): Obj[] | undefined => {
  const list = Array.isArray(facet) ? facet : isObj(facet) && Array.isArray(facet[key]) ? facet[key] : undefined
  return list?.filter(isObj)
}

/** A field's value as a cell: epoch-ms times by name (…At, since, until, lastSeen), nested values as JSON. */
function cell(key: string, value: unknown): Cell {
  if (typeof value === 'number' && /(At|since|until|Seen)$/.test(key) && value > 1e12) return when(value)
  if (value === null || value === undefined || typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') return value
  if (Array.isArray(value) && value.every((v) => typeof v === 'string' || typeof v === 'number')) return value.join(', ')
  return JSON.stringify(value)
}

/** Any facet, for those this command has no special rendering for. */
function generic(value: unknown): string {
  const rows = listOf(value, '')
  if (rows) {
    if (!rows.length) return '(none)'
    const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))]
    return table(columns, rows.map((r) => columns.map((c) => cell(c, r[c]))))
  }
  if (isObj(value)) {
    const entries = Object.entries(value)
    return entries.length ? fields(entries.map(([k, v]) => [k, cell(k, v)])) : '(none)'
  }
  return String(cell('', value))
}

const indent = (text: string) => text.replace(/^/gm, '  ')

function banText(ban: Ban): string {
  return [`since ${when(ban.since)}`, ban.until ? `until ${when(ban.until)}` : 'until unbanned', `by ${ban.by}`, ...(ban.reason ? [`reason: ${ban.reason}`] : [])].join(', ')
}

function renderUser(view: UserView): string {
  const now = Date.now()
  const { auth, presence, groups, push, ...others } = view.facets
  const out: string[] = []
  const head: Array<[string, Cell]> = [['user', view.user]]

  const authError = facetError(auth)
  const authFacet = !authError && isObj(auth) ? (auth as unknown as AuthFacet) : undefined
  if (authError) head.push(['banned', `unknown (${authError})`])
  else if (authFacet) head.push(['banned', authFacet.banned && authFacet.ban ? `YES, ${banText(authFacet.ban)}` : 'no'])

  const presenceError = facetError(presence)
  const presenceFacet = !presenceError && isObj(presence) ? (presence as unknown as PresenceFacet) : undefined
  if (presenceError) head.push(['presence', `unknown (${presenceError})`])
  else if (presenceFacet) {
    head.push(['presence', presenceFacet.online ? 'online' : 'offline'])
    head.push(['last seen', presenceFacet.online ? 'now' : presenceFacet.lastSeen ? `${when(presenceFacet.lastSeen)} (${ago(now - presenceFacet.lastSeen)} ago)` : 'never seen'])
    if (presenceFacet.privacy) head.push(['privacy', `online to ${presenceFacet.privacy.online}, last seen to ${presenceFacet.privacy.lastSeen}`])
    if (presenceFacet.contacts !== undefined) head.push(['contacts', presenceFacet.contacts])
  }
  if (view.missing.length) head.push(['not answering', `${view.missing.join(', ')} (their connections are not listed)`])
  out.push(fields(head))

  // Devices: every device any source knows of, one row each.
  const pushError = facetError(push)
  const pushDevices = pushError ? undefined : listOf(push, 'devices')
  const devices = new Map<string, { nodes: string[]; addresses: string[]; presence: boolean; push?: string; revokedAt?: number }>()
  const device = (id: string) => {
    let d = devices.get(id)
    if (!d) devices.set(id, (d = { nodes: [], addresses: [], presence: false }))
    return d
  }
  for (const c of view.clients) {
    const d = device(c.clientId.slice(c.clientId.indexOf(':') + 1))
    d.nodes.push(c.node)
    if (c.address) d.addresses.push(c.address)
  }
  for (const id of presenceFacet?.devices ?? []) device(id).presence = true
  for (const p of pushDevices ?? []) {
    const id = p.device ?? p.deviceId
    const provider = p.provider ?? p.platform
    if (typeof id === 'string') device(id).push = typeof provider === 'string' ? provider : 'yes'
  }
  for (const r of authFacet?.revokedDevices ?? []) device(r.device).revokedAt = r.revokedAt
  out.push('', 'DEVICES')
  out.push(
    devices.size
      ? indent(
          table(
            ['device', 'connected', 'node', 'address', 'push', 'tokens revoked'],
            [...devices.entries()]
              .sort(([a], [b]) => a.localeCompare(b))
              .map(([id, d]) => [id, d.nodes.length ? 'yes' : d.presence ? 'yes (presence)' : 'no', d.nodes.join(', '), d.addresses.join(', '), d.push, d.revokedAt ? when(d.revokedAt) : undefined])
          )
        )
      : '  (none known)'
  )
  if (pushError) out.push(`  push: unknown (${pushError})`)

  if (groups !== undefined) {
    out.push('', 'GROUPS')
    const groupsError = facetError(groups)
    const list = groupsError ? undefined : listOf(groups, 'groups')
    if (groupsError) out.push(`  unknown (${groupsError})`)
    else if (list) {
      const columns = [...new Set(['id', 'name', 'role', ...list.flatMap((g) => Object.keys(g))])].filter((c) => list.some((g) => c in g))
      out.push(list.length ? indent(table(columns, list.map((g) => columns.map((c) => cell(c, g[c]))))) : '  (none)')
    } else out.push(indent(generic(groups)))
  }
  // What push says besides its device list.
  if (isObj(push) && !pushError) {
    const { devices: _devices, ...rest } = push
    if (Object.keys(rest).length) out.push('', 'PUSH', indent(generic(rest)))
  }
  for (const [name, value] of Object.entries(others).sort(([a], [b]) => a.localeCompare(b))) {
    const err = facetError(value)
    out.push('', name.toUpperCase(), indent(err ? `unknown (${err})` : generic(value)))
  }
  return out.join('\n')
}

function enforcedText(e: Enforced): string {
  if (!e.disconnected.length) return 'no connection to close'
  return `${e.disconnected.length} connection${e.disconnected.length === 1 ? '' : 's'} closed: ${e.disconnected.map((d) => `${d.clientId} (${d.node})`).join(', ')}`
}

function warnMissing(ctx: AdminRun, missing: string[]): void {
  if (missing.length) ctx.note(`warning: ${missing.join(', ')} did not confirm; the change reaches them within auth-jwt.accessCacheMs`)
}

export function registerUsersCommands(admin: Command): void {
  const users = admin.command('users').description("a user's devices, groups, presence and bans")

  withCommon(users.command('show'))
    .description("everything the cluster knows about a user: devices (connected on any node, push, revoked), ban, presence and last seen, groups, and each plugin's section")
    .argument('<user>', 'user id')
    .action(
      action('users show', async (ctx, user: string) => {
        requireId('user', user)
        const view = await ctx.client.request<UserView>('GET', `/users/${user}`)
        show(ctx, view, () => renderUser(view))
      })
    )

  withCommon(users.command('ban'))
    .description('ban a user: their devices are disconnected at once on every node, and every CONNECT is refused (CONNACK 5) until unban or the end of the ban; banning again replaces the ban (operator scope)')
    .argument('<user>', 'user id')
    .option('-r, --reason <text>', 'why (1-500 characters; for operators, never shown to the user)')
    .option('--for <duration>', 'end the ban after this, e.g. 90s, 15m, 12h, 30d (default: until unban)')
    .addHelpText('after', '\nExamples:\n  parley admin users ban alice --reason "spam reports" --for 7d\n  parley admin users unban alice')
    .action(
      action('users ban', async (ctx, user: string, options: { reason?: string; for?: string }) => {
        requireId('user', user)
        if (options.for !== undefined && !DURATION.test(options.for)) throw new CliError(ADMIN_EXIT.usage, `--for "${options.for}": expected a duration like 90s, 15m, 12h, 30d`)
        if (options.reason !== undefined && (options.reason.length < 1 || options.reason.length > 500)) throw new CliError(ADMIN_EXIT.usage, '--reason: expected 1-500 characters')
        const result = await ctx.client.request<{ ban: Ban; replaced?: Ban } & Enforced>('POST', `/users/${user}/ban`, {
          body: { ...(options.reason !== undefined ? { reason: options.reason } : {}), ...(options.for ? { duration: options.for } : {}) }
        })
        show(ctx, result, () =>
          [`${user} banned ${result.ban.until ? `until ${when(result.ban.until)}` : 'until unbanned'}${result.ban.reason ? ` (${result.ban.reason})` : ''}`, ...(result.replaced ? [`replaces the ban ${banText(result.replaced)}`] : []), enforcedText(result)].join('\n')
        )
        warnMissing(ctx, result.missing)
      })
    )

  withCommon(users.command('unban'))
    .description('lift a ban: the user may connect again at once (operator scope); exit 3 when the user is not banned')
    .argument('<user>', 'user id')
    .action(
      action('users unban', async (ctx, user: string) => {
        requireId('user', user)
        const result = await ctx.client.request<{ unbanned: Ban; missing: string[] }>('DELETE', `/users/${user}/ban`)
        show(ctx, result, () => `${user} unbanned (was banned ${banText(result.unbanned)})`)
        warnMissing(ctx, result.missing)
      })
    )

  withCommon(users.command('bans'))
    .description('list the bans in force')
    .action(
      action('users bans', async (ctx) => {
        const { bans } = await ctx.client.request<{ bans: Ban[] }>('GET', '/bans')
        show(ctx, bans, () => (bans.length ? table(['user', 'since', 'until', 'by', 'reason'], bans.map((b) => [b.user, when(b.since), b.until ? when(b.until) : 'unbanned', b.by, b.reason])) : 'no bans in force'))
      })
    )

  const devices = admin.command('devices').description("a user's devices")
  withCommon(devices.command('revoke'))
    .description(
      "revoke a device's tokens: those issued until now (by iat, to the second) are refused with CONNACK 4 and the device is disconnected; a token issued afterwards works, so the app can log in again (operator scope)"
    )
    .argument('<user>', 'user id')
    .argument('<device>', 'device id (the part after ":" in the client id)')
    .action(
      action('devices revoke', async (ctx, user: string, device: string) => {
        requireId('user', user)
        requireId('device', device)
        const result = await ctx.client.request<{ revocation: { revokedAt: number } } & Enforced>('POST', `/users/${user}/devices/${device}/revoke`)
        show(ctx, result, () => [`${user}:${device}: tokens issued up to ${when(result.revocation.revokedAt)} revoked`, enforcedText(result)].join('\n'))
        warnMissing(ctx, result.missing)
      })
    )
}
