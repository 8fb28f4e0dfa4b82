// Stored one-to-one chat on the MongoDB-compatible server with Redis (issue 10, item 4): the load of
// relay-p2p's parley-chat target (N sender/recipient pairs, a sender publishes s/dm/<peer> at QoS 1,
// the message counts once its recipient has it on u/<peer>/m; the PUBACK means stored), against one
// node with the chat plugins (anonymous devices), mongo.url on FerretDB and REDIS_URL on Redis, once
// per batching setting of the messages plugin (batchWindowMs / maxBatch; a fresh database and node
// each). Reports stored msg/s, p50/p99, and the mean batch (messages per store write, from the
// node's parley_messages_batch_size histogram) and mean append time (parley_messages_store_append_seconds).
// Redis and FerretDB are started here in a temp dir (or taken from TEST_REDIS_URL / TEST_MONGO_URL)
// and stopped after. (The embedded-store chat is relay-p2p's parley-chat row.)
//   npm run bench chat-mongo -- [--batching 0/256,2/256,5/256,2/16,2/1] [--pairs 32] [--window 16]
//                               [--seconds 4] [--workers 2] [--payload 100] [--warmup-ms 2000]
import { cpus } from 'node:os'
import { parseArgs } from 'node:util'
import { round } from './_common.js'
import { ensureProfileDir, histogramMean, limitedBy, loadArgs, loadOptions, measure, progress, resultHeader, sameNode, startBackends, withNodes, type RunResult } from './_cluster-gen.js'
import { fmt } from './_relay.js'

export const description = 'stored 1->1 chat on FerretDB (MongoDB wire protocol) + Redis: msg/s, p50/p99 and the effect of batching (batchWindowMs, maxBatch)'
/** After relay-p2p, whose parley-chat figure (embedded store) it is compared with. */
export const order = 2

/** The messages plugin's defaults (plugins/messages/index.ts). */
const DEFAULT_WINDOW_MS = 2
const DEFAULT_MAX_BATCH = 256

interface Row extends RunResult {
  batchWindowMs: number
  maxBatch: number
  meanBatch?: number
  meanAppendMs?: number
  limitedBy: string
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const { values } = parseArgs({
    args,
    options: {
      batching: { type: 'string', default: '0/256,2/256,5/256,2/16,2/1' },
      ...loadArgs(2000)
    }
  })
  const settings = values.batching.split(',').map((s) => {
    const [w, b] = s.split('/').map(Number)
    if (!(Number.isInteger(w) && w! >= 0 && w! <= 1000 && Number.isInteger(b) && b! >= 1 && b! <= 5000)) throw new Error(`--batching: ${s} is not <batchWindowMs 0-1000>/<maxBatch 1-5000>`)
    return { batchWindowMs: w!, maxBatch: b! }
  })
  const load = loadOptions(values, 1)
  const { pairs, window, seconds, workers, payload, warmupMs } = load
  ensureProfileDir()

  const started = performance.now()
  const backends = await startBackends({ redis: true, mongo: true })
  const rows: Row[] = []
  try {
    for (const s of settings) {
      const database = `parley_bench_chat_${Date.now().toString(36)}`
      await withNodes([{ label: 'node', kind: 'chat', redisUrl: backends.redisUrl!, mongoUrl: backends.mongoUrl!, mongoDatabase: database, messages: s }], async ([node]) => {
        const processes = { node: node!.pid, ...backends.pids }
        const batch0 = await histogramMean(node!, 'parley_messages_batch_size')
        const append0 = await histogramMean(node!, 'parley_messages_store_append_seconds')
        const r = await measure({ kind: 'chat', qos: 1, flows: pairs, payloadBytes: payload, threads: sameNode(node!.port, pairs, workers) }, processes, { window, warmupMs, durationMs: seconds * 1000 })
        // Counted from the start of the load (warm-up included): the histograms cannot be cut at the window.
        const batch = await histogramMean(node!, 'parley_messages_batch_size')
        const append = await histogramMean(node!, 'parley_messages_store_append_seconds')
        const row: Row = { ...s, ...r, limitedBy: limitedBy(r, cpus().length) }
        if (batch.count > batch0.count) row.meanBatch = round((batch.sum - batch0.sum) / (batch.count - batch0.count), 1)
        if (append.count > append0.count) row.meanAppendMs = round(((append.sum - append0.sum) / (append.count - append0.count)) * 1000, 1)
        rows.push(row)
        progress(
          `batchWindowMs ${s.batchWindowMs}, maxBatch ${s.maxBatch}: ${fmt(r.deliveredPerSecond)} msg/s (per second: ${r.perSecond.join(', ')}), p50 ${r.latencyMs.p50} / p99 ${r.latencyMs.p99} ms, mean batch ${row.meanBatch}, mean append ${row.meanAppendMs} ms, cores ${JSON.stringify(r.cores)}${r.errors ? `, ${r.errors} errors` : ''}`
        )
      })
    }
  } finally {
    await backends.stop()
  }
  return { ...resultHeader(load, backends, started), rows }
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as { pairs: number; window: number; seconds: number; workers: number; payloadBytes: number; services: string[]; embeddedChatFromRelayP2p?: number; totalMs: number; rows: Row[] }
  const label = (x: Row) => `${x.batchWindowMs} / ${x.maxBatch}${x.batchWindowMs === DEFAULT_WINDOW_MS && x.maxBatch === DEFAULT_MAX_BATCH ? ' (default)' : ''}`
  return [
    `One node with the chat plugins (anonymous devices) on FerretDB (mongo.url) and Redis (REDIS_URL), ${r.pairs} sender/recipient pairs, QoS 1, ${r.payloadBytes}-byte bodies, a window of ${r.window} undelivered messages per pair, ${r.seconds} s measured per row, a fresh database and node per row; generator ${r.workers} threads (raw client). Services: ${r.services.join('; ')}. Whole scenario: ${round(r.totalMs / 1000, 0)} s.`,
    '',
    '| batchWindowMs / maxBatch | Stored + delivered msg/s | Per second | Receipted msg/s | p50 / p99 ms | Mean batch | Mean append ms | Cores (during the window) | Limited by |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${label(x)} | ${fmt(x.deliveredPerSecond)} | ${x.perSecond.map(fmt).join(', ')} | ${x.receiptsPerSecond !== undefined ? fmt(x.receiptsPerSecond) : '—'} | ${x.latencyMs.p50} / ${x.latencyMs.p99} | ${x.meanBatch ?? '—'} | ${x.meanAppendMs ?? '—'} | ${Object.entries(x.cores).map(([k, c]) => `${k} ${c}`).concat(`other processes ${x.otherCores}`).join(', ')} | ${x.limitedBy}${x.errors ? `; ${x.errors} errors` : ''} |`
    ),
    '',
    `What limits these numbers: the store. The messages plugin writes one batch at a time, so under this load (${r.pairs * r.window} messages in flight) every setting fills its batches (mean batch near maxBatch) and batchWindowMs changes little; below saturation it only adds up to its length to each message's latency. maxBatch is what counts: each batch costs a fixed set of round trips (an idempotency lookup by sender and cmid, then one insertMany), so smaller batches store fewer messages per second. FerretDB 1.24 on SQLite answers every query not on _id by reading and decoding every document of the collection, so those lookups, and the receipts' last-seq reads (a sorted find per conversation), grow with the collection and take most of FerretDB's CPU, on the same 2 cores as the node and the generator. FerretDB is a test stand-in: its speed is not MongoDB's, where these queries use indexes. Latency is queueing behind the full window.${r.embeddedChatFromRelayP2p ? ` relay-p2p's parley-chat row (embedded SQLite, no Redis) did ${fmt(r.embeddedChatFromRelayP2p)} msg/s in this run.` : ''} Mean batch and mean append time cover the warm-up too.`
  ].join('\n')
}
