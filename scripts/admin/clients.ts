// parley admin clients | sessions | subscriptions | retained: the MQTT side of a cluster, after
// `vmq-admin session show` and `emqx ctl clients`. Every argument is checked here before any
// request, with the same rules as the API (broker/admin/mqtt-names.ts).
import type { Command } from 'commander'
import type { z } from 'zod'
import type { ClientDetail as ClientDetailSchema, ClientInfo as ClientInfoSchema, SessionInfo as SessionInfoSchema } from '../../broker/admin/session-routes.js'
import { clientIdProblem, globProblem, topicFilterProblem } from '../../broker/admin/mqtt-names.js'
import { ADMIN_EXIT, CliError } from './client.js'
import { action, requireId, show, withCommon, type AdminRun } from './kit.js'
import { ago, fields, table, when } from './output.js'

/** The API's own row types (broker/admin/session-routes.ts). */
export type ClientInfo = z.output<typeof ClientInfoSchema>
type ClientDetail = z.output<typeof ClientDetailSchema>
export type SessionInfo = z.output<typeof SessionInfoSchema>
type Subscription = ClientDetail['subscriptions'][number]
interface Listing {
  total: number
  truncated: boolean
  missing?: string[]
}

const usage = (message: string) => new CliError(ADMIN_EXIT.usage, message)

function clientId(value: string): string {
  const why = clientIdProblem(value)
  if (why) throw usage(`client id "${value}": ${why}`)
  return value
}
function topicFilter(value: string, what = 'topic'): string {
  const why = topicFilterProblem(value)
  if (why) throw usage(`${what} "${value}": ${why}`)
  return value
}
function count(option: string, value: string | undefined, max: number): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  if (!/^\d+$/.test(value) || n < 1 || n > max) throw usage(`${option} "${value}": expected a whole number from 1 to ${max}`)
  return n
}
const path = (id: string) => encodeURIComponent(id)

/** Says on stderr what a listing left out: nodes that did not answer, rows past the limit. */
function notes(ctx: AdminRun, listing: Listing, shown: number, what: string): void {
  if (listing.missing?.length) ctx.note(`warning: ${listing.missing.join(', ')} did not answer (or failed): their ${what} are not listed`)
  if (listing.truncated) ctx.note(`${shown} of ${listing.total} ${what} shown (--limit)`)
  else if (!ctx.json && listing.total === 0) ctx.note(`no ${what}`)
}

const yesNo = (b: boolean) => (b ? 'yes' : 'no')

export function registerClientsCommands(admin: Command): void {
  registerClients(admin)
  registerSessions(admin)
  registerSubscriptions(admin)
  registerRetained(admin)
}

function registerClients(admin: Command): void {
  const clients = admin
    .command('clients')
    .description('connected MQTT clients on every node of the cluster (offline persistent sessions: see sessions)')

  withCommon(clients.command('list'))
    .description(
      'list the clients connected now, on every node: id, user, device, node, address, listener, connected since, keepalive, clean session, subscriptions, queue depth. Clients that are not connected are not listed: `sessions list` shows persistent sessions, online or not'
    )
    .option('--user <userId>', "only this user's clients")
    .option('--node <node>', 'only the clients of this node (broker id or node name)')
    .option('--match <pattern>', 'only client ids matching this glob (* any characters, ? one), e.g. "alice:*"')
    .option('--limit <n>', 'show at most n clients (default 1000)')
    .action(
      action('clients list', async (ctx, options: { user?: string; node?: string; match?: string; limit?: string }) => {
        if (options.user !== undefined) requireId('--user', options.user)
        if (options.node !== undefined && (options.node.length < 1 || options.node.length > 128)) throw usage('--node: expected a broker id or node name (see nodes)')
        if (options.match !== undefined) {
          const why = globProblem(options.match)
          if (why) throw usage(`--match "${options.match}": ${why}`)
        }
        const limit = count('--limit', options.limit, 100_000)
        const answer = await ctx.client.request<Listing & { clients: ClientInfo[] }>('GET', '/clients', {
          query: { user: options.user, node: options.node, match: options.match, limit }
        })
        const now = Date.now()
        show(ctx, answer, () =>
          table(
            ['client id', 'user', 'device', 'node', 'address', 'listener', 'connected', 'keepalive', 'clean', 'subs', 'queued'],
            answer.clients.map((c) => [
              c.clientId,
              c.user,
              c.device,
              c.node,
              c.address,
              c.listener,
              c.connectedAt ? ago(now - c.connectedAt) : undefined,
              c.keepalive ? `${c.keepalive}s` : 'off',
              yesNo(c.cleanSession),
              c.subscriptions,
              c.queued
            ])
          )
        )
        notes(ctx, answer, answer.clients.length, 'connected clients')
      })
    )

  withCommon(clients.command('show'))
    .description('one connected client: where it is connected, its identity, keepalive, session, subscriptions and queue depth')
    .argument('<clientId>', 'the MQTT client id (chat devices: <userId>:<deviceId>)')
    .action(
      action('clients show', async (ctx, id: string) => {
        const answer = await ctx.client.request<{ client: ClientDetail; alsoOn: string[] }>('GET', `/clients/${path(clientId(id))}`)
        const c = answer.client
        show(ctx, answer, () =>
          [
            fields([
              ['client id', c.clientId],
              ['user', c.user],
              ['device', c.device],
              ['anonymous', yesNo(c.anonymous)],
              ['node', c.node + (answer.alsoOn.length ? ` (also on ${answer.alsoOn.join(', ')})` : '')],
              ['address', c.address],
              ['listener', c.listener],
              ['connected since', c.connectedAt ? `${when(c.connectedAt)} (${ago(Date.now() - c.connectedAt)})` : undefined],
              ['keepalive', c.keepalive ? `${c.keepalive}s` : 'off'],
              ['protocol', c.protocolVersion === 4 ? 'MQTT 3.1.1' : c.protocolVersion === 3 ? 'MQTT 3.1' : `version ${c.protocolVersion}`],
              ['clean session', yesNo(c.cleanSession)],
              ['queued', c.cleanSession ? 'n/a (clean session)' : c.queued],
              ['subscriptions', c.subscriptions.length]
            ]),
            ...(c.subscriptions.length ? ['', table(['topic', 'qos'], c.subscriptions.map((s) => [s.topic, s.qos]))] : [])
          ].join('\n')
        )
      })
    )

  withCommon(clients.command('kick'))
    .description(
      "close a client's connection, wherever it is in the cluster (operator scope). It is closed as if it dropped: its will is published, and a device that reconnects by itself comes back. Exit 3 when it is not connected (with --session: and has no persistent session)"
    )
    .argument('<clientId>', 'the MQTT client id')
    .option('--session', 'also discard its persistent session (stored subscriptions and queued messages), connected or not')
    .action(
      action('clients kick', async (ctx, id: string, options: { session?: boolean }) => {
        const answer = await ctx.client.request<{ clientId: string; found: boolean; node?: string; sessionDiscarded: boolean }>('POST', `/clients/${path(clientId(id))}/kick`, {
          body: { session: Boolean(options.session) }
        })
        show(ctx, answer, () => {
          const closed = answer.found ? `connection closed on ${answer.node}` : 'not connected'
          const session = answer.sessionDiscarded ? '; persistent session discarded' : options.session ? '; no persistent session to discard (clean session)' : ''
          return `${answer.clientId}: ${closed}${session}`
        })
      })
    )
}

function registerSessions(admin: Command): void {
  const sessions = admin.command('sessions').description('persistent MQTT sessions (clean session off), online or not, and their queues')

  withCommon(sessions.command('list'))
    .description('list persistent sessions with their subscriptions and queue depth (messages waiting while away, or sent and not yet acknowledged), and where each is connected')
    .option('--user <userId>', "only this user's sessions (client ids <userId>:<deviceId>)")
    .option('--limit <n>', 'show at most n sessions (default 1000)')
    .action(
      action('sessions list', async (ctx, options: { user?: string; limit?: string }) => {
        if (options.user !== undefined) requireId('--user', options.user)
        const limit = count('--limit', options.limit, 100_000)
        const answer = await ctx.client.request<Listing & { sessions: SessionInfo[] }>('GET', '/sessions', { query: { user: options.user, limit } })
        show(ctx, answer, () =>
          table(
            ['client id', 'user', 'device', 'state', 'node', 'subs', 'queued'],
            answer.sessions.map((s) => [s.clientId, s.user, s.device, s.online ? 'online' : 'offline', s.node, s.subscriptions, s.queued])
          )
        )
        notes(ctx, answer, answer.sessions.length, 'persistent sessions')
      })
    )

  withCommon(sessions.command('show'))
    .description('one persistent session: its stored subscriptions, queue depth, and where it is connected')
    .argument('<clientId>', 'the MQTT client id')
    .action(
      action('sessions show', async (ctx, id: string) => {
        const s = await ctx.client.request<Omit<SessionInfo, 'subscriptions'> & { subscriptions: Subscription[]; missing: string[] }>('GET', `/sessions/${path(clientId(id))}`)
        show(ctx, s, () =>
          [
            fields([
              ['client id', s.clientId],
              ['user', s.user],
              ['device', s.device],
              ['state', s.online ? `online on ${s.node}` : s.missing.length ? `not connected to the nodes that answered (${s.missing.join(', ')} did not)` : 'offline'],
              ['queued', s.queued],
              ['subscriptions', s.subscriptions.length]
            ]),
            '',
            table(['topic', 'qos'], s.subscriptions.map((x) => [x.topic, x.qos]))
          ].join('\n')
        )
      })
    )
}

function registerSubscriptions(admin: Command): void {
  const subscriptions = admin
    .command('subscriptions')
    .description("a client's subscriptions: on its connection when it is connected (on whichever node), in its persistent session otherwise")

  interface Change {
    clientId: string
    topic: string
    qos?: number
    online: boolean
    node?: string
  }
  const where = (c: Change) => (c.online ? `connected on ${c.node}` : 'offline: persistent session')

  withCommon(subscriptions.command('list'))
    .description("list a client's subscriptions (exit 3 when it is neither connected nor has a persistent session)")
    .argument('<clientId>', 'the MQTT client id')
    .action(
      action('subscriptions list', async (ctx, id: string) => {
        const answer = await ctx.client.request<{ clientId: string; online: boolean; node?: string; subscriptions: Subscription[] }>('GET', `/clients/${path(clientId(id))}/subscriptions`)
        show(ctx, answer, () => table(['topic', 'qos'], answer.subscriptions.map((s) => [s.topic, s.qos])))
        if (!ctx.json) ctx.note(`${answer.clientId}: ${where({ ...answer, topic: '' })}`)
      })
    )

  withCommon(subscriptions.command('add'))
    .description(
      'subscribe a client to a topic filter as if it had sent the SUBSCRIBE itself (operator scope): the same ACL applies, and a refusal exits 4. A connected client gets retained messages at once; an offline one gets the subscription in its persistent session, unless the ACL needs its identity, which it knows only while the device is connected (the chat ACL does)'
    )
    .argument('<clientId>', 'the MQTT client id')
    .argument('<topic>', 'the topic filter (+ and # allowed)')
    .option('-q, --qos <qos>', 'maximum QoS: 0, 1 or 2', '1')
    .action(
      action('subscriptions add', async (ctx, id: string, topic: string, options: { qos: string }) => {
        clientId(id)
        topicFilter(topic)
        if (!['0', '1', '2'].includes(options.qos)) throw usage(`--qos "${options.qos}": expected 0, 1 or 2`)
        const answer = await ctx.client.request<Change>('POST', `/clients/${path(id)}/subscriptions`, { body: { topic, qos: Number(options.qos) } })
        show(ctx, answer, () => `${answer.clientId}: subscribed to ${answer.topic} (QoS ${answer.qos}; ${where(answer)})`)
      })
    )

  withCommon(subscriptions.command('remove'))
    .description('unsubscribe a client from a topic filter as if it had sent the UNSUBSCRIBE itself (operator scope); exit 3 when it has no such subscription')
    .argument('<clientId>', 'the MQTT client id')
    .argument('<topic>', 'the topic filter, exactly as subscribed')
    .action(
      action('subscriptions remove', async (ctx, id: string, topic: string) => {
        clientId(id)
        topicFilter(topic)
        const answer = await ctx.client.request<Change>('DELETE', `/clients/${path(id)}/subscriptions`, { query: { topic } })
        show(ctx, answer, () => `${answer.clientId}: unsubscribed from ${answer.topic} (${where(answer)})`)
      })
    )
}

function registerRetained(admin: Command): void {
  const retained = admin.command('retained').description('retained messages')

  withCommon(retained.command('list'))
    .description('list retained messages: topic, QoS, payload size. Payloads are user data: shown only with --payload, which needs an operator key')
    .option('-t, --topic <filter>', 'only topics matching this filter', '#')
    .option('--payload', 'include the payloads (UTF-8 text, or base64 when not text)')
    .option('--limit <n>', 'show at most n messages (default 1000)')
    .action(
      action('retained list', async (ctx, options: { topic: string; payload?: boolean; limit?: string }) => {
        topicFilter(options.topic, '--topic')
        const limit = count('--limit', options.limit, 100_000)
        const answer = await ctx.client.request<Listing & { retained: Array<{ topic: string; qos: number; size: number; payload?: string; encoding?: string }> }>(
          'GET',
          '/retained',
          { query: { topic: options.topic, payload: options.payload ? true : undefined, limit } }
        )
        show(ctx, answer, () =>
          table(
            ['topic', 'qos', 'size', ...(options.payload ? ['payload'] : [])],
            answer.retained.map((m) => [m.topic, m.qos, m.size, ...(options.payload ? [m.encoding === 'base64' ? `base64:${m.payload}` : m.payload] : [])])
          )
        )
        notes(ctx, answer, answer.retained.length, 'retained messages')
      })
    )

  withCommon(retained.command('clean'))
    .description('remove the retained messages of a topic, or of every topic matching a filter (operator scope); nothing is published to subscribers. Prints how many were removed')
    .argument('<topic>', 'a topic, or a filter with + and #; `retained list --topic <filter>` shows what it matches')
    .action(
      action('retained clean', async (ctx, topic: string) => {
        topicFilter(topic)
        const answer = await ctx.client.request<{ filter: string; removed: number; topics: string[] }>('DELETE', '/retained', { query: { topic } })
        show(ctx, answer, () => `${answer.removed} retained message${answer.removed === 1 ? '' : 's'} removed (${answer.filter})`)
      })
    )
}
