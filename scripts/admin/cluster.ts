// parley admin keys | status | nodes | drain | config show
import type { Command } from 'commander'
import type { NodeRecord } from '../../broker/cluster-view.js'
import { ADMIN_EXIT, CliError } from './client.js'
import { action, show, withCommon } from './kit.js'
import { ago, fields, table, when } from './output.js'

interface KeyInfo {
  id: string
  name: string
  scope: string
  createdAt: number
  expiresAt?: number
  revokedAt?: number
}
interface Status {
  self: string
  version: string
  nodes: number
  clients: number
  ready: boolean
  readiness: Array<{ node: string; ready: boolean; checks: Record<string, { ok: boolean; ms: number; error?: string }> }>
  missing: string[]
}

export function registerClusterCommands(admin: Command): void {
  const keys = admin.command('keys').description('admin API keys (scopes: read < operator < admin)')
  withCommon(keys.command('create'))
    .description('create an API key; authenticates with the bootstrap secret (admin.bootstrapSecret, or the file in the data directory) unless --key is given')
    .requiredOption('-n, --name <name>', 'who or what the key is for (1-64 of A-Z a-z 0-9 _ . @ -)')
    .requiredOption('-s, --scope <scope>', 'read, operator or admin')
    .option('--ttl <duration>', 'expire after, e.g. 12h, 30d (default: never)')
    .action(
      action(
        'keys create',
        async (ctx, options: { name: string; scope: string; ttl?: string }) => {
          if (!['read', 'operator', 'admin'].includes(options.scope)) throw new CliError(ADMIN_EXIT.usage, `--scope "${options.scope}": expected read, operator or admin`)
          const created = await ctx.client.request<{ key: string; info: KeyInfo }>('POST', '/keys', {
            body: { name: options.name, scope: options.scope, ...(options.ttl ? { ttl: options.ttl } : {}) }
          })
          if (ctx.json) return show(ctx, created, () => '')
          ctx.out(created.key)
          ctx.note(`key ${created.info.id} (${created.info.name}, scope ${created.info.scope}) created: store it now, it cannot be shown again`)
        },
        { bootstrap: true }
      )
    )
  withCommon(keys.command('list'))
    .description('list API keys (ids, names, scopes; never secrets)')
    .action(
      action(
        'keys list',
        async (ctx) => {
          const { keys: list } = await ctx.client.request<{ keys: KeyInfo[] }>('GET', '/keys')
          show(ctx, list, () =>
            table(
              ['id', 'name', 'scope', 'created', 'expires', 'state'],
              list.map((k) => [k.id, k.name, k.scope, when(k.createdAt), when(k.expiresAt), k.revokedAt ? `revoked ${when(k.revokedAt)}` : k.expiresAt && k.expiresAt < Date.now() ? 'expired' : 'active'])
            )
          )
        },
        { bootstrap: true }
      )
    )
  withCommon(keys.command('revoke'))
    .description('revoke an API key at once')
    .argument('<id>', 'the key id (16 hex characters, from keys list)')
    .action(
      action(
        'keys revoke',
        async (ctx, id: string) => {
          if (!/^[0-9a-f]{16}$/.test(id)) throw new CliError(ADMIN_EXIT.usage, `"${id}": expected a key id (16 hex characters, see keys list)`)
          const result = await ctx.client.request<{ revoked: string }>('DELETE', `/keys/${id}`)
          show(ctx, result, () => `key ${result.revoked} revoked`)
        },
        { bootstrap: true }
      )
    )

  withCommon(admin.command('status'))
    .description('the cluster at a glance: nodes, clients, readiness of every backend on every node; exit 1 when not ready')
    .action(
      action('status', async (ctx) => {
        const s = await ctx.client.request<Status>('GET', '/status')
        show(ctx, s, () => {
          const rows = s.readiness.flatMap((r) =>
            Object.entries(r.checks).map(([check, c]) => [r.node, check, c.ok ? 'ok' : 'FAIL', `${c.ms}ms`, c.error ?? ''])
          )
          return [
            fields([
              ['cluster', s.ready ? 'ready' : 'NOT READY'],
              ['version', s.version],
              ['nodes', s.nodes],
              ['clients', s.clients],
              ['answered by', s.self],
              ...(s.missing.length ? ([['not answering', s.missing.join(', ')]] as Array<[string, string]>) : [])
            ]),
            '',
            table(['node', 'check', 'state', 'time', 'error'], rows)
          ].join('\n')
        })
        if (!s.ready) process.exitCode = ADMIN_EXIT.failure
      })
    )

  withCommon(admin.command('nodes'))
    .description('the cluster view: live nodes, clients per node, last heartbeat')
    .action(
      action('nodes', async (ctx) => {
        const { self, nodes } = await ctx.client.request<{ self: string; nodes: NodeRecord[] }>('GET', '/nodes')
        const now = Date.now()
        show(ctx, { self, nodes }, () =>
          table(
            ['node', 'name', 'host', 'pid', 'clients', 'state', 'up', 'heartbeat', 'listeners'],
            nodes.map((n) => [
              n.brokerId + (n.brokerId === self ? ' *' : ''),
              n.nodeName,
              n.host,
              n.pid,
              n.clients,
              n.accepting ? 'accepting' : 'draining',
              ago(now - n.startedAt),
              `${ago(now - n.lastHeartbeat)} ago`,
              n.listeners.map((l) => `${l.name}:${l.port}`).join(',')
            ])
          )
        )
      })
    )

  withCommon(admin.command('drain'))
    .description('drain a node for a rolling restart: it stops accepting, moves its clients to the other nodes, and exits')
    .argument('<node>', 'broker id or node name (see nodes)')
    .option('--no-wait', 'return once the node has started draining')
    .option('--wait-timeout <ms>', 'how long to wait for the node to leave', '60000')
    .action(
      action('drain', async (ctx, node: string, options: { wait: boolean; waitTimeout: string }) => {
        const waitMs = Number(options.waitTimeout)
        if (!Number.isInteger(waitMs) || waitMs < 1) throw new CliError(ADMIN_EXIT.usage, '--wait-timeout: expected a positive number of milliseconds')
        const started = await ctx.client.request<{ draining: string; clients: number }>('POST', `/nodes/${encodeURIComponent(node)}/drain`)
        if (!options.wait) return show(ctx, started, () => `${started.draining}: draining (${started.clients} clients)`)
        ctx.note(`${started.draining}: draining ${started.clients} clients`)
        const deadline = Date.now() + waitMs
        let last = -1
        for (;;) {
          const { nodes } = await ctx.client.request<{ nodes: NodeRecord[] }>('GET', '/nodes')
          const record = nodes.find((n) => n.brokerId === started.draining)
          if (!record) break
          if (record.clients !== last) ctx.note(`${started.draining}: ${record.clients} clients left`)
          last = record.clients
          if (Date.now() > deadline) throw new CliError(ADMIN_EXIT.failure, `${started.draining} still in the cluster after ${waitMs} ms (${record.clients} clients)`)
          await new Promise((r) => setTimeout(r, 500))
        }
        show(ctx, { ...started, left: true }, () => `${started.draining}: drained and left the cluster`)
      })
    )

  const config = admin.command('config').description("a node's effective configuration")
  withCommon(config.command('show'))
    .description('print the effective configuration of a node, secrets redacted (admin scope)')
    .option('--node <brokerId>', 'another node of the cluster (default: the one answering)')
    .action(
      action('config show', async (ctx, options: { node?: string }) => {
        const answer = await ctx.client.request<{ node: string; config: unknown }>('GET', '/config', { query: { node: options.node } })
        ctx.out(JSON.stringify(ctx.json ? answer : answer.config, null, 2))
      })
    )
}
