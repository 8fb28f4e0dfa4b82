// The device registry over the protocol's request/response (s/rpc): push.register, push.update,
// push.unregister, push.get, push.mute, push.unmute. docs/push.md has the reference.
import { z } from 'zod'
import { ConversationRef } from '../../schemas/protocol.js'
import { RpcError, type Device, type ProtocolApi } from '../protocol/index.js'
import { conversationRef } from './payload.js'
import type { RegistryStore } from './registry.js'
import type { Registration } from './types.js'

/** BCP 47-ish: `en`, `de-CH`, `zh-Hant-TW`, `pt_BR`. */
const Locale = z.string().regex(/^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,3}$/, { error: 'expected a language tag such as en or de-CH' })
/** APNs device tokens are hex (64 digits today; Apple says their length may change). */
const ApnsToken = z.string().regex(/^[0-9a-fA-F]{32,256}$/, { error: 'expected the APNs device token in hex' })
/** FCM registration tokens: printable ASCII without spaces. */
const FcmToken = z.string().regex(/^[\x21-\x7e]{1,4096}$/, { error: 'expected the FCM registration token' })
/** An app's bundle id (the apns-topic), e.g. com.example.chat. */
const BundleId = z.string().regex(/^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/, { error: 'expected a bundle id such as com.example.chat' }).max(155)

export const RegisterParams = z.discriminatedUnion('provider', [
  z
    .object({
      provider: z.literal('apns'),
      token: ApnsToken,
      topic: BundleId.optional(),
      environment: z.enum(['production', 'sandbox']).default('production'),
      locale: Locale.optional(),
      previews: z.boolean().optional()
    })
    .strict(),
  z.object({ provider: z.literal('fcm'), token: FcmToken, locale: Locale.optional(), previews: z.boolean().optional() }).strict()
])

const UpdateParams = z
  .object({ locale: Locale.nullable().optional(), previews: z.boolean().optional() })
  .strict()
  .refine((p) => p.locale !== undefined || p.previews !== undefined, { error: 'expected locale or previews' })

/** The latest time JavaScript dates hold: a mute "forever". */
export const FOREVER = 8_640_000_000_000_000
const MuteParams = z
  .object({
    conversation: ConversationRef,
    until: z.union([z.number().int().min(0).max(FOREVER), z.literal('forever')]).describe('Epoch ms, or "forever"; a past time unmutes')
  })
  .strict()

export interface RpcDeps {
  protocol: ProtocolApi
  registry: () => Promise<RegistryStore>
  /** Bundle id for APNs registrations that name none. */
  defaultTopic: string | undefined
  previewsByDefault: boolean
}

/** What a device is told about its registration (the token itself stays on the server side). */
export function registrationView(r: Registration) {
  return {
    provider: r.provider,
    ...(r.topic !== undefined ? { topic: r.topic } : {}),
    ...(r.environment !== undefined ? { environment: r.environment } : {}),
    ...(r.locale !== undefined ? { locale: r.locale } : {}),
    previews: r.previews,
    tokenSuffix: r.token.slice(-6),
    updatedAt: r.updatedAt
  }
}

const keyOf = (device: Device, c: ConversationRef): string => {
  if (c.kind === 'group') return `g:${c.id}`
  const [a, b] = device.userId < c.id ? [device.userId, c.id] : [c.id, device.userId]
  return `dm:${a}:${b}`
}

export function registerMethods(d: RpcDeps): void {
  const { protocol } = d

  protocol.registerMethod('push.register', {
    params: RegisterParams,
    handler: async (device, p) => {
      const registry = await d.registry()
      const topic = p.provider === 'apns' ? (p.topic ?? d.defaultTopic) : undefined
      if (p.provider === 'apns' && !topic) throw new RpcError('invalid_params', 'topic (the app\'s bundle id) is required: the server has no default')
      const existing = await registry.get(device.userId, device.deviceId)
      // A token refresh keeps the device's choices.
      const registration: Registration = {
        user: device.userId,
        device: device.deviceId,
        provider: p.provider,
        token: p.provider === 'apns' ? p.token.toLowerCase() : p.token,
        ...(p.provider === 'apns' ? { topic, environment: p.environment } : {}),
        locale: p.locale ?? existing?.locale,
        previews: p.previews ?? existing?.previews ?? d.previewsByDefault,
        updatedAt: Date.now()
      }
      await registry.register(registration)
      return registrationView(registration)
    }
  })

  protocol.registerMethod('push.update', {
    params: UpdateParams,
    handler: async (device, p) => {
      const updated = await (await d.registry()).update(device.userId, device.deviceId, p, Date.now())
      if (!updated) throw new RpcError('invalid_params', 'this device has no push registration: push.register first')
      return registrationView(updated)
    }
  })

  protocol.registerMethod('push.unregister', {
    params: z.object({}).strict(),
    handler: async (device) => ({ removed: await (await d.registry()).unregister(device.userId, device.deviceId) })
  })

  protocol.registerMethod('push.get', {
    params: z.object({}).strict(),
    handler: async (device) => {
      const registry = await d.registry()
      const registration = await registry.get(device.userId, device.deviceId)
      const mutes = await registry.mutes(device.userId, Date.now())
      return {
        registration: registration ? registrationView(registration) : null,
        mutes: mutes.map((m) => ({ conversation: conversationRef(m.conversation, device.userId), until: m.until >= FOREVER ? 'forever' : m.until }))
      }
    }
  })

  protocol.registerMethod('push.mute', {
    params: MuteParams,
    handler: async (device, p) => {
      if (p.conversation.kind === 'group' && !(await protocol.isMember(p.conversation.id, device.userId))) {
        throw new RpcError('not_a_member', `you are not a member of group ${p.conversation.id}`)
      }
      const until = p.until === 'forever' ? FOREVER : p.until
      const now = Date.now()
      await (await d.registry()).mute(device.userId, keyOf(device, p.conversation), until, now)
      return until > now ? { conversation: p.conversation, muted: true, until: p.until } : { conversation: p.conversation, muted: false }
    }
  })

  protocol.registerMethod('push.unmute', {
    params: z.object({ conversation: ConversationRef }).strict(),
    handler: async (device, p) => {
      const now = Date.now()
      await (await d.registry()).mute(device.userId, keyOf(device, p.conversation), 0, now)
      return { conversation: p.conversation, muted: false }
    }
  })
}
