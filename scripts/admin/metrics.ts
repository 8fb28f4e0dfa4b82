// parley admin metrics: every node's key numbers (GET /admin/v1/metrics), one block per node.
import type { Command } from 'commander'
import { ADMIN_EXIT } from './client.js'
import { action, show, withCommon } from './kit.js'
import { ago, fields } from './output.js'

interface NodeMetrics {
  node: string
  nodeName: string
  version: string
  uptimeSeconds: number
  connections: { current: number; byListener: Record<string, number>; total: number }
  messages: { in: number; inByQos: Record<string, number>; out: number; outByQos: Record<string, number> }
  hookDenials: number
  rateLimitDrops: number
  limits: Record<string, number>
  offlineQueueDrops: number
  push: { sent: number; failed: number } | null
  eventLoopLagMs: { p50: number; p99: number; max: number }
  memory: { rssBytes: number; heapUsedBytes: number; heapTotalBytes: number }
}

export interface MetricsSnapshot {
  self: string
  nodes: NodeMetrics[]
  missing: string[]
  errors: Array<{ node: string; error: string }>
}

/** "tcp 2, ws 1" (zeros left out), or "" when everything is zero. */
const parts = (counts: Record<string, number>, prefix = '') =>
  Object.entries(counts)
    .filter(([, n]) => n > 0)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, n]) => `${prefix}${k} ${n}`)
    .join(', ')
const withParts = (total: number, counts: Record<string, number>, prefix = '') => {
  const detail = parts(counts, prefix)
  return detail ? `${total} (${detail})` : String(total)
}
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`

/** One node's block: aligned name/value lines under a heading. */
export function renderNode(n: NodeMetrics, self: string): string {
  const heading = `${n.node}${n.node === self ? ' *' : ''}  ${n.nodeName}  ${n.version}  up ${ago(n.uptimeSeconds * 1000)}`
  const otherLimits = Object.fromEntries(Object.entries(n.limits).filter(([limit]) => limit !== 'publish_rate' && limit !== 'connection_rate'))
  const delays = parts(otherLimits)
  const lag = n.eventLoopLagMs
  return [
    heading,
    fields([
      ['connections now', withParts(n.connections.current, n.connections.byListener)],
      ['connections since start', n.connections.total],
      ['messages in', withParts(n.messages.in, n.messages.inByQos, 'qos')],
      ['messages out', withParts(n.messages.out, n.messages.outByQos, 'qos')],
      ['hook denials', n.hookDenials],
      ['rate-limit drops', withParts(n.rateLimitDrops, { publish: n.limits.publish_rate ?? 0, connect: n.limits.connection_rate ?? 0 })],
      ...(delays ? ([['other limits', delays]] as Array<[string, string]>) : []),
      ['offline queue drops', n.offlineQueueDrops],
      ['push', n.push ? `${n.push.sent} sent, ${n.push.failed} failed` : 'not loaded'],
      ['event loop lag', `p50 ${lag.p50} ms, p99 ${lag.p99} ms, max ${lag.max} ms`],
      ['memory', `rss ${mib(n.memory.rssBytes)}, heap ${mib(n.memory.heapUsedBytes)} of ${mib(n.memory.heapTotalBytes)}`]
    ])
      .split('\n')
      .map((line) => `  ${line}`)
      .join('\n')
  ].join('\n')
}

export function registerMetricsCommands(admin: Command): void {
  withCommon(admin.command('metrics'))
    .description("every node's key numbers since it started: connections by listener, messages in and out, hook denials, rate-limit and offline-queue drops, pushes, event loop lag, memory; exit 1 when a node did not answer")
    .action(
      action('metrics', async (ctx) => {
        const snapshot = await ctx.client.request<MetricsSnapshot>('GET', '/metrics')
        show(ctx, snapshot, () => snapshot.nodes.map((n) => renderNode(n, snapshot.self)).join('\n\n'))
        for (const e of snapshot.errors) ctx.note(`${e.node}: ${e.error}`)
        if (snapshot.missing.length) ctx.note(`no answer from ${snapshot.missing.join(', ')} (admin.queryTimeoutMs)`)
        if (snapshot.missing.length || snapshot.errors.length) process.exitCode = ADMIN_EXIT.failure
      })
    )
}
