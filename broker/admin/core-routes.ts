// Core admin routes: API keys, cluster status, nodes, drain, the effective configuration.
// The chat entities (users, groups, messages, push) are declared by their plugins.
import { z } from 'zod'
import { Id } from '../../schemas/identity.js'
import { redactConfig } from '../config.js'
import { AdminError, type AdminApi } from './api.js'
import type { ClusterQuery } from './cluster-query.js'
import { ApiKeyInfo, Scope, type ApiKeyStore } from './keys.js'
import type { NodeAccess } from './node-access.js'
import { registerMetricsRoutes } from './metrics-routes.js'
import { registerSessionRoutes } from './session-routes.js'

/** The sections of `GET /users/:user`, contributed by plugins (AdminContext.userFacet). */
export class UserFacets {
  private readonly facets = new Map<string, (user: string) => Promise<unknown>>()
  add(name: string, describe: (user: string) => Promise<unknown>): void {
    if (this.facets.has(name) || name === 'user' || name === 'clients') throw new Error(`user facet "${name}" is declared twice or reserved`)
    this.facets.set(name, describe)
  }
  async describe(user: string): Promise<Record<string, unknown>> {
    const entries = await Promise.all(
      [...this.facets].map(async ([name, describe]) => {
        try {
          return [name, await describe(user)] as const
        } catch (err) {
          return [name, { error: (err as Error).message }] as const
        }
      })
    )
    return Object.fromEntries(entries)
  }
}


/** A connected client as the user view lists it. */
const UserClient = z.object({ clientId: z.string(), node: z.string(), connectedAt: z.number().int().optional(), address: z.string().optional() })

const DURATION = /^(\d+)(s|m|h|d)$/
const durationMs = (text: string) => {
  const m = DURATION.exec(text)!
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd']
}

export const NodeStatus = z.object({
  brokerId: z.string(),
  nodeName: z.string(),
  host: z.string(),
  pid: z.number().int(),
  version: z.string(),
  startedAt: z.number().int(),
  lastHeartbeat: z.number().int(),
  clients: z.number().int(),
  accepting: z.boolean(),
  listeners: z.array(z.object({ name: z.string(), host: z.string(), port: z.number().int() }))
})

const NodeReadiness = z.object({
  node: z.string(),
  ready: z.boolean(),
  checks: z.record(z.string(), z.object({ ok: z.boolean(), ms: z.number(), error: z.string().optional() }))
})

export function registerCoreRoutes(api: AdminApi, query: ClusterQuery, node: NodeAccess, keys: ApiKeyStore, facets: UserFacets): void {
  registerSessionRoutes(api, query, node)
  registerMetricsRoutes(api, query, node)

  // ---- keys -------------------------------------------------------------------------------
  api.route({
    method: 'POST',
    path: '/keys',
    tag: 'keys',
    scope: 'admin',
    bootstrap: true,
    status: 201,
    summary: 'Create an API key (shown once)',
    body: z
      .object({
        name: z.string().regex(/^[A-Za-z0-9_.@-]{1,64}$/, { error: 'expected 1-64 characters of A-Z a-z 0-9 _ . @ -' }),
        scope: Scope,
        ttl: z.string().regex(DURATION, { error: 'expected a duration like 90s, 15m, 12h, 30d' }).optional()
      })
      .strict(),
    response: z.object({ key: z.string().describe('the secret key: store it now, it is not kept'), info: ApiKeyInfo }),
    handler: async ({ body, audit }) => {
      const created = await keys.create({ name: body.name, scope: body.scope, ttlMs: body.ttl ? durationMs(body.ttl) : undefined })
      audit({ created: created.info.id, scope: body.scope, name: body.name })
      return created
    }
  })
  api.route({
    method: 'GET',
    path: '/keys',
    tag: 'keys',
    scope: 'admin',
    bootstrap: true,
    summary: 'List API keys (never their secrets)',
    response: z.object({ keys: z.array(ApiKeyInfo) }),
    handler: async () => ({ keys: await keys.list() })
  })
  api.route({
    method: 'DELETE',
    path: '/keys/:id',
    tag: 'keys',
    scope: 'admin',
    bootstrap: true,
    summary: 'Revoke an API key',
    params: z.object({ id: z.string().regex(/^[0-9a-f]{16}$/, { error: 'expected a key id (16 hex characters)' }) }),
    response: z.object({ revoked: z.string() }),
    handler: async ({ params }) => {
      if (!(await keys.revoke(params.id))) throw new AdminError('not_found', `no active key ${params.id}`)
      return { revoked: params.id }
    }
  })

  // ---- status and nodes ---------------------------------------------------------------------
  query.handle('core.readiness', async () => ({ node: node.brokerId, ...(await node.readiness()) }))

  api.route({
    method: 'GET',
    path: '/status',
    tag: 'cluster',
    scope: 'read',
    summary: 'The cluster at a glance: nodes, clients, readiness of every backend on every node',
    response: z.object({
      self: z.string(),
      version: z.string(),
      nodes: z.number().int(),
      clients: z.number().int(),
      ready: z.boolean(),
      readiness: z.array(NodeReadiness),
      missing: z.array(z.string()).describe('nodes that did not answer within admin.queryTimeoutMs')
    }),
    handler: async () => {
      const nodes = await node.nodes()
      const gathered = await query.ask<z.infer<typeof NodeReadiness>>('core.readiness', {})
      const readiness = gathered.answers.filter((a) => a.ok && a.result).map((a) => a.result!)
      return {
        self: node.brokerId,
        version: node.version,
        nodes: nodes.length,
        clients: nodes.reduce((n, x) => n + x.clients, 0),
        ready: gathered.missing.length === 0 && readiness.every((r) => r.ready),
        readiness: readiness.sort((a, b) => a.node.localeCompare(b.node)),
        missing: gathered.missing
      }
    }
  })

  api.route({
    method: 'GET',
    path: '/nodes',
    tag: 'cluster',
    scope: 'read',
    summary: 'The cluster view: live nodes, their clients and last heartbeat',
    response: z.object({ self: z.string(), nodes: z.array(NodeStatus.omit({ version: true })) }),
    handler: async () => ({ self: node.brokerId, nodes: await node.nodes() })
  })

  query.handle('core.drain', async (args) => {
    const { reason } = z.object({ reason: z.string() }).parse(args)
    node.requestStop(reason)
    return { draining: node.brokerId, clients: node.aedes().connectedClients }
  })
  api.route({
    method: 'POST',
    path: '/nodes/:node/drain',
    tag: 'cluster',
    scope: 'operator',
    summary: 'Drain a node for a rolling restart: it stops accepting, moves its clients away, and exits',
    description: 'The node disconnects its clients at shutdown.drainRatePerSecond (they reconnect to the other nodes), then stops. Answers once the node has started draining.',
    params: z.object({ node: z.string().min(1).max(128) }),
    status: 202,
    response: z.object({ draining: z.string(), clients: z.number().int() }),
    handler: async ({ params, caller, audit }) => {
      const known = await node.nodes()
      const target = known.find((n) => n.brokerId === params.node) ?? known.find((n) => n.nodeName === params.node)
      if (!target) throw new AdminError('not_found', `no live node ${params.node} (see parley admin nodes)`)
      const others = known.filter((n) => n.brokerId !== target.brokerId && n.accepting)
      if (!others.length) throw new AdminError('conflict', `${target.brokerId} is the only node accepting clients: draining it would leave none`)
      audit({ node: target.brokerId })
      const answer = await query.ask<{ draining: string; clients: number }>('core.drain', { reason: `admin API (${caller.name})` }, { node: target.brokerId })
      const reply = answer.answers[0]
      if (!reply) throw new AdminError('unavailable', `${target.brokerId} did not answer within ${node.config.admin.queryTimeoutMs} ms`)
      if (!reply.ok || !reply.result) throw new AdminError('internal', reply.error ?? 'drain failed')
      return reply.result
    }
  })

  // ---- users: the core part (connected clients) and every plugin's facet ----------------------
  query.handle('core.userClients', async (args) => {
    const { user } = z.object({ user: Id }).parse(args)
    const prefix = `${user}:`
    return Object.values(node.clients())
      .filter((c) => c && !c.closed && c.id?.startsWith(prefix))
      .map((c) => {
        const conn = (c as unknown as { conn?: { remoteAddress?: string }; req?: { socket?: { remoteAddress?: string } } })
        const address = conn.conn?.remoteAddress ?? conn.req?.socket?.remoteAddress
        return { clientId: c!.id, node: node.brokerId, ...(address ? { address } : {}) }
      })
  })
  api.route({
    method: 'GET',
    path: '/users/:user',
    tag: 'users',
    scope: 'read',
    summary: 'A user: connected clients on every node, and what each plugin knows (devices, groups, presence, last seen...)',
    params: z.object({ user: Id }),
    response: z.object({
      user: z.string(),
      clients: z.array(UserClient),
      missing: z.array(z.string()).describe('nodes that did not answer within admin.queryTimeoutMs'),
      facets: z.record(z.string(), z.unknown())
    }),
    handler: async ({ params }) => {
      const [gathered, described] = await Promise.all([query.ask<Array<z.infer<typeof UserClient>>>('core.userClients', { user: params.user }), facets.describe(params.user)])
      const clients = gathered.answers.flatMap((a) => (a.ok && a.result ? a.result : [])).sort((a, b) => a.clientId.localeCompare(b.clientId))
      return { user: params.user, clients, missing: gathered.missing, facets: described }
    }
  })

  query.handle('core.config', async () => redactConfig(node.config))
  api.route({
    method: 'GET',
    path: '/config',
    tag: 'cluster',
    scope: 'admin',
    summary: "A node's effective configuration, secrets redacted",
    query: z.object({ node: z.string().min(1).max(128).optional().describe('broker id (default: the node answering)') }).strict(),
    response: z.object({ node: z.string(), config: z.record(z.string(), z.unknown()) }),
    handler: async ({ query: q }) => {
      if (!q.node || q.node === node.brokerId) return { node: node.brokerId, config: redactConfig(node.config) as unknown as Record<string, unknown> }
      const answer = await query.ask<Record<string, unknown>>('core.config', {}, { node: q.node })
      const reply = answer.answers[0]
      if (!reply) throw new AdminError('not_found', `node ${q.node} did not answer (see parley admin nodes)`)
      return { node: q.node, config: reply.result ?? {} }
    }
  })
}
