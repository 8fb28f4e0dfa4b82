// auth-jwt on the admin API: ban and unban users, revoke a device's tokens, list bans, and the
// `auth` section of GET /users/:user (parley admin users show).
//
// A change is written to the store, then the cluster query `auth-jwt.enforce` reaches every node:
// each forgets its cached answer for the user and closes the user's connections that no longer
// pass, and answers with what it closed. A cluster query rather than ctx.cluster.broadcast: it
// travels the same way (the cluster emitter, to every node), but the operator learns which
// connections were closed and which nodes did not confirm (those apply the change when their cache
// entry expires, auth-jwt.accessCacheMs).
import { z } from 'zod'
import { AdminError } from '../../broker/admin/api.js'
import type { PluginContext } from '../../broker/plugin-api.js'
import { Id } from '../../schemas/identity.js'
import { parseTtl } from './keys.js'
import type { AccessStore, Ban } from './store.js'

const BanSchema = z.object({
  user: z.string(),
  since: z.number().int().describe('epoch ms'),
  until: z.number().int().optional().describe('epoch ms; absent: until unbanned'),
  reason: z.string().optional(),
  by: z.string().describe('name of the API key that banned')
})
const RevocationSchema = z.object({
  user: z.string(),
  device: z.string(),
  revokedAt: z.number().int().describe('epoch ms: tokens of the device issued up to this second are refused'),
  by: z.string()
})
const Enforced = {
  disconnected: z.array(z.object({ clientId: z.string(), node: z.string() })).describe('connections closed by the change'),
  missing: z.array(z.string()).describe('nodes that did not confirm within admin.queryTimeoutMs; they apply the change within auth-jwt.accessCacheMs')
}

const Duration = z.string().regex(/^[1-9]\d{0,5}(s|m|h|d)$/, { error: 'expected a duration like 90s, 15m, 12h, 30d' })

export function registerAccessAdmin(ctx: PluginContext<unknown>, store: () => Promise<AccessStore>, enforce: (user: string) => Promise<string[]>): void {
  const unavailable = async <T>(work: () => Promise<T>): Promise<T> => {
    try {
      return await work()
    } catch (err) {
      if (err instanceof AdminError) throw err
      ctx.log.warn({ err }, 'ban store unavailable')
      throw new AdminError('unavailable', `the ban store is not available: ${(err as Error).message}`)
    }
  }

  ctx.admin.handle('enforce', async (args) => {
    const { user } = z.object({ user: Id }).parse(args)
    return enforce(user)
  })
  const enforceEverywhere = async (user: string) => {
    const gathered = await ctx.admin.ask<string[]>('enforce', { user })
    return {
      disconnected: gathered.answers.flatMap((a) => (a.ok && a.result ? a.result.map((clientId) => ({ clientId, node: a.node })) : [])).sort((x, y) => x.clientId.localeCompare(y.clientId)),
      missing: [...gathered.missing, ...gathered.answers.filter((a) => !a.ok).map((a) => a.node)]
    }
  }

  ctx.admin.route({
    method: 'POST',
    path: '/users/:user/ban',
    tag: 'users',
    scope: 'operator',
    summary: "Ban a user: every device is disconnected at once on every node, and every CONNECT is refused (CONNACK 5) until unban or the ban's end",
    description: 'Banning a banned user replaces the ban (its reason and end).',
    params: z.object({ user: Id }),
    body: z
      .object({
        reason: z.string().min(1).max(500).optional().describe('shown to operators, never to the user'),
        duration: Duration.optional().describe('the ban ends after this; absent: until unbanned')
      })
      .strict(),
    response: z.object({ ban: BanSchema, replaced: BanSchema.optional().describe('the ban in force before, if any'), ...Enforced }),
    handler: async ({ params, body, caller, audit }) => {
      const since = Date.now()
      const ban: Ban = {
        user: params.user,
        since,
        ...(body.duration ? { until: since + parseTtl(body.duration) * 1000 } : {}),
        ...(body.reason ? { reason: body.reason } : {}),
        by: caller.name
      }
      const replaced = await unavailable(async () => (await store()).ban(ban))
      const enforced = await enforceEverywhere(params.user)
      audit({ user: params.user, until: ban.until ?? null, reason: ban.reason ?? null, replaced: Boolean(replaced), disconnected: enforced.disconnected.length, missing: enforced.missing })
      return { ban, ...(replaced ? { replaced } : {}), ...enforced }
    }
  })

  ctx.admin.route({
    method: 'DELETE',
    path: '/users/:user/ban',
    tag: 'users',
    scope: 'operator',
    summary: 'Lift a ban: the user may connect again at once, on every node',
    params: z.object({ user: Id }),
    response: z.object({ unbanned: BanSchema, missing: Enforced.missing }),
    handler: async ({ params, audit }) => {
      const lifted = await unavailable(async () => (await store()).unban(params.user, Date.now()))
      if (!lifted) throw new AdminError('not_found', `${params.user} is not banned`)
      const { missing } = await enforceEverywhere(params.user)
      audit({ user: params.user, lifted: { since: lifted.since, until: lifted.until ?? null, by: lifted.by }, missing })
      return { unbanned: lifted, missing }
    }
  })

  ctx.admin.route({
    method: 'GET',
    path: '/bans',
    tag: 'users',
    scope: 'read',
    summary: 'Bans in force',
    response: z.object({ bans: z.array(BanSchema) }),
    handler: async () => ({ bans: await unavailable(async () => (await store()).bans(Date.now())) })
  })

  ctx.admin.route({
    method: 'POST',
    path: '/users/:user/devices/:device/revoke',
    tag: 'devices',
    scope: 'operator',
    summary: "Revoke a device's tokens: those issued until now are refused (CONNACK 4) and its connection is closed; a token issued later works",
    description:
      'Tokens are compared by their iat claim, in seconds: a token issued in the same second as the revocation is refused too. A token without iat is refused for that device from now on.',
    params: z.object({ user: Id, device: Id }),
    response: z.object({ revocation: RevocationSchema, ...Enforced }),
    handler: async ({ params, caller, audit }) => {
      const revocation = { user: params.user, device: params.device, revokedAt: Date.now(), by: caller.name }
      await unavailable(async () => (await store()).revoke(revocation))
      const enforced = await enforceEverywhere(params.user)
      audit({ user: params.user, device: params.device, revokedAt: revocation.revokedAt, disconnected: enforced.disconnected.length, missing: enforced.missing })
      return { revocation, ...enforced }
    }
  })

  ctx.admin.userFacet('auth', async (user) => {
    const s = await store()
    const { ban, revocations } = await s.access(user)
    const now = Date.now()
    const banned = Boolean(ban && (ban.until === undefined || ban.until > now))
    return { banned, ...(banned ? { ban } : {}), revokedDevices: revocations.map(({ device, revokedAt, by }) => ({ device, revokedAt, by })) }
  })
}
