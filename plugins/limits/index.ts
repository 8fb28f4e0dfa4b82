// limits: the per-client and per-address bounds every public broker needs. Generic MQTT, no chat.
//   connect    keepalive bounds and a per-IP connection rate (refused without CONNACK: cheap)
//   publish    topic length and depth, payload size, and a token bucket per client for messages
//              and bytes. A QoS 1/2 publish over the rate is held (its PUBACK waits) until the
//              bucket has refilled, up to publish.maxDelayMs: back-pressure, nothing lost. Past
//              that, and for QoS 0, it is acknowledged and rejected with a code (rate_limited +
//              retryAfterMs, payload_too_large). The core disconnects a client that keeps being
//              rejected (mqtt.maxRejectionsPerSecond).
//   subscribe  topic length and depth, and a maximum number of subscriptions per client
import type { Client } from 'aedes'
import { z } from 'zod'
import { definePlugin, type PublishRejection } from '../../broker/plugin-api.js'
import { TokenBucket } from './token-bucket.js'

export const LimitsConfig = z
  .object({
    maxPayloadBytes: z.number().int().positive().default(64 * 1024).describe('Largest PUBLISH payload'),
    maxTopicBytes: z.number().int().positive().max(65535).default(256).describe('Longest topic or filter (UTF-8 bytes)'),
    maxTopicLevels: z.number().int().positive().max(100).default(8).describe('Deepest topic or filter'),
    maxSubscriptionsPerClient: z.number().int().positive().default(32),
    publish: z
      .object({
        messagesPerSecond: z.number().positive().default(20),
        burstMessages: z.number().positive().default(50),
        bytesPerSecond: z.number().positive().default(256 * 1024),
        burstBytes: z.number().positive().default(1024 * 1024),
        /** Longest a QoS 1/2 publish over the rate is held before it is rejected; keep it below mqtt.publishTimeoutMs. */
        maxDelayMs: z.number().int().min(0).max(60_000).default(2000)
      })
      .strict()
      .prefault({}),
    connections: z
      .object({
        perIpPerSecond: z.number().positive().default(20),
        burstPerIp: z.number().positive().default(50),
        /** Addresses tracked at once; the least recently seen are forgotten first. */
        trackedAddresses: z.number().int().positive().default(100_000)
      })
      .strict()
      .prefault({}),
    keepalive: z
      .object({
        minSeconds: z.number().int().min(0).max(65535).default(0).describe('0 allows clients without keepalive'),
        maxSeconds: z.number().int().min(1).max(65535).default(1200)
      })
      .strict()
      .prefault({})
  })
  .strict()
  .refine((c) => c.keepalive.minSeconds <= c.keepalive.maxSeconds, { error: 'keepalive.minSeconds exceeds keepalive.maxSeconds' })

interface ClientState {
  messages: TokenBucket
  bytes: TokenBucket
  subscriptions: Set<string>
}

/** The remote address of a connection (TCP, TLS or WebSocket). */
export function remoteAddress(client: Client): string {
  const conn = client.conn as { remoteAddress?: string; socket?: { remoteAddress?: string } } | undefined
  return client.req?.socket.remoteAddress ?? conn?.remoteAddress ?? conn?.socket?.remoteAddress ?? 'unknown'
}

export default definePlugin({
  name: 'limits',
  configSchema: LimitsConfig,
  register(ctx) {
    const c = ctx.config
    const states = new Map<Client, ClientState>()
    const perIp = new Map<string, TokenBucket>()
    const hits = ctx.metrics.counter({
      name: 'limits_hits_total',
      help: 'Limits enforced, by limit: publish_rate and connection_rate refuse, publish_delayed holds a PUBACK, the others refuse',
      labelNames: ['limit']
    })
    // Every limit's series exists from the start, so rate() and dashboards show 0 rather than no data.
    for (const limit of ['keepalive', 'connection_rate', 'topic', 'payload_size', 'publish_rate', 'publish_delayed', 'subscriptions']) hits.inc({ limit }, 0)
    const hit = (limit: string) => hits.inc({ limit })
    // A hold longer than the publish timeout would fail closed and disconnect: stay below it.
    const maxHoldMs = Math.min(c.publish.maxDelayMs, Math.max(ctx.publishTimeoutMs - 500, 0))
    if (maxHoldMs < c.publish.maxDelayMs) {
      ctx.log.warn({ maxDelayMs: c.publish.maxDelayMs, publishTimeoutMs: ctx.publishTimeoutMs, used: maxHoldMs }, 'publish.maxDelayMs capped below mqtt.publishTimeoutMs')
    }

    const stateOf = (client: Client): ClientState => {
      let s = states.get(client)
      if (!s) {
        s = {
          messages: new TokenBucket(c.publish.messagesPerSecond, c.publish.burstMessages),
          bytes: new TokenBucket(c.publish.bytesPerSecond, c.publish.burstBytes),
          subscriptions: new Set()
        }
        states.set(client, s)
      }
      return s
    }

    const topicProblem = (topic: string): string | undefined => {
      if (Buffer.byteLength(topic) > c.maxTopicBytes) return `topic longer than ${c.maxTopicBytes} bytes`
      if (topic.split('/').length > c.maxTopicLevels) return `topic deeper than ${c.maxTopicLevels} levels`
      return undefined
    }

    /** Takes a message and its bytes from the client's buckets, waiting up to `maxWaitMs` for them. */
    const admit = async (s: ClientState, size: number, maxWaitMs: number): Promise<number | undefined> => {
      for (;;) {
        const wait = Math.max(s.messages.msUntil(1), s.bytes.msUntil(size))
        if (wait === 0 && s.messages.take(1) && s.bytes.take(size)) return undefined
        if (!Number.isFinite(wait)) return 1000
        if (wait > maxWaitMs) return wait
        maxWaitMs -= wait
        hit('publish_delayed')
        await new Promise((r) => setTimeout(r, wait))
      }
    }

    ctx.hook('connect', (client, packet) => {
      const ka = packet.keepalive ?? 0
      if (ka < c.keepalive.minSeconds || ka > c.keepalive.maxSeconds) {
        hit('keepalive')
        throw new Error(`keepalive ${ka}s outside ${c.keepalive.minSeconds}-${c.keepalive.maxSeconds}s`)
      }
      const ip = remoteAddress(client)
      let bucket = perIp.get(ip)
      if (bucket) perIp.delete(ip) // re-insert: most recently seen last
      bucket ??= new TokenBucket(c.connections.perIpPerSecond, c.connections.burstPerIp)
      perIp.set(ip, bucket)
      if (perIp.size > c.connections.trackedAddresses) perIp.delete(perIp.keys().next().value!)
      if (!bucket.take(1)) {
        hit('connection_rate')
        throw new Error(`too many connections from ${ip}`)
      }
    })

    ctx.hook('authorizePublish', async (client, packet, { will }): Promise<PublishRejection | undefined> => {
      const problem = topicProblem(packet.topic)
      if (problem) {
        hit('topic')
        return { reject: 'forbidden', message: problem }
      }
      const size = packet.payload.length
      if (size > c.maxPayloadBytes) {
        hit('payload_size')
        return { reject: 'payload_too_large', message: `payload of ${size} bytes exceeds ${c.maxPayloadBytes}` }
      }
      if (will) return undefined // checked at CONNECT: nothing is sent yet, nothing to count
      const retryAfterMs = await admit(stateOf(client), size, packet.qos > 0 ? maxHoldMs : 0)
      if (retryAfterMs !== undefined) {
        hit('publish_rate')
        return { reject: 'rate_limited', message: 'publishing too fast', retryAfterMs }
      }
      return undefined
    })

    ctx.hook('authorizeSubscribe', (client, sub) => {
      const s = stateOf(client)
      if (topicProblem(sub.topic)) {
        hit('topic')
        return null
      }
      if (!s.subscriptions.has(sub.topic) && s.subscriptions.size >= c.maxSubscriptionsPerClient) {
        hit('subscriptions')
        return null
      }
      // Counted now, so one SUBSCRIBE with many filters cannot slip past the limit.
      s.subscriptions.add(sub.topic)
    })

    // A filter a later plugin refused (qos 128) does not count.
    ctx.hook('subscribed', (client, subs) => {
      const s = stateOf(client)
      for (const sub of subs) if ((sub.qos as number) === 128) s.subscriptions.delete(sub.topic)
    })
    ctx.hook('unsubscribed', (client, topics) => {
      const s = states.get(client)
      for (const t of topics) s?.subscriptions.delete(t)
    })
    ctx.hook('clientDisconnect', (client) => {
      states.delete(client)
    })
  }
})
