// push: wakes devices that have no live connection with an APNs or FCM notification.
//   - Registry (rpc.ts, registry.ts): a device registers its token and settings over s/rpc; a user
//     mutes conversations. MongoDB when configured, else embedded SQLite.
//   - Trigger: for each newly stored text or media message (messages.onStored, once, on the storing
//     node), every registered device of every recipient that is not connected anywhere in the cluster
//     gets a job in the durable queue, due after `graceMs`; later messages of the conversation
//     coalesce into it. A device that connects cancels its jobs (clientReady, any node): the
//     Signal-Server pattern of a delayed push cancelled on connect.
//   - Queue (queue.ts): Redis when configured (shared by the cluster), else SQLite. Jobs are claimed
//     atomically with a visibility timeout: one node sends each job; a node that dies mid-send
//     leaves it to the others.
//   - Worker (worker.ts): checks, rate limit, send, back-off with Retry-After, dead-token removal.
//   - Providers: APNs (@parse/node-apn, .p8 token auth), FCM (firebase-admin 13); without
//     credentials, a provider that logs.
//   - Badge: the user's unread total (messages.unreadTotal), counted when the push is sent.
//   - Admin (admin.ts): POST /admin/v1/push/test, GET /admin/v1/push/tokens, the `push` section of
//     a user (`parley admin push test|tokens`, `parley admin users show`).
import { definePlugin } from '../../broker/plugin-api.js'
import { ReadMarker } from '../../schemas/protocol.js'
import type { StoredMessage } from '../messages/index.js'
import { chooseStore, initInBackground } from '../shared/stores.js'
import { registerPushAdmin, type TestResult } from './admin.js'
import { PushConfig } from './config.js'
import { previewOf, testNotice, textsFor } from './payload.js'
import { ApnsProvider } from './providers/apns.js'
import { FcmProvider } from './providers/fcm.js'
import { LogProvider } from './providers/log.js'
import { RedisPushQueue, SqlitePushQueue, type PushQueue } from './queue.js'
import { MemoryRateLimiter, RedisRateLimiter, type DeviceRateLimiter } from './rate-limit.js'
import { MongoRegistry, SqliteRegistry, type RegistryStore } from './registry.js'
import { registerMethods } from './rpc.js'
import type { PushProvider, Registration } from './types.js'
import { metricReason, PushWorker, resultOf } from './worker.js'
import { join } from 'node:path'

export { PushConfig } from './config.js'
export type { TestResult } from './admin.js'

export interface PushApi {
  /** Sends a test notification to a user's registered devices (or one), now, and reports each answer. */
  sendTest(user: string, device?: string): Promise<TestResult[]>
}

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    push: PushApi
  }
}

/** Message types that wake a device: new content, not edits, deletes or system notices. */
const PUSHED_TYPES = new Set(['text', 'media'])

/** New content, or an operator's announcement (a system message with text but no group-change notice). */
const wakes = (m: StoredMessage) => PUSHED_TYPES.has(m.type) || (m.type === 'system' && !m.notice && m.body.trim().length > 0)

export default definePlugin({
  name: 'push',
  dependencies: ['protocol', 'groups', 'messages', 'presence'],
  configSchema: PushConfig,
  register(ctx): PushApi {
    const { config } = ctx
    const protocol = ctx.dependency('protocol')
    const groups = ctx.dependency('groups')
    const messages = ctx.dependency('messages')
    const presence = ctx.dependency('presence')

    const registryImpl = chooseStore<RegistryStore>(ctx, config.store, {
      mongo: (db) => new MongoRegistry(db),
      embedded: (file) => new SqliteRegistry(file),
      file: 'push.db'
    })
    const registry = initInBackground(ctx, registryImpl, 'registry')

    if (config.queue === 'redis' && !ctx.backends.redis) throw new Error('push: queue is redis but redis.url is not set')
    const redis = config.queue !== 'embedded' ? ctx.backends.redis : undefined
    // A mark outlives the longest a message can take from being stored to being queued.
    const markTtlMs = Math.max(60_000, config.graceMs * 4)
    const queueImpl: PushQueue = redis
      ? new RedisPushQueue(redis, ctx.backends.redisKeyPrefix, markTtlMs)
      : new SqlitePushQueue(join(ctx.dataDir, 'push-queue.db'), markTtlMs)
    const queue = initInBackground(ctx, queueImpl, 'queue')
    const limiter: DeviceRateLimiter = redis ? new RedisRateLimiter(redis, ctx.backends.redisKeyPrefix, config.rateLimit) : new MemoryRateLimiter(config.rateLimit)

    const log = new LogProvider(ctx.log)
    const apns: PushProvider = config.apns
      ? new ApnsProvider(
          {
            keyFile: config.apns.keyFile,
            keyId: config.apns.keyId,
            teamId: config.apns.teamId,
            defaultTopic: config.apns.topic,
            address: config.apns.address,
            port: config.apns.port,
            caFile: config.apns.caFile,
            requestTimeoutMs: config.apns.requestTimeoutMs
          },
          ctx.log
        )
      : log
    const fcmProvider = config.fcm
      ? new FcmProvider({ serviceAccountFile: config.fcm.serviceAccountFile, connectTo: config.fcm.connectTo, caFile: config.fcm.caFile })
      : undefined
    const fcm: PushProvider = fcmProvider ?? log
    const providerFor = (r: Registration): PushProvider => (r.provider === 'apns' ? apns : fcm)
    ctx.log.info({ apns: apns.name, fcm: fcm.name, queue: redis ? 'redis' : 'embedded' }, 'push providers')

    // ---- metrics --------------------------------------------------------------------------
    const latencyBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    const metrics = {
      sent: ctx.metrics.counter({ name: 'push_sent_total', help: 'Pushes the provider accepted', labelNames: ['provider', 'type'] }),
      failed: ctx.metrics.counter({ name: 'push_failed_total', help: 'Push attempts the provider refused or that failed, by reason', labelNames: ['provider', 'reason'] }),
      skipped: ctx.metrics.counter({ name: 'push_skipped_total', help: 'Pending pushes dropped before sending, by reason', labelNames: ['reason'] }),
      retried: ctx.metrics.counter({ name: 'push_retries_total', help: 'Pushes put back for later', labelNames: ['provider', 'why'] }),
      deadTokens: ctx.metrics.counter({ name: 'push_dead_tokens_total', help: 'Registrations removed because the provider called the token dead', labelNames: ['provider'] }),
      sendSeconds: ctx.metrics.histogram({ name: 'push_send_seconds', help: 'Provider round trip of one push', labelNames: ['provider'], buckets: latencyBuckets }),
      delaySeconds: ctx.metrics.histogram({
        name: 'push_delay_seconds',
        help: 'From the first message of a push being stored to the provider accepting it (includes the grace period)',
        labelNames: ['provider'],
        buckets: [0.5, 1, 2, 3, 5, 10, 30, 60, 300, 3600]
      })
    }
    const queued = ctx.metrics.counter({ name: 'push_queued_total', help: 'Messages queued for a push (coalesced per device and conversation)' })
    const cancelled = ctx.metrics.counter({ name: 'push_cancelled_total', help: 'Pending pushes cancelled because their device connected' })
    ctx.metrics.gauge({
      name: 'push_queue_depth',
      help: 'Pending and claimed pushes (cluster-wide with Redis)',
      labelNames: ['state'],
      async collect() {
        try {
          const d = await (await queue()).depth()
          this.set({ state: 'pending' }, d.pending)
          this.set({ state: 'claimed' }, d.claimed)
        } catch {
          // not reachable: no sample
        }
      }
    })

    // ---- trigger ---------------------------------------------------------------------------
    const schedule = async (m: StoredMessage, recipients: readonly string[]): Promise<void> => {
      if (!wakes(m) || !recipients.length) return
      const reg = await registry()
      const registrations = await reg.devicesOf(recipients)
      if (!registrations.length) return
      const users = [...new Set(registrations.map((r) => r.user))]
      const now = Date.now()
      const muted = config.muted === 'nothing' ? await reg.mutedAmong(users, m.conversation, now) : new Map<string, number>()
      const q = await queue()
      for (const user of users) {
        if (muted.has(user)) {
          metrics.skipped.inc({ reason: 'muted' })
          continue
        }
        const online = new Set(await presence.connectedDevices(user))
        for (const r of registrations) {
          if (r.user !== user) continue
          if (online.has(r.device)) {
            metrics.skipped.inc({ reason: 'online' })
            continue
          }
          const texts = textsFor(r.locale, config.texts, config.locale)
          const added = await q.enqueue(
            {
              user,
              device: r.device,
              conversation: m.conversation,
              message: { id: m.id, seq: m.seq, ts: m.ts, from: m.sender.user, type: m.type, e2e: m.e2e, preview: previewOf(m, r, config.previewChars, texts) }
            },
            now + config.graceMs
          )
          if (added) queued.inc()
        }
      }
    }
    messages.onStored(schedule)

    ctx.hook('clientReady', async (client) => {
      const device = protocol.deviceOf(client)
      if (!device) return
      const n = await (await queue()).cancelDevice(device.userId, device.deviceId, Date.now())
      if (n) cancelled.inc(n)
    })

    // A read marker (any device of the user) shrinks the pushed-but-unread counts of every device.
    ctx.hook('published', async (packet, client) => {
      if (!client || packet.topic !== 's/read') return
      const device = protocol.deviceOf(client)
      if (!device) return
      let marker
      try {
        marker = ReadMarker.safeParse(JSON.parse(packet.payload.toString()))
      } catch {
        return
      }
      if (!marker.success) return
      const c = marker.data.conversation
      const key = c.kind === 'group' ? `g:${c.id}` : device.userId < c.id ? `dm:${device.userId}:${c.id}` : `dm:${c.id}:${device.userId}`
      await (await registry()).markRead(device.userId, key, marker.data.seq)
    })

    // ---- worker ----------------------------------------------------------------------------
    const worker = new PushWorker({
      config,
      log: ctx.log,
      queue,
      registry,
      limiter,
      providerFor,
      connectedDevices: (user) => presence.connectedDevices(user),
      groupName: async (user, groupId) => (await groups.groupsOf(user)).find((g) => g.id === groupId)?.name,
      // The user's unread total from the message store; if that fails, what this device was pushed and has not read.
      badge: async (user, device, jobCount) =>
        messages.unreadTotal(user).catch(async () => (await (await registry()).pushedUnread(user, device)) + jobCount),
      metrics
    })
    worker.start()

    registerMethods({ protocol, registry, defaultTopic: config.apns?.topic, previewsByDefault: config.previewsByDefault })

    // ---- admin -----------------------------------------------------------------------------
    const sendTest = async (user: string, device?: string): Promise<TestResult[]> => {
      const reg = await registry()
      const targets = device ? [await reg.get(user, device)].filter((r): r is Registration => r !== undefined) : await reg.devicesOf([user])
      return Promise.all(
        targets.map(async (r): Promise<TestResult> => {
          const provider = providerFor(r)
          const started = performance.now()
          const outcome = await provider.send(r, testNotice(textsFor(r.locale, config.texts, config.locale)))
          metrics.sendSeconds.observe({ provider: provider.name }, (performance.now() - started) / 1000)
          await reg.recordResult(r.user, r.device, r.token, resultOf(outcome, provider, 'test')).catch((err: unknown) => ctx.log.debug({ err }, 'push result not recorded'))
          const base = { device: r.device, provider: r.provider, via: provider.name }
          if (outcome.ok) {
            metrics.sent.inc({ provider: provider.name, type: 'test' })
            return { ...base, ok: true, id: outcome.id, status: outcome.status }
          }
          metrics.failed.inc({ provider: provider.name, reason: metricReason(outcome.reason) })
          const removed = outcome.dead ? await reg.removeToken(r.user, r.device, r.token) : undefined
          if (removed) metrics.deadTokens.inc({ provider: provider.name })
          return { ...base, ok: false, status: outcome.status, reason: outcome.reason, ...(outcome.dead ? { removed } : {}) }
        })
      )
    }

    registerPushAdmin(ctx, { registry, providerFor, fcmProject: fcmProvider?.projectId, sendTest })

    ctx.hook('shutdown', async () => {
      await worker.stop()
      await Promise.all([apns, fcm].filter((p, i, all) => all.indexOf(p) === i).map((p) => p.close().catch(() => undefined)))
      await queueImpl.close()
      await registryImpl.close()
    })

    return { sendTest }
  }
})

