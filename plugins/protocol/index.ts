// protocol: the topic tree of docs/protocol.md, enforced.
//   subscribe  only inside one's own user tree u/{userId}/... (SUBACK 0x80 otherwise)
//   publish    only the upstream topics s/..., with a valid payload, to conversations one may write to
//   forward    device-scoped topics (u/{userId}/d/{deviceId}/...) reach that device only
// A refused publish is acknowledged and answered with an error on the device's own tree, so a
// client never retries a message that can never be accepted. Requests on s/rpc are dispatched to
// methods other plugins register; `ping` is built in.
import type { Client, PublishPacket } from 'aedes'
import { z } from 'zod'
import { definePlugin, type PluginContext, type PublishRejection } from '../../broker/plugin-api.js'
import { parseClientId } from '../../schemas/identity.js'
import {
  DOWN,
  ErrorCode,
  ReadMarker,
  DeliveredMarker,
  RpcRequest,
  SendMessage,
  Typing,
  parseDownTopic,
  parseUpTopic,
  type ErrorMessage,
  type RpcResponse
} from '../../schemas/protocol.js'
import { MembershipCache, type MembershipSource } from './membership.js'

export const ProtocolConfig = z
  .object({
    membershipCacheTtlMs: z.number().int().min(0).default(60_000).describe('How long a membership answer is reused'),
    membershipCacheSize: z.number().int().positive().default(100_000)
  })
  .strict()

/** Thrown by an RPC method to answer with a precise error code instead of `internal`. */
export class RpcError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string
  ) {
    super(message)
  }
}

export interface Device {
  userId: string
  deviceId: string
}

export interface RpcMethod<P extends z.ZodType> {
  params: P
  handler(device: Device, params: z.output<P>): Promise<unknown>
}

export interface ProtocolApi {
  /** The user and device a client is (undefined: no rights at all). */
  deviceOf(client: Client): Device | undefined
  /** Where group membership comes from (the groups plugin sets it). Until then nobody is a member. */
  setMembershipSource(source: MembershipSource): void
  /** Whether a user belongs to a group (cached). */
  isMember(groupId: string, userId: string): Promise<boolean>
  /** Forget cached memberships of a group (or of one member) on every node. */
  invalidateMembership(groupId: string, userId?: string): Promise<void>
  /** Answer requests for `method` on s/rpc. */
  registerMethod<P extends z.ZodType>(method: string, definition: RpcMethod<P>): void
  /** Send an error to one device (on u/{userId}/d/{deviceId}/err). */
  sendError(device: Device, error: Pick<ErrorMessage, 'code' | 'message' | 'ref' | 'retryAfterMs'>): Promise<void>
}

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    protocol: ProtocolApi
  }
}

const reject = (code: ErrorCode, message: string): PublishRejection => ({ reject: code, message })

function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((i) => {
      const at = i.path.length ? i.path.join('.') : 'payload'
      return i.code === 'unrecognized_keys' ? `${at}: unknown field(s) ${i.keys.map((k) => `"${k}"`).join(', ')}` : `${at}: ${i.message}`
    })
    .join('; ')
}

/** Parses JSON and validates it; a rejection explains what is wrong. */
function parsePayload<S extends z.ZodType>(schema: S, payload: Buffer | string): { ok: true; value: z.output<S> } | { ok: false; rejection: PublishRejection } {
  let json: unknown
  try {
    json = JSON.parse(payload.toString())
  } catch (err) {
    return { ok: false, rejection: reject('invalid_payload', `payload is not JSON: ${(err as Error).message}`) }
  }
  const parsed = schema.safeParse(json)
  return parsed.success ? { ok: true, value: parsed.data } : { ok: false, rejection: reject('invalid_payload', describeIssues(parsed.error)) }
}

/** A field of a JSON payload, for error references; never throws. */
function peekField(payload: Buffer | string, field: 'cmid' | 'id'): string | undefined {
  try {
    const v = (JSON.parse(payload.toString()) as Record<string, unknown>)[field]
    return typeof v === 'string' && v.length <= 64 ? v : undefined
  } catch {
    return undefined
  }
}

export default definePlugin({
  name: 'protocol',
  configSchema: ProtocolConfig,
  register(ctx: PluginContext<z.output<typeof ProtocolConfig>>): ProtocolApi {
    const { config } = ctx
    const membership = new MembershipCache(config.membershipCacheTtlMs, config.membershipCacheSize)
    const methods = new Map<string, RpcMethod<z.ZodType>>()
    const rejections = ctx.metrics.counter({ name: 'protocol_rejections_total', help: 'Publishes refused by the protocol, by error code', labelNames: ['code'] })
    const deniedSubs = ctx.metrics.counter({ name: 'protocol_subscriptions_denied_total', help: 'Subscriptions refused (SUBACK 0x80)' })
    const rpcs = ctx.metrics.counter({ name: 'rpc_requests_total', help: 'RPC requests by method and outcome', labelNames: ['method', 'outcome'] })

    const deviceOf = (client: Client): Device | undefined => {
      const p = ctx.principal(client)
      if (!p) return undefined
      const { userId, deviceId } = p.attributes
      if (typeof userId === 'string' && typeof deviceId === 'string') return { userId, deviceId }
      // Anonymous development mode: the client id names the device.
      return p.anonymous ? parseClientId(client.id) : undefined
    }

    ctx.cluster.subscribe('membership', (data) => {
      const { groupId, userId } = data as { groupId: string; userId?: string }
      membership.invalidate(groupId, userId)
    })

    // Error storms are bounded by the core: a client rejected more than mqtt.maxRejectionsPerSecond
    // times a second is disconnected, so every rejection that is acknowledged gets its answer.
    const sendError = async (device: Device, error: Pick<ErrorMessage, 'code' | 'message' | 'ref' | 'retryAfterMs'>): Promise<void> => {
      const key = `${device.userId}:${device.deviceId}`
      const message: ErrorMessage = { ...error, ts: Date.now() }
      await ctx.deliver(key, { topic: DOWN.errors(device.userId, device.deviceId), payload: JSON.stringify(message), qos: 1 })
    }

    const respond = async (device: Device, response: RpcResponse): Promise<void> => {
      await ctx.deliver(`${device.userId}:${device.deviceId}`, {
        topic: DOWN.responses(device.userId, device.deviceId),
        payload: JSON.stringify(response),
        qos: 1
      })
    }

    const dispatch = async (device: Device, request: z.output<typeof RpcRequest>): Promise<void> => {
      const method = methods.get(request.method)
      if (!method) {
        rpcs.inc({ method: 'unknown', outcome: 'unknown_method' })
        return respond(device, { id: request.id, ok: false, error: { code: 'unknown_method', message: `no method "${request.method}"` } })
      }
      const params = method.params.safeParse(request.params)
      if (!params.success) {
        rpcs.inc({ method: request.method, outcome: 'invalid_params' })
        return respond(device, { id: request.id, ok: false, error: { code: 'invalid_params', message: describeIssues(params.error) } })
      }
      try {
        const result = await method.handler(device, params.data)
        rpcs.inc({ method: request.method, outcome: 'ok' })
        return respond(device, { id: request.id, ok: true, result: result ?? null })
      } catch (err) {
        if (err instanceof RpcError) {
          rpcs.inc({ method: request.method, outcome: err.code })
          return respond(device, { id: request.id, ok: false, error: { code: err.code, message: err.message } })
        }
        rpcs.inc({ method: request.method, outcome: 'internal' })
        ctx.log.error({ method: request.method, err }, 'rpc method failed')
        return respond(device, { id: request.id, ok: false, error: { code: 'internal', message: 'the server could not complete the request' } })
      }
    }

    const authorizeUp = async (device: Device, packet: PublishPacket, will: boolean): Promise<PublishRejection | undefined> => {
      const up = parseUpTopic(packet.topic)
      if (!up) {
        return reject(
          packet.topic.startsWith('u/') ? 'forbidden' : 'unknown_topic',
          packet.topic.startsWith('u/') ? 'only the server publishes to user trees' : `${packet.topic} is not a topic of the protocol`
        )
      }
      // Upstream topics are requests to the server, never stored as retained messages.
      packet.retain = false
      switch (up.kind) {
        case 'dm': {
          const body = parsePayload(SendMessage, packet.payload)
          return body.ok ? undefined : body.rejection
        }
        case 'group': {
          if (!(await membership.check(up.groupId, device.userId))) {
            return reject('not_a_member', `you are not a member of group ${up.groupId}`)
          }
          const body = parsePayload(SendMessage, packet.payload)
          return body.ok ? undefined : body.rejection
        }
        case 'read':
        case 'delivered': {
          const marker = parsePayload(up.kind === 'read' ? ReadMarker : DeliveredMarker, packet.payload)
          if (!marker.ok) return marker.rejection
          const c = marker.value.conversation
          if (c.kind === 'group' && !(await membership.check(c.id, device.userId))) {
            return reject('not_a_member', `you are not a member of group ${c.id}`)
          }
          return undefined
        }
        case 'typing': {
          if (up.conversation.kind === 'group' && !(await membership.check(up.conversation.id, device.userId))) {
            return reject('not_a_member', `you are not a member of group ${up.conversation.id}`)
          }
          const typing = parsePayload(Typing, packet.payload)
          return typing.ok ? undefined : typing.rejection
        }
        case 'rpc': {
          const request = parsePayload(RpcRequest, packet.payload)
          if (!request.ok) return request.rejection
          if (will) return undefined // a will is only checked at CONNECT; it is dispatched if it is ever sent
          // Answer after the PUBACK: the request is accepted, the response follows on the device's tree.
          setImmediate(() => void dispatch(device, request.value).catch((err: unknown) => ctx.log.error({ err }, 'rpc dispatch failed')))
          return undefined
        }
      }
    }

    ctx.hook('authorizePublish', async (client, packet, { will }) => {
      const device = deviceOf(client)
      if (!device) return reject('forbidden', 'this connection has no user identity')
      return authorizeUp(device, packet, will)
    })

    ctx.hook('publishRejected', async (client, packet, rejection) => {
      rejections.inc({ code: rejection.reject })
      const device = deviceOf(client)
      if (!device) return
      const cmid = peekField(packet.payload, 'cmid')
      const rpcId = packet.topic === 's/rpc' ? peekField(packet.payload, 'id') : undefined
      const known = ErrorCode.safeParse(rejection.reject)
      const code: ErrorCode = known.success ? known.data : 'forbidden'
      await sendError(device, {
        code,
        message: rejection.message,
        ref: { topic: packet.topic, ...(cmid ? { cmid } : {}), ...(rpcId ? { rpcId } : {}) },
        ...(rejection.retryAfterMs !== undefined ? { retryAfterMs: rejection.retryAfterMs } : {})
      })
    })

    ctx.hook('authorizeSubscribe', (client, sub) => {
      const device = deviceOf(client)
      const levels = sub.topic.split('/')
      const own = device && levels[0] === 'u' && levels[1] === device.userId
      // Inside one's tree, another device's private subtree is off limits too (u/{me}/d/{other}/...,
      // and wildcards that single it out such as u/{me}/+/{other}/...).
      const otherDevice =
        own && (levels[2] === 'd' || levels[2] === '+') && levels.length > 3 && levels[3] !== device.deviceId && levels[3] !== '#'
      if (!own || otherDevice) {
        deniedSubs.inc()
        ctx.log.debug({ clientId: client.id, topic: sub.topic }, 'subscription outside the user tree refused')
        return null
      }
    })

    ctx.hook('authorizeForward', (client, packet) => {
      const target = parseDownTopic(packet.topic)
      const device = deviceOf(client)
      // Defence in depth: a client receives only its own user tree, and device topics only for itself.
      if (!target || !device || target.userId !== device.userId) return null
      if (target.deviceId !== undefined && target.deviceId !== device.deviceId) return null
    })

    methods.set('ping', {
      params: z.object({}).strict(),
      handler: async () => ({ pong: true, ts: Date.now() })
    })

    return {
      deviceOf,
      setMembershipSource: (source) => membership.setSource(source),
      isMember: (groupId, userId) => membership.check(groupId, userId),
      invalidateMembership: (groupId, userId) => ctx.cluster.broadcast('membership', { groupId, userId }),
      registerMethod: (method, definition) => {
        if (methods.has(method)) throw new Error(`rpc method "${method}" is already registered`)
        methods.set(method, definition)
      },
      sendError
    }
  }
})
