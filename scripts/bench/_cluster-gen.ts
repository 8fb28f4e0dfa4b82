// Helpers of the real-backend scenarios (cluster.ts, chat-mongo.ts): Redis and FerretDB started for
// the run (or taken from TEST_REDIS_URL / TEST_MONGO_URL, as the tests do), Parley nodes on them, and
// a load generator whose threads may each connect to a different node.
//
// The generator threads are _relay-worker.ts, unchanged: a thread holds publishers and subscribers
// of any flows, all connected to the one port of its WorkerInit, and a publisher's window counts
// deliveries made in any thread (shared memory). So a flow whose publisher sits in a thread on node
// A and whose subscriber sits in a thread on node B crosses the cluster, with the same windowing and
// latency stamps as relay-p2p. _relay.ts's RelayThreads runs them; this file differs from its
// Generator only in that placement (which thread, which port, which flows) is given per thread, and
// in measuring the CPU of several processes (nodes, Redis, FerretDB) at once.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startFerretDb, startRedis, type ServiceProcess } from '../services.js'
import { cpuMs, memoryMiB, round, scrapeMetrics, sleep, startBroker, waitUntil } from './_common.js'
import { CHAT_PLUGINS, HOST, RelayThreads, latencySummary, machineBusyMs, measuredMaxQos1, type Placement } from './_relay.js'
import { MEASURING, RUNNING, type TopicKind } from './_relay-shared.js'

export type { Placement }

const log = (line: string) => process.stderr.write(`[cluster] ${line}\n`)
export const progress = log

// ---------------------------------------------------------------------------------------------
// Services

export interface Backends {
  redisUrl?: string
  mongoUrl?: string
  /** Processes started here, for CPU accounting (label → pid). External services have none. */
  pids: Record<string, number>
  /** How each service was obtained, for the setup line. */
  describe: string[]
  stop(): Promise<void>
}

/** Redis and/or FerretDB for one scenario: the ones given in TEST_REDIS_URL / TEST_MONGO_URL, else started in a temp dir. */
export async function startBackends(want: { redis: boolean; mongo: boolean }): Promise<Backends> {
  const dir = mkdtempSync(join(tmpdir(), 'parley-bench-services-'))
  const started: ServiceProcess[] = []
  const pids: Record<string, number> = {}
  const describe: string[] = []
  const stop = async () => {
    await Promise.all(started.map((s) => s.stop()))
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    let redisUrl: string | undefined
    let mongoUrl: string | undefined
    if (want.redis) {
      if (process.env.TEST_REDIS_URL) {
        redisUrl = process.env.TEST_REDIS_URL
        describe.push(`Redis given in TEST_REDIS_URL (not started here; its CPU is not counted)`)
      } else {
        const t = performance.now()
        const redis = await startRedis({ dir: join(dir, 'redis') })
        started.push(redis)
        redisUrl = redis.url
        pids.redis = redis.pid!
        describe.push(`Debian redis-server (in memory, no persistence) started in ${Math.round(performance.now() - t)} ms`)
      }
    }
    if (want.mongo) {
      if (process.env.TEST_MONGO_URL) {
        mongoUrl = process.env.TEST_MONGO_URL
        describe.push('MongoDB given in TEST_MONGO_URL (not started here; its CPU is not counted)')
      } else {
        const t = performance.now()
        const ferret = await startFerretDb({ dir: join(dir, 'ferretdb'), log: join(dir, 'ferretdb.log') })
        started.push(ferret)
        mongoUrl = ferret.url
        pids.ferretdb = ferret.pid!
        describe.push(`FerretDB 1.24.2 on its SQLite backend (files in a temp dir) started in ${Math.round(performance.now() - t)} ms`)
      }
    }
    return { ...(redisUrl ? { redisUrl } : {}), ...(mongoUrl ? { mongoUrl } : {}), pids, describe, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

// ---------------------------------------------------------------------------------------------
// Parley nodes

export interface Node {
  label: string
  port: number
  ops: number
  pid: number
  stop(): Promise<void>
}

export interface NodeOptions {
  label: string
  /** relay: no plugins; chat: CHAT_PLUGINS (anonymous), with the messages plugin's settings. */
  kind: TopicKind
  redisUrl?: string
  mongoUrl?: string
  mongoDatabase?: string
  messages?: { batchWindowMs?: number; maxBatch?: number }
}

/** `parley start` (startBroker of _common.ts) with a generated config file; resolves once /readyz answers 200. */
export async function startNode(o: NodeOptions): Promise<Node> {
  const dir = mkdtempSync(join(tmpdir(), 'parley-bench-config-'))
  const env: NodeJS.ProcessEnv = {
    PARLEY_MQTT__ALLOW_ANONYMOUS: 'true',
    PARLEY_LISTENERS__WS__ENABLED: 'false',
    PARLEY_SHUTDOWN__DRAIN_MS: '0',
    ...(o.redisUrl ? { REDIS_URL: o.redisUrl } : {}),
    ...(o.mongoUrl ? { MONGO_URL: o.mongoUrl, MONGO_DATABASE: o.mongoDatabase ?? 'parley_bench' } : {})
  }
  const args: string[] = []
  if (o.kind === 'relay') env.PARLEY_PLUGINS = ''
  else {
    // Plugin settings come only from a config file (the environment names plugins, not their config).
    const plugins = CHAT_PLUGINS.map((name) => (name === 'messages' && o.messages ? { use: name, config: o.messages } : name))
    const file = join(dir, 'parley.json')
    writeFileSync(file, JSON.stringify({ plugins }))
    args.push('--config', file)
  }
  try {
    const b = await startBroker({ env, args, timeoutMs: 60_000 })
    const ready = await waitUntil(async () => (await fetch(`http://${HOST}:${b.ports.ops}/readyz`).catch(() => undefined))?.status === 200, 30_000, 100)
    if (!ready) {
      const body = await fetch(`http://${HOST}:${b.ports.ops}/readyz`).then((r) => r.text()).catch((e: unknown) => String(e))
      await b.stop(5_000)
      throw new Error(`${o.label}: /readyz not 200 within 30 s: ${body}`)
    }
    log(`${o.label}: pid ${b.pid}, mqtt ${b.ports.tcp}, ops ${b.ports.ops}`)
    return {
      label: o.label,
      port: b.ports.tcp!,
      ops: b.ports.ops!,
      pid: b.pid,
      stop: async () => {
        // A node with a slow store drains its write queue on SIGTERM; after 8 s it is killed (its
        // database is not reused, and a profile is written at the graceful exit only).
        await b.stop(process.env.BENCH_BROKER_NODE_ARGS?.includes('--cpu-prof') ? 60_000 : 8_000)
        rmSync(dir, { recursive: true, force: true })
      }
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    throw err
  }
}

/** Starts the nodes, runs `fn`, and stops every node by its PID whatever happens. */
export async function withNodes<T>(options: NodeOptions[], fn: (nodes: Node[]) => Promise<T>): Promise<T> {
  const nodes: Node[] = []
  try {
    // One after another: two cold starts at once take longer than both in turn on 2 cores.
    const t0 = performance.now()
    for (const o of options) nodes.push(await startNode(o))
    log(`${nodes.length} node(s) ready in ${Math.round(performance.now() - t0)} ms`)
    return await fn(nodes)
  } finally {
    const t1 = performance.now()
    await Promise.all(nodes.map((n) => n.stop()))
    log(`${nodes.length} node(s) stopped in ${Math.round(performance.now() - t1)} ms`)
  }
}

/** Mean of a Prometheus histogram (sum / count) on a node, over the labels given (all when none). */
export async function histogramMean(node: Node, name: string): Promise<{ count: number; sum: number }> {
  const m = await scrapeMetrics(node.ops)
  let count = 0
  let sum = 0
  for (const [k, v] of m) {
    if (k.startsWith(`${name}_count`)) count += v
    else if (k.startsWith(`${name}_sum`)) sum += v
  }
  return { count, sum }
}

export { scrapeMetrics }

// ---------------------------------------------------------------------------------------------
// Load generator

/** One generator thread: the port it connects to, and its share of publishers and subscribers. */
/** Every flow's publisher and subscriber on the same node, flows spread over `workers` threads. */
export function sameNode(port: number, flows: number, workers: number): Placement[] {
  return Array.from({ length: workers }, (_, w) => {
    const mine = Array.from({ length: flows }, (_, f) => f).filter((f) => f % workers === w)
    return { port, pubs: mine, subs: mine.map((f): [number, number] => [f, 1]) }
  })
}

/**
 * Every flow crosses the cluster: half publish on A and are received on B, half the other way, so
 * both nodes publish, relay over Redis and deliver. Threads come in pairs (one on A, one on B).
 */
export function crossNodes(portA: number, portB: number, flows: number, workers: number): Placement[] {
  const pairs = Math.max(1, Math.floor(workers / 2))
  const threads: Placement[] = Array.from({ length: pairs * 2 }, (_, t) => ({ port: t % 2 === 0 ? portA : portB, pubs: [], subs: [] }))
  for (let f = 0; f < flows; f++) {
    const pair = f % pairs
    const pubOnB = Math.floor(f / pairs) % 2
    threads[pair * 2 + pubOnB]!.pubs.push(f)
    threads[pair * 2 + (1 - pubOnB)]!.subs.push([f, 1])
  }
  return threads
}

export interface GenOptions {
  kind: TopicKind
  qos: 0 | 1
  flows: number
  payloadBytes: number
  threads: Placement[]
}

export interface RunOptions {
  window: number
  warmupMs: number
  durationMs: number
}

export interface RunResult {
  deliveredPerSecond: number
  publishedPerSecond: number
  /** Deliveries in each whole second of the measured window (a store that slows down as it fills shows here). */
  perSecond: number[]
  latencyMs: { p50: number; p99: number; p999: number; max: number; samples: number }
  /** Cores each measured process used during the window (label → cores), the generator included. */
  cores: Record<string, number>
  /** Cores the rest of the machine used meanwhile. */
  otherCores: number
  workerElu: number[]
  rssMiB: Record<string, number>
  errors: number
  /** Chat: messages per second the senders got delivered receipts for, when the generator threads count them. */
  receiptsPerSecond?: number
}

export class PlacedGenerator {
  private constructor(
    private readonly t: RelayThreads,
    private readonly o: GenOptions
  ) {}

  static async start(o: GenOptions): Promise<PlacedGenerator> {
    return new PlacedGenerator(await RelayThreads.start({ ...o, client: 'raw', subscribers: 1 }, o.threads), o)
  }

  /** Runs the load and measures `processes` (label → pid) besides the generator itself. */
  async run(processes: Record<string, number>, r: RunOptions): Promise<RunResult> {
    const s = this.t.shared
    const cpuOf = () => Object.fromEntries(Object.entries(processes).map(([k, pid]) => [k, cpuMs(pid)]))
    Atomics.store(s, RUNNING, 1)
    await this.t.ask({ cmd: 'run', mode: 'window', window: r.window }, 10_000)
    await sleep(r.warmupMs)
    const before = { t: performance.now(), ...this.t.totals(), gen: process.cpuUsage(), procs: cpuOf(), machine: machineBusyMs() }
    Atomics.store(s, MEASURING, 1)
    await this.t.ask({ cmd: 'mark' }, 10_000)
    const perSecond: number[] = []
    let last = before.delivered
    const seconds = Math.floor(r.durationMs / 1000)
    for (let i = 0; i < seconds; i++) {
      await sleep(1000)
      const d = this.t.totals().delivered
      perSecond.push(d - last)
      last = d
    }
    await sleep(r.durationMs - seconds * 1000)
    Atomics.store(s, MEASURING, 0)
    const after = { t: performance.now(), ...this.t.totals(), gen: process.cpuUsage(before.gen), procs: cpuOf(), machine: machineBusyMs() }
    Atomics.store(s, RUNNING, 0)
    const stops = await this.t.ask({ cmd: 'stop' }, 30_000)
    const rssMiB = Object.fromEntries(Object.entries(processes).map(([k, pid]) => [k, memoryMiB(pid).rss]))
    // Let what is in flight arrive before the connections close; bounded, because a slow store
    // (FerretDB) may hold hundreds of messages for seconds and nothing here is measured any more.
    await waitUntil(() => {
      const t = this.t.totals()
      return t.delivered >= t.sent
    }, 2_000, 50)
    const secs = (after.t - before.t) / 1000
    const cores: Record<string, number> = {}
    let counted = 0
    for (const k of Object.keys(processes)) {
      const ms = after.procs[k]! - before.procs[k]!
      cores[k] = round(ms / 1000 / secs, 2)
      counted += ms / 1000
    }
    const genSeconds = (after.gen.user + after.gen.system) / 1e6
    cores.generator = round(genSeconds / secs, 2)
    counted += genSeconds
    const lastError = stops.map((x) => x.lastError as string).find(Boolean)
    if (lastError) log(`generator error: ${lastError}`)
    return {
      deliveredPerSecond: Math.round((after.delivered - before.delivered) / secs),
      publishedPerSecond: Math.round((after.sent - before.sent) / secs),
      perSecond,
      latencyMs: latencySummary(stops),
      cores,
      otherCores: round(Math.max(0, (after.machine - before.machine) / 1000 / secs - counted / secs), 2),
      workerElu: stops.map((x) => round(x.elu as number, 2)),
      rssMiB,
      errors: stops.reduce((n, x) => n + (x.errors as number), 0),
      ...(this.o.kind === 'chat' && stops.every((x) => typeof x.receipts === 'number') ? { receiptsPerSecond: Math.round(stops.reduce((n, x) => n + (x.receipts as number), 0) / secs) } : {})
    }
  }

  close(): Promise<void> {
    return this.t.close()
  }
}

/** Starts a generator, runs one measurement, and closes it whatever happens. */
export async function measure(o: GenOptions, processes: Record<string, number>, r: RunOptions): Promise<RunResult> {
  const t0 = performance.now()
  const gen = await PlacedGenerator.start(o)
  const t1 = performance.now()
  try {
    return await gen.run(processes, r)
  } finally {
    const t2 = performance.now()
    await gen.close()
    log(`generator: connected in ${Math.round(t1 - t0)} ms, ran ${Math.round(t2 - t1)} ms, closed in ${Math.round(performance.now() - t2)} ms`)
  }
}

/** What most likely limited a measurement, from the cores each process used on this machine. */
export function limitedBy(r: Pick<RunResult, 'cores' | 'otherCores' | 'workerElu'>, machineCores: number): string {
  const reasons: string[] = []
  for (const [k, c] of Object.entries(r.cores)) {
    if (k === 'generator') continue
    if (c >= 0.9) reasons.push(`${k} (${c} cores)`)
  }
  if (Math.max(...r.workerElu) >= 0.9) reasons.push(`generator thread saturated (ELU ${Math.max(...r.workerElu)})`)
  const busy = Object.values(r.cores).reduce((a, b) => a + b, 0) + r.otherCores
  if (busy >= machineCores * 0.9) reasons.push(`machine (${round(busy, 1)} of ${machineCores} cores busy)`)
  return reasons.length ? reasons.join('; ') : 'no process saturated: round trips (window/latency-bound)'
}

/** A directory for profiles when BENCH_BROKER_NODE_ARGS asks for one (created so node can write there). */
export function ensureProfileDir(): void {
  const m = /--cpu-prof-dir=(\S+)/.exec(process.env.BENCH_BROKER_NODE_ARGS ?? '')
  if (m) mkdirSync(m[1]!, { recursive: true })
}

/** The load options cluster.ts and chat-mongo.ts share, for parseArgs (`--warmup-ms` default differs). */
export const loadArgs = (warmupMs: number) =>
  ({
    pairs: { type: 'string', default: '32' },
    window: { type: 'string', default: '16' },
    seconds: { type: 'string', default: '4' },
    workers: { type: 'string', default: '2' },
    payload: { type: 'string', default: '100' },
    'warmup-ms': { type: 'string', default: String(warmupMs) }
  }) as const

export interface LoadOptions {
  pairs: number
  window: number
  seconds: number
  workers: number
  payload: number
  warmupMs: number
}

/** Parses and checks the loadArgs() values; `extra` is a further condition with its message. */
export function loadOptions(values: Record<string, string | undefined>, minPairs: number, extra: { ok: boolean; message: string } = { ok: true, message: '' }): LoadOptions {
  const o = { pairs: Number(values.pairs), window: Number(values.window), seconds: Number(values.seconds), workers: Number(values.workers), payload: Number(values.payload), warmupMs: Number(values['warmup-ms']) }
  if (!(o.pairs >= minPairs && o.window >= 1 && o.seconds > 0 && o.seconds <= 120 && o.workers >= 1 && o.payload >= 8 && o.warmupMs >= 0 && extra.ok)) {
    throw new Error(`--pairs >= ${minPairs}, --window >= 1, 0 < --seconds <= 120, --workers >= 1, --payload >= 8, --warmup-ms >= 0${extra.message}`)
  }
  return o
}

/** The fields both scenarios' results start with: the load, the services, relay-p2p's embedded chat figure if it ran, the time taken. */
export function resultHeader(o: LoadOptions, backends: Backends, startedAt: number): Record<string, unknown> {
  const embedded = measuredMaxQos1.get('parley-chat')
  return {
    pairs: o.pairs,
    window: o.window,
    seconds: o.seconds,
    workers: o.workers,
    payloadBytes: o.payload,
    services: backends.describe,
    ...(embedded ? { embeddedChatFromRelayP2p: embedded } : {}),
    totalMs: Math.round(performance.now() - startedAt)
  }
}
