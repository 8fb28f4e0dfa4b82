// Admin route of the metrics snapshot (parley admin metrics): the key numbers of every node, read
// from each node's own Prometheus registry through a cluster query. For dashboards and alerts,
// scrape /metrics instead (docs/grafana/); this is the quick look an operator takes from a shell.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'
import type { Registry } from 'prom-client'
import { z } from 'zod'
import type { AdminApi } from './api.js'
import type { ClusterQuery } from './cluster-query.js'
import type { NodeAccess } from './node-access.js'

/** Limits (parley_limits_hits_total{limit}) that drop or refuse something; the others only delay. */
const DROPPING_LIMITS = new Set(['publish_rate', 'connection_rate'])

const ByLabel = z.record(z.string(), z.number())

export const NodeMetrics = z.object({
  node: z.string(),
  nodeName: z.string(),
  version: z.string(),
  uptimeSeconds: z.number().describe('how long the process has run'),
  connections: z.object({
    current: z.number().describe('MQTT clients connected now'),
    byListener: ByLabel.describe('connected now, by listener (tcp, tls, ws)'),
    total: z.number().describe('CONNECTs completed since the node started')
  }),
  messages: z.object({
    in: z.number().describe('PUBLISH packets accepted from clients since start'),
    inByQos: ByLabel,
    out: z.number().describe('PUBLISH packets handed to clients since start'),
    outByQos: ByLabel
  }),
  hookDenials: z.number().describe('plugin hook decisions against a client (deny, reject, error, timeout) since start'),
  rateLimitDrops: z.number().describe('publishes and connections refused by a rate limit since start'),
  limits: ByLabel.describe('every limit enforced, by limit (parley_limits_hits_total)'),
  offlineQueueDrops: z.number().describe('messages not queued because a persistent session\'s queue was full'),
  push: z
    .object({ sent: z.number(), failed: z.number() })
    .nullable()
    .describe('pushes the providers accepted / refused or failed since start; null without the push plugin'),
  eventLoopLagMs: z
    .object({ p50: z.number(), p99: z.number(), max: z.number() })
    .describe('event loop delay over the last complete window of 10 s (the event loop is the process\'s)'),
  memory: z.object({ rssBytes: z.number(), heapUsedBytes: z.number(), heapTotalBytes: z.number() })
})
export type NodeMetrics = z.infer<typeof NodeMetrics>

// One monitor per process (the event loop is the process's, whatever the number of nodes in it),
// started by the first node: windows of 10 s, so a snapshot shows recent lag, not since start.
const WINDOW_MS = 10_000
type Lag = { p50: number; p99: number; max: number }
interface LagMonitor {
  histogram: IntervalHistogram
  last: Lag | undefined
}
let lagMonitor: LagMonitor | undefined
function eventLoopLag(): Lag {
  const ms = (ns: number) => Math.round(ns / 10_000) / 100
  const read = (h: IntervalHistogram): Lag => (h.count > 0 ? { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) } : { p50: 0, p99: 0, max: 0 })
  if (!lagMonitor) {
    const histogram = monitorEventLoopDelay({ resolution: 10 })
    histogram.enable()
    const monitor: LagMonitor = { histogram, last: undefined }
    setInterval(() => {
      monitor.last = read(histogram)
      histogram.reset()
    }, WINDOW_MS).unref()
    lagMonitor = monitor
  }
  // Until the first window is complete: what this one has seen so far.
  return lagMonitor.last ?? read(lagMonitor.histogram)
}

/** The samples of a metric of this node's registry (empty when nothing registered it). */
async function samples(registry: Registry, name: string): Promise<Array<{ value: number; labels: Record<string, string | number> }>> {
  const metric = registry.getSingleMetric(name)
  if (!metric) return []
  const data = (await metric.get()) as { values: Array<{ value: number; labels: Record<string, string | number>; metricName?: string }> }
  return data.values.filter((v) => v.metricName === undefined || v.metricName === name)
}

const sum = (values: Array<{ value: number }>) => values.reduce((n, v) => n + v.value, 0)
const byLabel = (values: Array<{ value: number; labels: Record<string, string | number> }>, label: string) => {
  const out: Record<string, number> = {}
  for (const v of values) {
    const key = String(v.labels[label] ?? '')
    out[key] = (out[key] ?? 0) + v.value
  }
  return out
}

/** This node's numbers, from its registry (the same counters /metrics shows). */
export async function nodeMetrics(node: NodeAccess): Promise<NodeMetrics> {
  const r = node.registry
  const [clients, connections, received, sent, denials, limits, queueDrops, pushSent, pushFailed, info] = await Promise.all([
    samples(r, 'parley_mqtt_clients'),
    samples(r, 'parley_mqtt_connections_total'),
    samples(r, 'parley_mqtt_messages_received_total'),
    samples(r, 'parley_mqtt_messages_sent_total'),
    samples(r, 'parley_hook_denials_total'),
    samples(r, 'parley_limits_hits_total'),
    samples(r, 'parley_offline_queue_dropped_total'),
    samples(r, 'parley_push_sent_total'),
    samples(r, 'parley_push_failed_total'),
    samples(r, 'parley_node_info')
  ])
  const limitHits = byLabel(limits, 'limit')
  const memory = process.memoryUsage()
  const self = info[0]?.labels ?? {}
  return {
    node: node.brokerId,
    nodeName: String(self.node_name ?? node.config.nodeName ?? ''),
    version: node.version,
    uptimeSeconds: Math.round(process.uptime()),
    connections: { current: sum(clients), byListener: byLabel(clients, 'listener'), total: sum(connections) },
    messages: { in: sum(received), inByQos: byLabel(received, 'qos'), out: sum(sent), outByQos: byLabel(sent, 'qos') },
    hookDenials: sum(denials),
    rateLimitDrops: Object.entries(limitHits).reduce((n, [limit, v]) => n + (DROPPING_LIMITS.has(limit) ? v : 0), 0),
    limits: limitHits,
    offlineQueueDrops: sum(queueDrops),
    push: r.getSingleMetric('parley_push_sent_total') ? { sent: sum(pushSent), failed: sum(pushFailed) } : null,
    eventLoopLagMs: eventLoopLag(),
    memory: { rssBytes: memory.rss, heapUsedBytes: memory.heapUsed, heapTotalBytes: memory.heapTotal }
  }
}

export function registerMetricsRoutes(api: AdminApi, query: ClusterQuery, node: NodeAccess): void {
  eventLoopLag() // start measuring now, so the first snapshot has a window
  query.handle('core.metrics', () => nodeMetrics(node))
  api.route({
    method: 'GET',
    path: '/metrics',
    tag: 'cluster',
    scope: 'read',
    summary: "Every node's key numbers: connections, messages in and out, denials, drops, pushes, event loop lag, memory",
    description:
      'Counters count since each node started. Gathered from every live node within admin.queryTimeoutMs; nodes that did not answer are listed in `missing`. For time series, scrape each node\'s /metrics.',
    response: z.object({
      self: z.string(),
      nodes: z.array(NodeMetrics),
      missing: z.array(z.string()).describe('nodes that did not answer within admin.queryTimeoutMs'),
      errors: z.array(z.object({ node: z.string(), error: z.string() })).describe('nodes that answered with an error')
    }),
    handler: async () => {
      const [gathered, view] = await Promise.all([query.ask<NodeMetrics>('core.metrics', {}), node.nodes()])
      // Only this cluster's nodes: Redis pub/sub channels are server-wide (not per database or key
      // prefix), so nodes of another cluster on the same Redis may answer the request too.
      const members = new Set(view.map((n) => n.brokerId))
      const nodes = gathered.answers.filter((a) => a.ok && a.result && members.has(a.node)).map((a) => a.result!)
      return {
        self: node.brokerId,
        nodes: nodes.sort((a, b) => a.nodeName.localeCompare(b.nodeName) || a.node.localeCompare(b.node)),
        missing: gathered.missing,
        errors: gathered.answers.filter((a) => !a.ok && members.has(a.node)).map((a) => ({ node: a.node, error: a.error ?? 'failed' }))
      }
    }
  })
}
