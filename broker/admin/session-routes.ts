// Admin routes of MQTT clients and sessions: clients list/show/kick, sessions (persistent ones and
// their offline queues), subscriptions list/add/remove, retained list/clean.
//
// A client lives on one node: every node answers the `core.*` cluster queries below for its own
// clients, and the node that holds the client does the work (close it, subscribe it...). Persistent
// sessions and retained messages live in Aedes' persistence, shared by every node with Redis (and
// on the only node without it), so the node answering the request reads and changes them itself.
import type { Client } from 'aedes'
import { z } from 'zod'
import { Id } from '../../schemas/identity.js'
import { parseClientId } from '../../schemas/identity.js'
import { AdminError, type AdminApi } from './api.js'
import type { ClusterQuery, GatherResult } from './cluster-query.js'
import { scopeAllows } from './keys.js'
import { clientIdProblem, globProblem, globRegExp, topicFilterProblem } from './mqtt-names.js'
import type { NodeAccess } from './node-access.js'
import { sessionStore } from './session-store.js'

const checked = (problem: (s: string) => string | undefined) =>
  z.string().superRefine((value, ctx) => {
    const why = problem(value)
    if (why) ctx.addIssue({ code: 'custom', message: why })
  })
const ClientId = checked(clientIdProblem)
const TopicFilter = checked(topicFilterProblem)
const Qos = z.union([z.literal(0), z.literal(1), z.literal(2)])
const limit = (max: number, byDefault: number) => z.coerce.number().int().min(1).max(max).default(byDefault)
const Flag = z
  .enum(['true', 'false'])
  .default('false')
  .transform((v) => v === 'true')
const Missing = z.array(z.string()).describe('nodes that did not answer within admin.queryTimeoutMs, or failed: what they hold is not in the answer')

const Subscription = z.object({ topic: z.string(), qos: z.number().int() })

export const ClientInfo = z.object({
  clientId: z.string(),
  user: z.string().optional().describe('from the authenticated identity, else from a `<user>:<device>` client id'),
  device: z.string().optional(),
  node: z.string().describe('broker id of the node holding the connection'),
  address: z.string().optional().describe('remote address and port as the node sees it'),
  listener: z.enum(['tcp', 'tls', 'ws', 'wss']).optional(),
  connectedAt: z.number().int().optional().describe('ms since the epoch'),
  keepalive: z.number().describe('seconds; 0: none'),
  cleanSession: z.boolean(),
  protocolVersion: z.number().int().describe('4: MQTT 3.1.1, 3: MQTT 3.1'),
  subscriptions: z.number().int().describe('number of subscriptions'),
  queued: z.number().int().optional().describe('persistent sessions: messages in the queue (waiting, or sent and not yet acknowledged)')
})
type ClientInfo = z.infer<typeof ClientInfo>

export const ClientDetail = ClientInfo.omit({ subscriptions: true }).extend({
  anonymous: z.boolean().describe('let in by mqtt.allowAnonymous, not by a plugin'),
  subscriptions: z.array(Subscription)
})
type ClientDetail = z.infer<typeof ClientDetail>

export const SessionInfo = z.object({
  clientId: z.string(),
  user: z.string().optional(),
  device: z.string().optional(),
  online: z.boolean(),
  node: z.string().optional().describe('where it is connected, when online'),
  subscriptions: z.number().int(),
  queued: z.number().int().describe('messages in the queue: waiting while away, or sent and not yet acknowledged')
})

const SubscriptionChange = z.object({
  clientId: z.string(),
  topic: z.string(),
  online: z.boolean().describe('true: applied to the connection (and its persistent session); false: to the stored session only'),
  node: z.string().optional()
})

// What the cluster queries carry and answer.
const ClientsArgs = z.object({ user: Id.optional(), match: z.string().optional(), limit: z.number().int() })
type ClientsAnswer = { clients: ClientInfo[]; total: number }
const OneClientArgs = z.object({ clientId: z.string() })
const KickArgs = z.object({ clientId: z.string(), session: z.boolean() })
type KickAnswer = { node: string; cleanSession: boolean; sessionDiscarded: boolean }
const SubscriptionArgs = z.discriminatedUnion('op', [
  z.object({ op: z.literal('list'), clientId: z.string() }),
  z.object({ op: z.literal('add'), clientId: z.string(), topic: z.string(), qos: Qos }),
  z.object({ op: z.literal('remove'), clientId: z.string(), topic: z.string() })
])
type SubscriptionArgs = z.infer<typeof SubscriptionArgs>
type SubscriptionAnswer =
  | { op: 'list'; node: string; subscriptions: Array<{ topic: string; qos: number }> }
  | { op: 'add'; node: string; granted: number | null }
  | { op: 'remove'; node: string; removed: boolean }
const OnlineArgs = z.object({ ids: z.array(z.string()) })

/** The parts of an Aedes client the routes read that its types leave out (aedes 1.2 lib/client.js). */
interface ClientInternals {
  subscriptions: Record<string, { qos: number } | undefined>
  /** 1.5 x keepalive + 1 ms, set at CONNECT (lib/handlers/connect.js setKeepAlive); -1 without one. */
  _keepaliveInterval?: number
  conn: { remoteAddress?: string; remotePort?: number; encrypted?: boolean }
  req?: { socket?: { remoteAddress?: string; remotePort?: number; encrypted?: boolean } }
}
const internalsOf = (client: Client) => client as unknown as ClientInternals

const callback = (run: (done: (err?: Error | null) => void) => void) =>
  new Promise<void>((resolve, reject) => run((err) => (err ? reject(err) : resolve())))

export function registerSessionRoutes(api: AdminApi, query: ClusterQuery, node: NodeAccess): void {
  const store = sessionStore(node)
  // Aedes does not record when a client connected: noted when it is ready (after its CONNACK).
  const connectedAt = new WeakMap<Client, number>()
  node.host().add('admin', 'clientReady', (client) => {
    connectedAt.set(client, Date.now())
  })

  const live = (): Client[] => Object.values(node.clients()).filter((c): c is Client => Boolean(c && !c.closed && c.id))
  const find = (clientId: string): Client | undefined => {
    const c = node.clients()[clientId]
    return c && !c.closed ? c : undefined
  }

  const identity = (client: Client) => {
    const principal = node.host().principal(client)
    const attributes = principal?.attributes ?? {}
    const named = parseClientId(client.id)
    const user = typeof attributes.userId === 'string' ? attributes.userId : principal && !principal.anonymous ? principal.subject : named?.userId
    const device = typeof attributes.deviceId === 'string' ? attributes.deviceId : named?.deviceId
    return { user, device, anonymous: principal?.anonymous ?? false }
  }

  const describe = (client: Client): Omit<ClientInfo, 'subscriptions'> => {
    const c = internalsOf(client)
    const { user, device } = identity(client)
    // WebSocket connections come with their HTTP request; TCP and TLS are the socket itself.
    const socket = c.req?.socket ?? c.conn
    const listener = c.req ? (socket.encrypted ? 'wss' : 'ws') : socket.encrypted ? 'tls' : 'tcp'
    const address = socket.remoteAddress ? `${socket.remoteAddress.includes(':') ? `[${socket.remoteAddress}]` : socket.remoteAddress}:${socket.remotePort ?? ''}` : undefined
    const interval = c._keepaliveInterval ?? -1
    const since = connectedAt.get(client)
    return {
      clientId: client.id,
      ...(user ? { user } : {}),
      ...(device ? { device } : {}),
      node: node.brokerId,
      ...(address ? { address } : {}),
      listener,
      ...(since ? { connectedAt: since } : {}),
      keepalive: interval > 0 ? Math.round((interval - 1) / 1500) : 0,
      cleanSession: client.clean,
      protocolVersion: client.version
    }
  }
  const subscriptionsOf = (client: Client) =>
    Object.entries(internalsOf(client).subscriptions)
      .filter(([, s]) => s)
      .map(([topic, s]) => ({ topic, qos: s!.qos }))
      .sort((a, b) => a.topic.localeCompare(b.topic))

  /** Fills in the queue depth of the persistent sessions among `clients`. */
  const withQueues = async <T extends { clientId: string; cleanSession: boolean; queued?: number }>(clients: T[]): Promise<T[]> => {
    const persistent = clients.filter((c) => !c.cleanSession)
    const queued = await store.queued(persistent.map((c) => c.clientId))
    persistent.forEach((c, i) => (c.queued = queued[i]))
    return clients
  }

  /** The node a --node option names (broker id or node name), or a 404. */
  const resolveNode = async (name: string) => {
    const known = await node.nodes()
    const target = known.find((n) => n.brokerId === name) ?? known.find((n) => n.nodeName === name)
    if (!target) throw new AdminError('not_found', `no live node ${name} (see parley admin nodes)`)
    return target.brokerId
  }

  /** The results of the nodes that answered, and the nodes that did not or failed (a partial listing says so). */
  const partial = <T>(gathered: GatherResult<T>) => ({
    results: gathered.answers.flatMap((a) => (a.ok && a.result !== undefined ? [a.result] : [])),
    missing: [...gathered.missing, ...gathered.answers.filter((a) => !a.ok).map((a) => a.node)].sort()
  })

  /** The answers that found something, and a 503 when nothing was found but some node did not answer. */
  const found = <T>(gathered: GatherResult<T | null>, clientId: string): T[] => {
    const hits = gathered.answers.flatMap((a) => (a.ok && a.result ? [a.result] : []))
    if (hits.length) return hits
    // Not found, but a node that failed or stayed silent may hold it: say so rather than "not found".
    const failed = gathered.answers.find((a) => !a.ok)
    if (failed) throw new AdminError('internal', `node ${failed.node} failed: ${failed.error ?? 'unknown error'}`)
    if (gathered.missing.length) {
      throw new AdminError('unavailable', `${clientId} is not on the nodes that answered; ${gathered.missing.join(', ')} did not answer within ${node.config.admin.queryTimeoutMs} ms`)
    }
    return hits
  }

  // ---- clients --------------------------------------------------------------------------------
  query.handle('core.clients', async (args): Promise<ClientsAnswer> => {
    const { user, match, limit: max } = ClientsArgs.parse(args)
    const pattern = match ? globRegExp(match) : undefined
    const matching = live()
      .filter((c) => !pattern || pattern.test(c.id))
      .map((c) => ({ client: c, info: describe(c) }))
      .filter(({ info }) => !user || info.user === user)
      .sort((a, b) => a.info.clientId.localeCompare(b.info.clientId))
    return { clients: matching.slice(0, max).map(({ client, info }) => ({ ...info, subscriptions: subscriptionsOf(client).length })), total: matching.length }
  })

  api.route({
    method: 'GET',
    path: '/clients',
    tag: 'clients',
    scope: 'read',
    summary: 'Connected MQTT clients on every node (persistent sessions that are offline: GET /sessions)',
    query: z
      .object({
        user: Id.optional(),
        node: z.string().min(1).max(128).optional().describe('broker id or node name: only that node'),
        match: checked(globProblem).optional().describe('client id glob: * any characters, ? one'),
        limit: limit(100_000, 1000)
      })
      .strict(),
    response: z.object({
      clients: z.array(ClientInfo),
      total: z.number().int().describe('matching clients, before the limit'),
      truncated: z.boolean(),
      missing: Missing
    }),
    handler: async ({ query: q }) => {
      const target = q.node ? await resolveNode(q.node) : undefined
      const gathered = await query.ask<ClientsAnswer>('core.clients', { user: q.user, match: q.match, limit: q.limit }, target ? { node: target } : {})
      const { results: answers, missing } = partial(gathered)
      const all = answers.flatMap((a) => a.clients).sort((a, b) => a.clientId.localeCompare(b.clientId) || a.node.localeCompare(b.node))
      const total = answers.reduce((n, a) => n + a.total, 0)
      const clients = await withQueues(all.slice(0, q.limit))
      return { clients, total, truncated: total > clients.length, missing }
    }
  })

  query.handle('core.client', async (args): Promise<ClientDetail | null> => {
    const { clientId } = OneClientArgs.parse(args)
    const client = find(clientId)
    if (!client) return null
    return { ...describe(client), anonymous: identity(client).anonymous, subscriptions: subscriptionsOf(client) }
  })

  const notConnected = async (clientId: string) => {
    const stored = await store.subscriptions(clientId)
    return new AdminError(
      'not_found',
      `${clientId} is not connected to any node${stored.length ? ` (it has a persistent session: parley admin sessions show ${clientId})` : ''}`
    )
  }

  api.route({
    method: 'GET',
    path: '/clients/:clientId',
    tag: 'clients',
    scope: 'read',
    summary: 'One connected client: connection, identity, subscriptions, queue depth',
    params: z.object({ clientId: ClientId }),
    response: z.object({ client: ClientDetail, alsoOn: z.array(z.string()).describe('other nodes holding a client with this id (a takeover in progress)') }),
    handler: async ({ params }) => {
      const hits = found(await query.ask<ClientDetail | null>('core.client', { clientId: params.clientId }), params.clientId)
      if (!hits.length) throw await notConnected(params.clientId)
      const [client] = await withQueues([hits[0]!])
      return { client: client!, alsoOn: hits.slice(1).map((h) => h.node) }
    }
  })

  query.handle('core.kick', async (args): Promise<KickAnswer | null> => {
    const { clientId, session } = KickArgs.parse(args)
    const client = find(clientId)
    if (!client) return null
    // Closed like a dropped connection (its will, if any, is published); the device may reconnect.
    await new Promise<void>((resolve) => client.close(() => resolve()))
    const discard = session && !client.clean
    if (discard) await node.persistence().cleanSubscriptions({ id: clientId })
    return { node: node.brokerId, cleanSession: client.clean, sessionDiscarded: discard }
  })

  api.route({
    method: 'POST',
    path: '/clients/:clientId/kick',
    tag: 'clients',
    scope: 'operator',
    summary: 'Close a client\'s connection wherever it is in the cluster; with `session`, also discard its persistent session',
    description:
      'The connection is closed as if it dropped: the client\'s will (if any) is published and the client may reconnect. With `session: true` its stored subscriptions and queued messages go too, also when it is not connected (with the in-memory persistence Aedes keeps the queued messages themselves until the id next connects). 404 when the client is neither connected nor (with `session`) has a persistent session.',
    params: z.object({ clientId: ClientId }),
    body: z.object({ session: z.boolean().default(false) }).strict(),
    response: z.object({
      clientId: z.string(),
      found: z.boolean().describe('a connection was found and closed'),
      node: z.string().optional(),
      sessionDiscarded: z.boolean()
    }),
    handler: async ({ params, body, audit }) => {
      const { clientId } = params
      const hits = found(await query.ask<KickAnswer | null>('core.kick', { clientId, session: body.session }), clientId)
      const hit = hits[0]
      if (hit) {
        audit({ clientId, node: hit.node, sessionDiscarded: hit.sessionDiscarded })
        return { clientId, found: true, node: hit.node, sessionDiscarded: hit.sessionDiscarded }
      }
      if (body.session && (await store.subscriptions(clientId)).length) {
        await node.persistence().cleanSubscriptions({ id: clientId })
        audit({ clientId, sessionDiscarded: true })
        return { clientId, found: false, sessionDiscarded: true }
      }
      throw new AdminError('not_found', `${clientId} is not connected to any node${body.session ? ' and has no persistent session' : ''}`)
    }
  })

  // ---- sessions -------------------------------------------------------------------------------
  query.handle('core.online', async (args) => {
    const { ids } = OnlineArgs.parse(args)
    return ids.filter((id) => find(id))
  })

  /** Which of `ids` are connected, and where. */
  const whereOnline = async (ids: string[]): Promise<{ at: Map<string, string>; missing: string[] }> => {
    const at = new Map<string, string>()
    if (!ids.length) return { at, missing: [] }
    const gathered = await query.ask<string[]>('core.online', { ids })
    for (const a of gathered.answers) for (const id of a.ok ? (a.result ?? []) : []) at.set(id, a.node)
    return { at, missing: partial(gathered).missing }
  }

  const sessionsOf = async (ids: string[]) => {
    const [stats, online] = await Promise.all([store.stats(ids), whereOnline(ids)])
    const sessions = ids.map((id, i) => {
      const named = parseClientId(id)
      const node = online.at.get(id)
      return {
        clientId: id,
        ...(named ? { user: named.userId, device: named.deviceId } : {}),
        online: Boolean(node),
        ...(node ? { node } : {}),
        subscriptions: stats[i]!.subscriptions,
        queued: stats[i]!.queued
      }
    })
    return { sessions, missing: online.missing }
  }

  api.route({
    method: 'GET',
    path: '/sessions',
    tag: 'sessions',
    scope: 'read',
    summary: 'Persistent sessions (clean session off), online or not, with their queue depth',
    description: 'A persistent session is what Aedes stores for a client id: its subscriptions and its queue of QoS 1/2 messages. `user` filters on `<user>:<device>` client ids.',
    query: z.object({ user: Id.optional(), limit: limit(100_000, 1000) }).strict(),
    response: z.object({ sessions: z.array(SessionInfo), total: z.number().int(), truncated: z.boolean(), missing: Missing }),
    handler: async ({ query: q }) => {
      const prefix = q.user ? `${q.user}:` : undefined
      const ids = await store.ids((id) => !prefix || id.startsWith(prefix))
      const { sessions, missing } = await sessionsOf(ids.slice(0, q.limit))
      return { sessions, total: ids.length, truncated: ids.length > q.limit, missing }
    }
  })

  api.route({
    method: 'GET',
    path: '/sessions/:clientId',
    tag: 'sessions',
    scope: 'read',
    summary: 'One persistent session: stored subscriptions, queue depth, where it is connected',
    params: z.object({ clientId: ClientId }),
    response: SessionInfo.omit({ subscriptions: true }).extend({ subscriptions: z.array(Subscription), missing: Missing }),
    handler: async ({ params }) => {
      const { clientId } = params
      const subscriptions = (await store.subscriptions(clientId)).map((s) => ({ topic: s.topic, qos: s.qos })).sort((a, b) => a.topic.localeCompare(b.topic))
      const { sessions, missing } = await sessionsOf([clientId])
      const session = sessions[0]!
      if (!subscriptions.length) {
        throw new AdminError('not_found', `${clientId} has no persistent session${session.online ? ' (it is connected with a clean session)' : ''}`)
      }
      return { ...session, subscriptions, missing }
    }
  })

  // ---- subscriptions ----------------------------------------------------------------------------
  /** Subscribes a connected client as its own SUBSCRIBE would (the ACL, the session, retained messages); null: refused. */
  const subscribeLive = async (client: Client, topic: string, qos: 0 | 1 | 2): Promise<number | null> => {
    const granted = await node.host().runAuthorizeSubscribe(client, { topic, qos })
    if (!granted) {
      // A refused SUBSCRIBE reports qos 128 to the `subscribed` hooks (limits stops counting it).
      node.aedes().emit('subscribe', [{ topic, qos: 128 }], client)
      return null
    }
    // No messageId: Aedes subscribes and stores it without writing a SUBACK the client never asked for.
    const packet = { subscriptions: [{ topic: granted.topic, qos: granted.qos }] }
    await callback((done) => client.subscribe(packet, done))
    return internalsOf(client).subscriptions[granted.topic]?.qos ?? null
  }
  const unsubscribeLive = async (client: Client, topic: string): Promise<boolean> => {
    if (!internalsOf(client).subscriptions[topic]) return false
    // Without a messageId Aedes only unsubscribes the connection; an UNSUBSCRIBE also updates the session.
    if (!client.clean) await node.persistence().removeSubscriptions(client, [topic])
    await callback((done) => client.unsubscribe({ unsubscriptions: [topic] } as never, done))
    return true
  }

  query.handle('core.subscriptions', async (args): Promise<SubscriptionAnswer | null> => {
    const a = SubscriptionArgs.parse(args)
    const client = find(a.clientId)
    if (!client) return null
    if (a.op === 'list') return { op: 'list', node: node.brokerId, subscriptions: subscriptionsOf(client) }
    if (a.op === 'add') return { op: 'add', node: node.brokerId, granted: await subscribeLive(client, a.topic, a.qos) }
    return { op: 'remove', node: node.brokerId, removed: await unsubscribeLive(client, a.topic) }
  })

  /** Runs a subscription operation where the client is connected; undefined when it is not connected anywhere. */
  const onLiveClient = async <K extends SubscriptionArgs['op']>(args: Extract<SubscriptionArgs, { op: K }>) => {
    const hits = found(await query.ask<SubscriptionAnswer | null>('core.subscriptions', args), args.clientId)
    return hits[0] as Extract<SubscriptionAnswer, { op: K }> | undefined
  }
  const requireSession = async (clientId: string) => {
    const stored = await store.subscriptions(clientId)
    if (!stored.length) throw new AdminError('not_found', `${clientId} is not connected to any node and has no persistent session`)
    return stored
  }

  api.route({
    method: 'GET',
    path: '/clients/:clientId/subscriptions',
    tag: 'subscriptions',
    scope: 'read',
    summary: "A client's subscriptions: its connection's when connected, its persistent session's otherwise",
    params: z.object({ clientId: ClientId }),
    response: z.object({ clientId: z.string(), online: z.boolean(), node: z.string().optional(), subscriptions: z.array(Subscription) }),
    handler: async ({ params }) => {
      const { clientId } = params
      const hit = await onLiveClient({ op: 'list', clientId })
      if (hit) return { clientId, online: true, node: hit.node, subscriptions: hit.subscriptions }
      const stored = await requireSession(clientId)
      return { clientId, online: false, subscriptions: stored.map((s) => ({ topic: s.topic, qos: s.qos })).sort((a, b) => a.topic.localeCompare(b.topic)) }
    }
  })

  api.route({
    method: 'POST',
    path: '/clients/:clientId/subscriptions',
    tag: 'subscriptions',
    scope: 'operator',
    summary: 'Subscribe a client to a topic filter, as if it had sent the SUBSCRIBE itself',
    description:
      "The subscription passes the same authorization as the client's own SUBSCRIBE (403 when refused): an operator cannot make a device read what it may not. A connected client is subscribed on the node that holds it, retained messages included; a client that is not connected gets it in its persistent session (404 without one). Plugins that decide by the device's identity (auth-jwt with protocol) only know it while the device is connected, so they refuse subscriptions for a session that is offline.",
    params: z.object({ clientId: ClientId }),
    body: z.object({ topic: TopicFilter, qos: Qos.default(1) }).strict(),
    status: 201,
    response: SubscriptionChange.extend({ qos: z.number().int().describe('the QoS granted') }),
    handler: async ({ params, body, audit }) => {
      const { clientId } = params
      audit({ clientId, topic: body.topic, qos: body.qos })
      const refused = (why: string) => new AdminError('forbidden', `subscription of ${clientId} to ${body.topic} refused by the subscription ACL${why}`)
      const hit = await onLiveClient({ op: 'add', clientId, topic: body.topic, qos: body.qos })
      if (hit) {
        if (hit.granted === null) throw refused('')
        audit({ node: hit.node, granted: hit.granted })
        return { clientId, topic: body.topic, qos: hit.granted, online: true, node: hit.node }
      }
      await requireSession(clientId)
      // The ACL sees a client without a connection, hence without an identity.
      const standIn = { id: clientId, clean: false } as unknown as Client
      const granted = await node.host().runAuthorizeSubscribe(standIn, { topic: body.topic, qos: body.qos })
      if (!granted) throw refused(` (${clientId} is offline: plugins that check the device's identity know it only while it is connected; retry when it is)`)
      await node.persistence().addSubscriptions({ id: clientId }, [{ topic: granted.topic, qos: granted.qos }])
      audit({ granted: granted.qos })
      return { clientId, topic: granted.topic, qos: granted.qos, online: false }
    }
  })

  api.route({
    method: 'DELETE',
    path: '/clients/:clientId/subscriptions',
    tag: 'subscriptions',
    scope: 'operator',
    summary: 'Unsubscribe a client from a topic filter, as if it had sent the UNSUBSCRIBE itself',
    description: 'On the node holding the connection when connected (its persistent session too), in the stored session otherwise. 404 when the client has no such subscription.',
    params: z.object({ clientId: ClientId }),
    query: z.object({ topic: TopicFilter }).strict(),
    response: SubscriptionChange,
    handler: async ({ params, query: q, audit }) => {
      const { clientId } = params
      audit({ clientId, topic: q.topic })
      const gone = () => new AdminError('not_found', `${clientId} has no subscription to ${q.topic}`)
      const hit = await onLiveClient({ op: 'remove', clientId, topic: q.topic })
      if (hit) {
        if (!hit.removed) throw gone()
        audit({ node: hit.node })
        return { clientId, topic: q.topic, online: true, node: hit.node }
      }
      const stored = await requireSession(clientId)
      if (!stored.some((s) => s.topic === q.topic)) throw gone()
      await node.persistence().removeSubscriptions({ id: clientId }, [q.topic])
      return { clientId, topic: q.topic, online: false }
    }
  })

  // ---- retained messages ------------------------------------------------------------------------
  const retained = async (filter: string) => {
    const messages: Array<{ topic: string; qos: number; payload: Buffer }> = []
    for await (const p of node.persistence().createRetainedStreamCombi([filter])) messages.push({ topic: p.topic, qos: p.qos, payload: Buffer.from(p.payload) })
    return messages.sort((a, b) => a.topic.localeCompare(b.topic))
  }

  api.route({
    method: 'GET',
    path: '/retained',
    tag: 'retained',
    scope: 'read',
    summary: 'Retained messages matching a topic filter: topic, size, QoS (payloads only on request)',
    description: '`payload=true` adds each payload (UTF-8 text when it is valid UTF-8, base64 otherwise) and needs the operator scope: payloads are user data.',
    query: z.object({ topic: TopicFilter.default('#'), payload: Flag, limit: limit(100_000, 1000) }).strict(),
    response: z.object({
      retained: z.array(
        z.object({
          topic: z.string(),
          qos: z.number().int(),
          size: z.number().int().describe('payload bytes'),
          payload: z.string().optional(),
          encoding: z.enum(['utf8', 'base64']).optional()
        })
      ),
      total: z.number().int(),
      truncated: z.boolean()
    }),
    handler: async ({ query: q, caller }) => {
      if (q.payload && !scopeAllows(caller.scope, 'operator')) throw new AdminError('forbidden', 'payloads are user data: payload=true needs the operator scope')
      const all = await retained(q.topic)
      return {
        retained: all.slice(0, q.limit).map((m) => {
          const text = m.payload.toString('utf8')
          const utf8 = Buffer.from(text, 'utf8').equals(m.payload)
          return {
            topic: m.topic,
            qos: m.qos,
            size: m.payload.length,
            ...(q.payload ? { payload: utf8 ? text : m.payload.toString('base64'), encoding: utf8 ? ('utf8' as const) : ('base64' as const) } : {})
          }
        }),
        total: all.length,
        truncated: all.length > q.limit
      }
    }
  })

  api.route({
    method: 'DELETE',
    path: '/retained',
    tag: 'retained',
    scope: 'operator',
    summary: 'Remove the retained messages matching a topic (or filter), without publishing anything',
    query: z.object({ topic: TopicFilter }).strict(),
    response: z.object({ filter: z.string(), removed: z.number().int(), topics: z.array(z.string()) }),
    handler: async ({ query: q, audit }) => {
      const topics = (await retained(q.topic)).map((m) => m.topic)
      // An empty retained payload is how every persistence deletes one.
      for (const topic of topics) await node.persistence().storeRetained({ cmd: 'publish', topic, payload: Buffer.alloc(0), qos: 0, retain: true })
      audit({ filter: q.topic, removed: topics.length })
      return { filter: q.topic, removed: topics.length, topics }
    }
  })
}
