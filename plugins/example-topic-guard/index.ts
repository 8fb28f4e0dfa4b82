// Example plugin: refuses publishes and subscriptions under configured topic roots,
// counts refusals in a metric, and reports them on the operations listener.
// It shows every part of the plugin API a real plugin uses: a config schema, hooks,
// metrics, an HTTP route, and an API for dependants.
import { z } from 'zod'
import { definePlugin } from '../../broker/plugin-api.js'

export const TopicGuardConfig = z
  .object({
    /** Topic roots (e.g. `internal/audit`) no client may publish to or subscribe to, nor anything under them. */
    deniedRoots: z.array(z.string().min(1).regex(/^[^#+]+$/, { error: 'expected a topic without wildcards' })).default([]),
    /** Largest payload accepted, in bytes. */
    maxPayloadBytes: z.number().int().positive().default(256 * 1024)
  })
  .strict()

export interface TopicGuardApi {
  /** Whether a topic is a denied root or lies under one. */
  isDenied(topic: string): boolean
  /** Refusals so far, by reason. */
  refusals(): Readonly<Record<'publish' | 'subscribe' | 'size', number>>
}

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    'example-topic-guard': TopicGuardApi
  }
}

export default definePlugin({
  name: 'example-topic-guard',
  configSchema: TopicGuardConfig,
  register(ctx): TopicGuardApi {
    const { deniedRoots, maxPayloadBytes } = ctx.config
    const counts = { publish: 0, subscribe: 0, size: 0 }
    const refused = ctx.metrics.counter({
      name: 'topic_guard_refusals_total',
      help: 'Publishes and subscriptions refused by the topic guard',
      labelNames: ['reason']
    })
    const refuse = (reason: keyof typeof counts) => {
      counts[reason]++
      refused.inc({ reason })
    }
    const isDenied = (topic: string) => deniedRoots.some((root) => topic === root || topic.startsWith(`${root}/`))
    /** Whether a subscription filter can match a topic at or under the root. */
    const reaches = (filter: string, root: string) => {
      const f = filter.split('/')
      const r = root.split('/')
      for (let i = 0; i < r.length; i++) {
        if (f[i] === '#') return true
        if (i >= f.length || (f[i] !== '+' && f[i] !== r[i])) return false
      }
      return true
    }

    ctx.hook('authorizePublish', (client, packet) => {
      if (isDenied(packet.topic)) {
        refuse('publish')
        ctx.log.info({ clientId: client.id, topic: packet.topic }, 'publish refused')
        return false
      }
      if (packet.payload.length > maxPayloadBytes) {
        refuse('size')
        return false
      }
    })

    ctx.hook('authorizeSubscribe', (client, sub) => {
      if (deniedRoots.some((root) => reaches(sub.topic, root))) {
        refuse('subscribe')
        ctx.log.info({ clientId: client.id, topic: sub.topic }, 'subscription refused')
        return null
      }
    })

    ctx.route({
      method: 'GET',
      url: '/plugins/example-topic-guard',
      handler: async () => ({ deniedRoots, maxPayloadBytes, refusals: counts })
    })

    return { isDenied, refusals: () => ({ ...counts }) }
  }
})
