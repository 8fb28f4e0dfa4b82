// A cluster over Redis (issue 10, item 1): the relay of relay-p2p (N publisher/subscriber pairs, one
// topic each, a window of undelivered messages per pair) on
//   memory      one node, in-memory emitter and persistence (the baseline, measured here again);
//   redis       one node with REDIS_URL: mqemitter-redis and aedes-persistence-redis, so every
//               message goes through Redis pub/sub even when publisher and subscriber share the node;
//   cross       two nodes on one Redis, every pair split across them (half publish on A and receive
//               on B, half the other way);
//   chat-cross  two nodes with the chat plugins on Redis and FerretDB (one database): a sender on A,
//               its recipient on B, each message stored in MongoDB before its PUBACK (QoS 1 only).
// Redis and FerretDB are started here in a temp dir (or taken from TEST_REDIS_URL / TEST_MONGO_URL)
// and stopped after; the nodes are `parley start` processes, stopped by PID.
//   npm run bench cluster -- [--rows memory,redis,cross,chat-cross] [--pairs 32] [--window 16]
//                            [--seconds 4] [--qos 1,0] [--workers 2] [--payload 100] [--warmup-ms 1000]
import { cpus } from 'node:os'
import { parseArgs } from 'node:util'
import { round } from './_common.js'
import { crossNodes, ensureProfileDir, histogramMean, limitedBy, loadArgs, loadOptions, measure, progress, resultHeader, sameNode, startBackends, withNodes, type Backends, type Node, type NodeOptions, type RunResult } from './_cluster-gen.js'
import { fmt } from './_relay.js'

export const description = 'cluster over Redis: relay QoS 1/0 on one in-memory node, one node on Redis, two nodes cross-node; stored chat across two nodes (Redis + FerretDB)'
/** After relay-p2p, whose parley-chat figure the chat row is compared with. */
export const order = 2

const ROWS = ['memory', 'redis', 'cross', 'chat-cross'] as const
type RowName = (typeof ROWS)[number]

interface Row extends RunResult {
  row: RowName
  qos: 0 | 1
  limitedBy: string
  vsMemory?: number
  /** Mean messages per store write (chat rows). */
  meanBatch?: number
}

const SETUP: Record<RowName, string> = {
  memory: '1 node, in-memory',
  redis: '1 node, Redis',
  cross: '2 nodes, Redis, cross-node',
  'chat-cross': 'chat, 2 nodes, Redis + FerretDB, cross-node'
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const { values } = parseArgs({
    args,
    options: {
      rows: { type: 'string', default: ROWS.join(',') },
      qos: { type: 'string', default: '1,0' },
      ...loadArgs(1000)
    }
  })
  const rows = values.rows.split(',') as RowName[]
  for (const r of rows) if (!ROWS.includes(r)) throw new Error(`--rows: ${r} is not one of ${ROWS.join(', ')}`)
  const qosList = values.qos.split(',').map(Number) as Array<0 | 1>
  const load = loadOptions(values, 2, { ok: qosList.every((q) => q === 0 || q === 1), message: ', --qos of 0 and 1' })
  const { pairs, window, seconds, workers, payload, warmupMs } = load
  ensureProfileDir()

  const started = performance.now()
  const needsRedis = rows.some((r) => r !== 'memory')
  const backends: Backends = await startBackends({ redis: needsRedis, mongo: rows.includes('chat-cross') })
  const out: Row[] = []
  const timings: Record<string, number> = {}
  try {
    for (const row of rows) {
      const t = performance.now()
      const chat = row === 'chat-cross'
      const base: NodeOptions = chat
        ? { label: '', kind: 'chat', redisUrl: backends.redisUrl!, mongoUrl: backends.mongoUrl!, mongoDatabase: `parley_bench_cluster_${Date.now().toString(36)}` }
        : { label: '', kind: 'relay', ...(row === 'memory' ? {} : { redisUrl: backends.redisUrl! }) }
      const two = row === 'cross' || row === 'chat-cross'
      const options = two ? [{ ...base, label: 'node-a' }, { ...base, label: 'node-b' }] : [{ ...base, label: 'node' }]
      await withNodes(options, async (nodes: Node[]) => {
        const processes: Record<string, number> = { ...Object.fromEntries(nodes.map((n) => [n.label, n.pid])), ...backends.pids }
        if (!chat) delete processes.ferretdb
        if (row === 'memory') delete processes.redis
        for (const qos of chat ? [1 as const] : qosList) {
          const before = chat ? await histogramMean(nodes[0]!, 'parley_messages_batch_size') : undefined
          const threads = two ? crossNodes(nodes[0]!.port, nodes[1]!.port, pairs, workers) : sameNode(nodes[0]!.port, pairs, workers)
          // A store write on FerretDB takes about a second under this load: give the chat row time to fill its pipeline.
          const warmup = chat ? Math.max(warmupMs, 2000) : warmupMs
          const r = await measure({ kind: chat ? 'chat' : 'relay', qos, flows: pairs, payloadBytes: payload, threads }, processes, { window, warmupMs: warmup, durationMs: seconds * 1000 })
          const x: Row = { row, qos, ...r, limitedBy: limitedBy(r, cpus().length) }
          if (before) {
            const after = await histogramMean(nodes[0]!, 'parley_messages_batch_size')
            if (after.count > before.count) x.meanBatch = round((after.sum - before.sum) / (after.count - before.count), 1)
          }
          out.push(x)
          progress(`${SETUP[row]} QoS ${qos}: ${fmt(r.deliveredPerSecond)} msg/s, p50 ${r.latencyMs.p50} / p99 ${r.latencyMs.p99} ms, cores ${JSON.stringify(r.cores)}, ELU ${r.workerElu.join(', ')}${r.errors ? `, ${r.errors} errors` : ''}`)
        }
      })
      timings[row] = Math.round(performance.now() - t)
    }
  } finally {
    await backends.stop()
  }
  for (const x of out) {
    const mem = out.find((y) => y.row === 'memory' && y.qos === x.qos)
    if (mem && x.row !== 'memory' && x.row !== 'chat-cross') x.vsMemory = round(x.deliveredPerSecond / mem.deliveredPerSecond, 2)
  }
  return { ...resultHeader(load, backends, started), timingsMs: timings, rows: out }
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as {
    pairs: number
    window: number
    seconds: number
    workers: number
    payloadBytes: number
    services: string[]
    embeddedChatFromRelayP2p?: number
    totalMs: number
    rows: Row[]
  }
  const cores = (x: Row) =>
    ['node', 'node-a', 'node-b', 'redis', 'ferretdb', 'generator']
      .filter((k) => x.cores[k] !== undefined)
      .map((k) => `${k} ${x.cores[k]}`)
      .concat(`other processes ${x.otherCores}`)
      .join(', ')
  const chat = r.rows.find((x) => x.row === 'chat-cross')
  return [
    `${r.pairs} publisher/subscriber pairs (one topic each; chat: one sender and one recipient user each), ${r.payloadBytes}-byte payloads, a window of ${r.window} undelivered messages per pair, ${r.seconds} s measured per row, generator ${r.workers} threads (raw client). Cross-node rows: half the pairs publish on node A and receive on node B, half the other way. Services: ${r.services.join('; ') || 'none'}. Whole scenario: ${round(r.totalMs / 1000, 0)} s.`,
    '',
    '| Setup | QoS | Delivered msg/s | vs 1 node in-memory | p50 / p99 ms | Cores (during the window) | Limited by |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${SETUP[x.row]} | ${x.qos} | ${fmt(x.deliveredPerSecond)} | ${x.vsMemory !== undefined ? `${x.vsMemory}x` : '—'} | ${x.latencyMs.p50} / ${x.latencyMs.p99} | ${cores(x)} | ${x.limitedBy}${x.meanBatch !== undefined ? `; mean store batch ${x.meanBatch}` : ''}${x.receiptsPerSecond !== undefined ? `; ${fmt(x.receiptsPerSecond)} messages/s receipted to senders` : ''}${x.errors ? `; ${x.errors} errors` : ''} |`
    ),
    '',
    'What limits these numbers: on Redis every message leaves its node as a Redis PUBLISH (mqemitter-redis: msgpack-encoded, one socket write per message) and comes back through the subscription, to be decoded and delivered, even when publisher and subscriber share the node; the relay subscribers here have clean sessions, so aedes-persistence-redis stores nothing per message. A node on Redis thus spends two to three times the CPU per message of an in-memory node. Two nodes add a second event loop but not cores: both nodes, Redis and the generator share the 2 cores, so cross-node throughput is bounded by the machine, not by one node.' +
      (chat
        ? ` In the chat row every message is stored in FerretDB (SQLite backend) before its PUBACK, and the recipients keep persistent sessions (each delivery writes its in-flight packet to Redis and the PUBACK clears it); FerretDB is the limit there (see chat-mongo), and it is a test stand-in, not MongoDB's speed.${r.embeddedChatFromRelayP2p ? ` For comparison, relay-p2p's parley-chat (one node, embedded SQLite) did ${fmt(r.embeddedChatFromRelayP2p)} msg/s in this run.` : ''}`
        : '')
  ].join('\n')
}
