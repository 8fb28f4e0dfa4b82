// presence: online status, last seen and typing indicators, cluster-wide, debounced, ordered and
// shown only to the people a user shares something with.
//   - State (state.ts): a user is online while any device is connected anywhere; a reconnect within
//     graceMs is no change; a dead node's devices go offline within about offlineAfterMs.
//   - Audience: the users a user shares a conversation with (one-to-one, and groups up to
//     maxGroupSize members) plus the user's own contact list (contacts.add). Privacy settings narrow
//     it: online and last seen each shown to everyone in the audience, contacts only, or nobody.
//     Anyone else learns nothing, not even whether the user exists.
//   - Delivery: per-viewer fan-out of an Event to u/{viewer}/e (QoS 0), batched every batchMs with
//     one event per changed user; presence.get answers a snapshot (on connect).
//     Why fan-out and not subscriptions to each contact's topic: a device subscribes once, to its
//     own tree (the ACL allows nothing else), and the audience is computed by the server, so a
//     device can never subscribe its way into someone's presence.
//   - Typing: s/typing/... (QoS 0, never stored) is relayed to the conversation's other members,
//     at most one per device and conversation per typing.minIntervalMs (state changes always pass),
//     with expiresInMs so a lost "paused" cannot leave someone typing forever.
import { randomBytes } from 'node:crypto'
import type { Client } from 'aedes'
import { z } from 'zod'
import { definePlugin } from '../../broker/plugin-api.js'
import { Id } from '../../schemas/identity.js'
import { DOWN, Typing, parseUpTopic, type ConversationRef, type Event } from '../../schemas/protocol.js'
import { RpcError } from '../protocol/index.js'
import { chooseStore, initInBackground } from '../shared/stores.js'
import { MemoryPresenceState, RedisPresenceState, connectionToken, type PresenceState, type Transition, type UserPresence } from './state.js'
import { MongoPresenceStore, SqlitePresenceStore, type Audience, type PresencePrivacy, type PresenceStore } from './store.js'

export const PresenceConfig = z
  .object({
    store: z.enum(['auto', 'embedded', 'mongo']).default('auto'),
    graceMs: z.number().int().min(0).max(600_000).default(5000).describe('A user whose last device left is offline only if none is back within this'),
    offlineAfterMs: z.number().int().min(1000).max(600_000).default(30_000).describe('Devices of a node that stopped heartbeating go offline after this'),
    sweepMs: z.number().int().min(50).max(60_000).default(1000).describe('How often a node looks for users due to go offline'),
    batchMs: z.number().int().min(0).max(10_000).default(250).describe('Presence changes are collected this long, one event per user'),
    maxGroupSize: z.number().int().min(2).max(100_000).default(256).describe('Larger groups share no presence or typing among members'),
    maxContacts: z.number().int().min(1).max(100_000).default(5000),
    audienceCacheMs: z.number().int().min(0).max(600_000).default(10_000).describe('How long a user\'s audience is reused (changes invalidate it at once)'),
    typing: z
      .object({
        minIntervalMs: z.number().int().min(0).max(60_000).default(1000),
        expiresInMs: z.number().int().min(1000).max(60_000).default(6000)
      })
      .strict()
      .prefault({})
  })
  .strict()

const Users = z.array(Id).min(1).max(100)
const AudienceChoice = z.enum(['everyone', 'contacts', 'nobody'])

interface AudienceOf {
  /** Everyone who may see something of the user (partners and contacts). */
  all: Set<string>
  contacts: Set<string>
  expires: number
}

export interface PresenceApi {
  /** The devices of a user connected anywhere in the cluster now (push wakes only the others). */
  connectedDevices(user: string): Promise<string[]>
}

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    presence: PresenceApi
  }
}

export default definePlugin({
  name: 'presence',
  dependencies: ['protocol', 'groups', 'messages'],
  configSchema: PresenceConfig,
  register(ctx): PresenceApi {
    const { config } = ctx
    const protocol = ctx.dependency('protocol')
    const groups = ctx.dependency('groups')
    const messages = ctx.dependency('messages')
    const timing = { graceMs: config.graceMs, offlineAfterMs: config.offlineAfterMs }
    const state: PresenceState = ctx.backends.redis
      ? new RedisPresenceState(ctx.backends.redis, ctx.backends.redisKeyPrefix, ctx.brokerId, timing)
      : new MemoryPresenceState(timing)
    const storeImpl = chooseStore<PresenceStore>(ctx, config.store, {
      mongo: (db) => new MongoPresenceStore(db),
      embedded: (file) => new SqlitePresenceStore(file),
      file: 'presence.db'
    })
    const store = initInBackground(ctx, storeImpl)

    const events = ctx.metrics.counter({ name: 'presence_events_total', help: 'Presence events sent to viewers' })
    const changes = ctx.metrics.counter({ name: 'presence_changes_total', help: 'Users who came online or went offline', labelNames: ['to'] })
    const typingRelayed = ctx.metrics.counter({ name: 'typing_events_total', help: 'Typing events relayed, by outcome', labelNames: ['outcome'] })

    // ---- audience --------------------------------------------------------------------------
    const audiences = new Map<string, AudienceOf>()
    // Bumped by every invalidation: a computation that overlapped one is not cached.
    let generation = 0
    const audienceOf = async (user: string): Promise<AudienceOf> => {
      const cached = audiences.get(user)
      if (cached && cached.expires > Date.now()) return cached
      const startedAt = generation
      const all = new Set(await messages.peersOf(user))
      for (const g of await groups.groupsOf(user)) {
        const members = await groups.members(g.id)
        if (members.length <= config.maxGroupSize) members.forEach((m) => all.add(m))
      }
      const contacts = new Set(await (await store()).contacts(user))
      contacts.forEach((c) => all.add(c))
      all.delete(user)
      const fresh = { all, contacts, expires: Date.now() + config.audienceCacheMs }
      if (generation !== startedAt) return fresh
      audiences.set(user, fresh)
      if (audiences.size > 100_000) audiences.delete(audiences.keys().next().value!)
      return fresh
    }
    ctx.cluster.subscribe('forget', (data) => {
      generation++
      for (const u of data as string[]) audiences.delete(u)
    })
    const forget = (users: readonly string[]) =>
      ctx.cluster.broadcast('forget', users).catch((err: unknown) => ctx.log.warn({ err }, 'audience invalidation not broadcast'))
    groups.onChange(async (group) => {
      await forget(await groups.members(group))
    })
    // A first message makes two users conversation partners.
    messages.onNewConversation((users) => forget(users))

    const shows = (choice: Audience, viewer: string, a: AudienceOf) => choice === 'everyone' || (choice === 'contacts' && a.contacts.has(viewer))

    /** What `viewer` may see of `p`, or undefined when nothing. */
    const visible = (p: UserPresence, viewer: string, a: AudienceOf, privacy: PresencePrivacy): Event | undefined => {
      if (!a.all.has(viewer)) return undefined
      const online = shows(privacy.online, viewer, a)
      const lastSeen = shows(privacy.lastSeen, viewer, a)
      if (!online && !lastSeen) return undefined
      return {
        type: 'presence',
        user: p.user,
        ...(online ? { online: p.online } : {}),
        ...(lastSeen && !p.online && p.lastSeen !== undefined ? { lastSeen: p.lastSeen } : {}),
        version: p.version
      }
    }

    // ---- fan-out, batched -------------------------------------------------------------------
    const pending = new Map<string, Transition>()
    let flushTimer: NodeJS.Timeout | undefined
    const fanOut = async (p: UserPresence, only?: ReadonlySet<string>) => {
      const a = await audienceOf(p.user)
      const privacy = (await (await store()).privacy([p.user])).get(p.user)!
      await Promise.all(
        [...a.all]
          .filter((viewer) => !only || only.has(viewer))
          .map(async (viewer) => {
            const event = visible(p, viewer, a, privacy)
            if (!event) return
            events.inc()
            await ctx.publish({ topic: DOWN.events(viewer), payload: JSON.stringify(event), qos: 0 })
          })
      )
    }
    const flush = async () => {
      flushTimer = undefined
      const batch = [...pending.values()]
      pending.clear()
      for (const t of batch) {
        const p: UserPresence = { user: t.user, online: t.online, ...(t.online ? {} : { lastSeen: t.at }), version: t.version }
        await fanOut(p).catch((err: unknown) => ctx.log.error({ err, user: t.user }, 'presence fan-out failed'))
      }
    }
    const announce = (transitions: readonly Transition[]) => {
      for (const t of transitions) {
        changes.inc({ to: t.online ? 'online' : 'offline' })
        const prev = pending.get(t.user)
        if (!prev || prev.version < t.version) pending.set(t.user, t)
      }
      if (pending.size) flushTimer ??= setTimeout(() => void flush(), config.batchMs)
    }

    // ---- connections ------------------------------------------------------------------------
    const connections = new WeakMap<Client, string>()
    ctx.hook('clientReady', async (client) => {
      const device = protocol.deviceOf(client)
      // Aedes may emit clientReady after clientDisconnect for a connection that closed at once:
      // recording it then would leave a device online for ever.
      if (!device || client.closed) return
      const token = connectionToken(ctx.brokerId, randomBytes(6).toString('hex'))
      connections.set(client, token)
      const t = await state.connect(device.userId, device.deviceId, token, Date.now())
      if (t) announce([t])
    })
    ctx.hook('clientDisconnect', async (client) => {
      const device = protocol.deviceOf(client)
      const token = connections.get(client)
      if (!device || !token) return
      await state.disconnect(device.userId, device.deviceId, token, Date.now())
    })

    let stopped = false
    const sweep = async () => {
      if (stopped) return
      try {
        await state.heartbeat(Date.now())
        announce(await state.sweep(Date.now()))
      } catch (err) {
        ctx.log.warn({ err }, 'presence sweep failed; retried')
      }
    }
    const sweeper = setInterval(() => void sweep(), config.sweepMs)
    const heartbeat = setInterval(() => void state.heartbeat(Date.now()).catch(() => undefined), Math.max(500, Math.floor(config.offlineAfterMs / 3)))
    void state.heartbeat(Date.now()).catch(() => undefined)

    // ---- typing -----------------------------------------------------------------------------
    const lastTyping = new Map<string, { at: number; state: string }>()
    ctx.hook('authorizePublish', async (client, packet, { will }) => {
      const up = parseUpTopic(packet.topic)
      if (up?.kind !== 'typing' || will) return undefined
      const device = protocol.deviceOf(client)
      if (!device) return undefined // protocol refused it already
      const { state: typing } = Typing.parse(JSON.parse(packet.payload.toString()))
      const key = `${client.id}|${up.conversation.kind}|${up.conversation.id}`
      const now = Date.now()
      const last = lastTyping.get(key)
      if (last && last.state === typing && now - last.at < config.typing.minIntervalMs) {
        typingRelayed.inc({ outcome: 'throttled' })
        return undefined
      }
      lastTyping.set(key, { at: now, state: typing })
      if (lastTyping.size > 50_000) lastTyping.delete(lastTyping.keys().next().value!)
      let recipients: string[]
      let conversation: ConversationRef
      if (up.conversation.kind === 'dm') {
        // Only to someone the typist shares a conversation with (or has as a contact): no pokes from strangers.
        const known = up.conversation.id !== device.userId && (await audienceOf(device.userId)).all.has(up.conversation.id)
        recipients = known ? [up.conversation.id] : []
        conversation = { kind: 'dm', id: device.userId }
      } else {
        const members = await groups.members(up.conversation.id)
        recipients = members.length <= config.maxGroupSize ? members.filter((m) => m !== device.userId) : []
        conversation = up.conversation
      }
      if (!recipients.length) {
        typingRelayed.inc({ outcome: 'no_recipient' })
        return undefined
      }
      const event: Event = { type: 'typing', conversation, user: device.userId, state: typing, expiresInMs: config.typing.expiresInMs }
      const payload = JSON.stringify(event)
      await Promise.all(recipients.map((r) => ctx.publish({ topic: DOWN.events(r), payload, qos: 0 })))
      typingRelayed.inc({ outcome: 'relayed' })
      return undefined
    })

    // ---- requests ---------------------------------------------------------------------------
    protocol.registerMethod('presence.get', {
      params: z.object({ users: z.array(Id).min(1).max(1000).optional() }).strict(),
      handler: async (device, p) => {
        const me = device.userId
        // Candidates: those asked for, or everyone the user has something in common with.
        const candidates = p.users ?? [...(await audienceOf(me)).all]
        const s = await store()
        const privacy = await s.privacy(candidates)
        const presence = await state.get(candidates)
        const out: Event[] = []
        for (const entry of presence) {
          const event = visible(entry, me, await audienceOf(entry.user), privacy.get(entry.user)!)
          if (event) out.push(event)
        }
        return { presence: out }
      }
    })

    protocol.registerMethod('contacts.list', {
      params: z.object({}).strict(),
      handler: async (device) => ({ contacts: await (await store()).contacts(device.userId) })
    })

    protocol.registerMethod('contacts.add', {
      params: z.object({ users: Users }).strict(),
      handler: async (device, p) => {
        const s = await store()
        const users = p.users.filter((u) => u !== device.userId)
        if ((await s.contacts(device.userId)).length + users.length > config.maxContacts) {
          throw new RpcError('invalid_params', `a contact list holds at most ${config.maxContacts} users`)
        }
        const size = await s.addContacts(device.userId, users)
        await forget([device.userId])
        audiences.delete(device.userId)
        // The new contacts see the user's presence at once.
        const [mine] = await state.get([device.userId])
        if (mine) await fanOut(mine, new Set(users))
        return { contacts: size }
      }
    })

    protocol.registerMethod('contacts.remove', {
      params: z.object({ users: Users }).strict(),
      handler: async (device, p) => {
        await (await store()).removeContacts(device.userId, p.users)
        await forget([device.userId])
        audiences.delete(device.userId)
        return { removed: p.users.length }
      }
    })

    protocol.registerMethod('presence.privacy.get', {
      params: z.object({}).strict(),
      handler: async (device) => (await (await store()).privacy([device.userId])).get(device.userId)
    })

    protocol.registerMethod('presence.privacy.set', {
      params: z.object({ online: AudienceChoice, lastSeen: AudienceChoice }).strict(),
      handler: async (device, p) => {
        await (await store()).setPrivacy(device.userId, p)
        return p
      }
    })

    // parley admin users show: what operators see, whatever the user's privacy settings.
    ctx.admin.userFacet('presence', async (user) => {
      const s = await store()
      const [[p], devices, privacy, contacts] = await Promise.all([state.get([user]), state.devices(user), s.privacy([user]), s.contacts(user)])
      return {
        online: p!.online,
        ...(p!.lastSeen !== undefined ? { lastSeen: p!.lastSeen } : {}),
        devices,
        privacy: privacy.get(user)!,
        contacts: contacts.length
      }
    })

    ctx.hook('shutdown', async () => {
      stopped = true
      clearInterval(sweeper)
      clearInterval(heartbeat)
      if (flushTimer) {
        clearTimeout(flushTimer)
        await flush()
      }
      await state.leave(Date.now()).catch((err: unknown) => ctx.log.warn({ err }, 'presence: devices not handed over'))
      await storeImpl.close()
    })

    return { connectedDevices: (user) => state.devices(user) }
  }
})
