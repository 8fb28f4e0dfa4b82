// push on the admin API (docs/push.md#operations):
//   POST /admin/v1/push/test     send a test notification to a user's devices now (operator, audited)
//   GET  /admin/v1/push/tokens   a user's registered devices, tokens abbreviated (operator)
//   the `push` section of GET /admin/v1/users/:user (parley admin users show)
// Tokens never leave the node whole: the first and last characters are enough to match one with an
// app's log, and a whole token lets anyone holding the provider credentials push to the device.
import { z } from 'zod'
import { AdminError } from '../../broker/admin/api.js'
import type { PluginContext } from '../../broker/plugin-api.js'
import { Id } from '../../schemas/identity.js'
import { conversationRef } from './payload.js'
import type { RegistryStore } from './registry.js'
import { FOREVER } from './rpc.js'
import type { DeviceStatus, PushProvider, Registration } from './types.js'

/** What one device answered a test notification. */
export const TestResult = z.object({
  device: z.string(),
  provider: z.enum(['apns', 'fcm']),
  via: z.enum(['apns', 'fcm', 'log']).describe('the provider that handled it: log when no credentials are configured for it'),
  ok: z.boolean(),
  id: z.string().optional().describe("the provider's id of the notification"),
  status: z.number().int().optional(),
  reason: z.string().optional().describe("the provider's reason for a refusal"),
  removed: z.boolean().optional().describe('the provider called the token dead: the registration was removed')
})
export type TestResult = z.infer<typeof TestResult>

const PushResultView = z.object({
  at: z.number().int(),
  ok: z.boolean(),
  via: z.enum(['apns', 'fcm', 'log']),
  type: z.enum(['message', 'badge', 'test']),
  status: z.number().int().optional(),
  reason: z.string().optional()
})

export const PushDevice = z.object({
  device: z.string(),
  platform: z.enum(['ios', 'android']).describe('as the provider implies: APNs for iOS, FCM for Android'),
  provider: z.enum(['apns', 'fcm']),
  via: z.enum(['apns', 'fcm', 'log']).describe('what sends to it on this node: log when no credentials are configured for the provider'),
  token: z.string().describe('abbreviated: first and last characters, never the whole token'),
  tokenLength: z.number().int(),
  app: z.string().optional().describe('APNs: the bundle id (apns-topic); FCM: the Firebase project'),
  environment: z.enum(['production', 'sandbox']).optional(),
  locale: z.string().optional(),
  previews: z.boolean(),
  createdAt: z.number().int().optional().describe('first registration of the device (absent for registrations made before it was recorded)'),
  updatedAt: z.number().int(),
  lastResult: PushResultView.optional().describe('the last push to the token it holds now')
})
export type PushDevice = z.infer<typeof PushDevice>

/** `5f2c1a…c0ffe1`: enough to recognise a token, not enough to use it. */
export function abbreviateToken(token: string): string {
  const n = Math.min(6, Math.floor(token.length / 4))
  return n > 0 ? `${token.slice(0, n)}…${token.slice(-n)}` : '…'
}

export interface PushAdminDeps {
  registry: () => Promise<RegistryStore>
  providerFor: (r: Registration) => PushProvider
  /** The Firebase project of the configured FCM credentials. */
  fcmProject: string | undefined
  sendTest(user: string, device?: string): Promise<TestResult[]>
}

export function deviceView(d: DeviceStatus, deps: Pick<PushAdminDeps, 'providerFor' | 'fcmProject'>): PushDevice {
  const app = d.provider === 'apns' ? d.topic : deps.fcmProject
  return {
    device: d.device,
    platform: d.provider === 'apns' ? 'ios' : 'android',
    provider: d.provider,
    via: deps.providerFor(d).name,
    token: abbreviateToken(d.token),
    tokenLength: d.token.length,
    ...(app !== undefined ? { app } : {}),
    ...(d.environment !== undefined ? { environment: d.environment } : {}),
    ...(d.locale !== undefined ? { locale: d.locale } : {}),
    previews: d.previews,
    ...(d.createdAt !== undefined ? { createdAt: d.createdAt } : {}),
    updatedAt: d.updatedAt,
    ...(d.lastResult ? { lastResult: d.lastResult } : {})
  }
}

export function registerPushAdmin(ctx: PluginContext<unknown>, deps: PushAdminDeps): void {
  const devicesOf = async (user: string) => (await (await deps.registry()).statusOf(user)).map((d) => deviceView(d, deps))

  ctx.admin.route({
    method: 'POST',
    path: '/push/test',
    tag: 'push',
    scope: 'operator',
    summary: "Send a test notification to a user's registered devices (or one) now, and report each provider's answer",
    description: 'Answers 404 when the user (or the device) has no push registration. A token the provider calls dead is removed, as for any push.',
    body: z.object({ user: Id, device: Id.optional() }).strict(),
    response: z.object({ user: z.string(), results: z.array(TestResult) }),
    handler: async ({ body, audit }) => {
      audit({ user: body.user, ...(body.device ? { device: body.device } : {}) })
      const results = await deps.sendTest(body.user, body.device)
      if (!results.length) throw new AdminError('not_found', `no push registration for ${body.user}${body.device ? `:${body.device}` : ''}`)
      audit({ accepted: results.filter((r) => r.ok).length, refused: results.filter((r) => !r.ok).length })
      return { user: body.user, results }
    }
  })

  ctx.admin.route({
    method: 'GET',
    path: '/push/tokens',
    tag: 'push',
    scope: 'operator',
    summary: "A user's registered push devices: platform, provider, abbreviated token, app, dates, and how the last push went",
    query: z.object({ user: Id }).strict(),
    response: z.object({ user: z.string(), devices: z.array(PushDevice) }),
    handler: async ({ query }) => ({ user: query.user, devices: await devicesOf(query.user) })
  })

  ctx.admin.userFacet('push', async (user) => {
    const registry = await deps.registry()
    const [devices, mutes] = await Promise.all([devicesOf(user), registry.mutes(user, Date.now())])
    return {
      devices,
      mutes: mutes.map((m) => ({ conversation: conversationRef(m.conversation, user), until: m.until >= FOREVER ? 'forever' : m.until }))
    }
  })
}
