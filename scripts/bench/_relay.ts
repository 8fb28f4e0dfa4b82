// The pure relay comparison (issue 10, item 2): the same load generator against Parley, plain Aedes
// and Mosquitto, each started here in its own process on 127.0.0.1 and stopped by its PID.
//   targets     parley (no plugins, anonymous), parley-chat (the chat plugins, anonymous, messages
//               stored before PUBACK), aedes (_aedes-broker.ts), mosquitto (Debian's binary).
//   generator   worker threads of this process (_relay-worker.ts), each with its own connections;
//               its CPU is this process's (process.cpuUsage covers every thread), and each thread's
//               event-loop utilisation says whether that thread was saturated.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createConnection, createServer } from 'node:net'
import { cpus, loadavg, totalmem, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { Worker } from 'node:worker_threads'
import { clockTicks, cpuMs, memoryMiB, round, settlesWithin, sleep, startBroker, waitUntil } from './_common.js'
import { MEASURING, RUNNING, deliveredIndex, sentIndex, sharedSize, type ClientKind, type Command, type TopicKind, type WorkerInit } from './_relay-shared.js'

export const HOST = '127.0.0.1'
export type TargetName = 'parley' | 'parley-chat' | 'aedes' | 'mosquitto'
export const RELAY_TARGETS: TargetName[] = ['parley', 'aedes', 'mosquitto']

export interface Target {
  name: TargetName
  kind: TopicKind
  port: number
  pid: number
  /** Parley's operations port (/metrics, /readyz). */
  opsPort?: number
  stop(): Promise<void>
}

/** What a scenario may add to a target's defaults. */
export interface TargetOptions {
  /** Extra Node options for a Parley broker (e.g. `--inspect=127.0.0.1:<port>`). */
  nodeArgs?: string[]
  /** Extra mosquitto.conf lines (e.g. `max_connections -1`). */
  mosquittoConf?: string[]
  /** How long a Parley broker may take to stop before SIGKILL (default 20 s). */
  stopGraceMs?: number
}

const log = (line: string) => process.stderr.write(`[relay] ${line}\n`)

/** Maximum QoS 1 rates relay-p2p measured in this invocation (target → delivered msg/s), for relay-latency. */
export const measuredMaxQos1 = new Map<TargetName, number>()

/** Stops a child by its PID: SIGTERM, then SIGKILL after graceMs. */
async function stopChild(child: ChildProcess, exited: Promise<unknown>, graceMs = 10_000): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
  if (!(await settlesWithin(exited, graceMs))) {
    child.kill('SIGKILL')
    await exited
  }
}

function track(child: ChildProcess): Promise<void> {
  const killOnExit = () => child.kill('SIGKILL')
  process.once('exit', killOnExit)
  return new Promise<void>((resolve) =>
    child.once('exit', () => {
      process.off('exit', killOnExit)
      resolve()
    })
  )
}

export async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve))
  const address = server.address()
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if (typeof address !== 'object' || !address) throw new Error('no free port')
  return address.port
}

const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = createConnection({ host: HOST, port }, () => {
      s.destroy()
      resolve(true)
    })
    s.on('error', () => resolve(false))
  })

async function startMosquitto(extraConf: string[] = []): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'parley-bench-mosquitto-'))
  // Debian's defaults otherwise (max_inflight_messages 20, max_queued_messages 1000, Nagle on);
  // no persistence file and no log, like the in-memory Aedes targets.
  const port = await freePort()
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(conf, [`listener ${port} ${HOST}`, 'allow_anonymous true', 'persistence false', 'log_dest none', ...extraConf, ''].join('\n'))
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  const exited = track(child).then(() => rmSync(dir, { recursive: true, force: true }))
  const stderr: string[] = []
  child.stderr.on('data', (d: Buffer) => stderr.length < 50 && stderr.push(d.toString()))
  child.on('error', (err) => stderr.push(String(err)))
  if (!(await waitUntil(() => child.exitCode === null && accepts(port), 10_000, 50)) || child.exitCode !== null) {
    await stopChild(child, exited, 0)
    throw new Error(`mosquitto did not start: ${stderr.join('')}`)
  }
  return { name: 'mosquitto', kind: 'relay', port, pid: child.pid!, stop: () => stopChild(child, exited) }
}

async function startAedes(): Promise<Target> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, '_aedes-broker.ts')], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = track(child)
  const port = new Promise<number>((resolve) =>
    createInterface({ input: child.stdout }).on('line', (line) => {
      try {
        const msg = JSON.parse(line) as { port?: number }
        if (msg.port) resolve(msg.port)
      } catch {
        // not ours
      }
    })
  )
  if (!(await settlesWithin(port, 30_000))) {
    await stopChild(child, exited, 0)
    throw new Error('plain Aedes did not start')
  }
  return { name: 'aedes', kind: 'relay', port: await port, pid: child.pid!, stop: () => stopChild(child, exited) }
}

/** The chat plugins of the default set, minus auth-jwt (anonymous devices) and limits (its publish rate would be the number). */
export const CHAT_PLUGINS = ['protocol', 'groups', 'messages', 'presence', 'media', 'push']

export async function startTarget(name: TargetName, options: TargetOptions = {}): Promise<Target> {
  switch (name) {
    case 'mosquitto':
      return startMosquitto(options.mosquittoConf)
    case 'aedes':
      return startAedes()
    case 'parley':
    case 'parley-chat': {
      const env: NodeJS.ProcessEnv = {
        PARLEY_PLUGINS: name === 'parley' ? '' : CHAT_PLUGINS.join(','),
        PARLEY_MQTT__ALLOW_ANONYMOUS: 'true',
        PARLEY_LISTENERS__WS__ENABLED: 'false',
        PARLEY_SHUTDOWN__DRAIN_MS: '0'
      }
      const b = await startBroker({ env, timeoutMs: 60_000, ...(options.nodeArgs ? { nodeArgs: options.nodeArgs } : {}) })
      // The stores initialise in the background: wait for /readyz.
      await waitUntil(async () => (await fetch(`http://${HOST}:${b.ports.ops}/readyz`).catch(() => undefined))?.status === 200, 30_000, 100)
      return { name, kind: name === 'parley' ? 'relay' : 'chat', port: b.ports.tcp!, pid: b.pid, opsPort: b.ports.ops!, stop: () => b.stop(options.stopGraceMs ?? 20_000) }
    }
  }
}

export interface GeneratorOptions {
  workers: number
  client: ClientKind
  qos: 0 | 1
  flows: number
  /** Subscribers per flow (1 for point-to-point). */
  subscribers: number
  payloadBytes: number
}

export interface RunOptions {
  /** Messages per flow published but not yet delivered to all its subscribers, at most. */
  window: number
  /** Total messages per second over all flows; 0 = as fast as the window allows. */
  rate: number
  warmupMs: number
  durationMs: number
}

export interface RunResult {
  /** Deliveries per second to subscribers (for fan-out: messages x subscribers). */
  deliveredPerSecond: number
  publishedPerSecond: number
  latencyMs: { p50: number; p99: number; p999: number; max: number; samples: number }
  /** Cores used during the measured window: the broker process, and this process (the generator). */
  brokerCores: number
  generatorCores: number
  /** Cores the rest of the machine (other processes, the kernel's own threads) used meanwhile. */
  otherCores: number
  /** Event-loop utilisation of each generator thread (1 = saturated). */
  workerElu: number[]
  brokerRssMiB: number
  errors: number
  /** Chat only: messages per second the senders got delivered receipts for (receipts coalesce: one says "up to seq N"). */
  receiptsPerSecond?: number
}

type Reply = Record<string, unknown> & { reply: string; error?: string }

/** A generator thread running `file` (a module of scripts/bench) with `init` as its workerData; it answers commands in order. */
export class GenThread<C extends { cmd: string } = Command> {
  private readonly worker: Worker
  private readonly replies: Array<(r: Reply) => void> = []
  private failure: Error | undefined
  readonly started: Promise<void>

  constructor(init: unknown, file = '_relay-worker.ts') {
    // tsx's loader is registered inside the thread: worker threads do not inherit the --import.
    const boot = `import { register } from ${JSON.stringify(import.meta.resolve('tsx/esm/api'))}; register(); await import(${JSON.stringify(new URL(`./${file}`, import.meta.url).href)})`
    this.worker = new Worker(new URL(`data:text/javascript,${encodeURIComponent(boot)}`), { workerData: init })
    this.started = new Promise((resolve) => this.replies.push(() => resolve()))
    this.worker.on('message', (r: Reply) => this.replies.shift()?.(r))
    const fail = (err: Error) => {
      this.failure = err
      for (const r of this.replies.splice(0)) r({ reply: 'error', error: err.message })
    }
    this.worker.on('error', fail)
    this.worker.on('exit', (code) => fail(new Error(`generator thread exited (${code})`)))
  }

  // Commands are answered in order, one at a time per thread.
  async ask(c: C, timeoutMs: number): Promise<Reply> {
    if (this.failure) throw this.failure
    const reply = new Promise<Reply>((resolve) => this.replies.push(resolve))
    this.worker.postMessage(c)
    if (!(await settlesWithin(reply, timeoutMs))) throw new Error(`generator thread: no answer to ${c.cmd} within ${timeoutMs} ms`)
    const r = await reply
    if (r.error) throw new Error(`generator thread, ${c.cmd}: ${r.error}`)
    return r
  }

  terminate(): Promise<number> {
    return this.worker.terminate()
  }
}

/** Busy CPU time of the whole machine so far, in ms (all cores, from /proc/stat; idle and iowait excluded). */
export function machineBusyMs(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number)
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields
  return ((user + nice + system + irq + softirq + steal) * 1000) / clockTicks()
}

/** The p-th percentile (0-100) of sorted samples; NaN for none. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!
}

/** What one generator thread holds: the port it connects to, its publishers, its subscribers. */
export interface Placement {
  port: number
  pubs: number[]
  /** [flow, subscribers of it in this thread] */
  subs: Array<[number, number]>
}

export interface ThreadsOptions {
  client: ClientKind
  kind: TopicKind
  qos: 0 | 1
  flows: number
  /** Subscribers per flow. */
  subscribers: number
  payloadBytes: number
}

/**
 * Generator threads (_relay-worker.ts), one per placement, and the counters they share in memory;
 * connected and subscribed, not yet sending. A publisher's window counts deliveries made in any
 * thread, so a flow may cross threads (and, with several ports, cluster nodes).
 */
export class RelayThreads {
  private constructor(
    readonly threads: GenThread[],
    readonly shared: Int32Array,
    private readonly flows: number
  ) {}

  static async start(o: ThreadsOptions, placements: Placement[]): Promise<RelayThreads> {
    const run = Math.random().toString(36).slice(2, 8)
    const buffer = new SharedArrayBuffer(sharedSize(o.flows))
    const threads = placements.map((p, w) => {
      const init: WorkerInit = {
        worker: w,
        host: HOST,
        port: p.port,
        client: o.client,
        kind: o.kind,
        qos: o.qos,
        run,
        flows: o.flows,
        pubs: p.pubs,
        subs: p.subs,
        subsPerFlow: Array.from({ length: o.flows }, () => o.subscribers),
        shared: buffer,
        payloadBytes: o.payloadBytes,
        sampleCap: 2_000_000
      }
      return new GenThread(init)
    })
    const t = new RelayThreads(threads, new Int32Array(buffer), o.flows)
    try {
      await Promise.all(threads.map((x) => settlesWithin(x.started, 30_000)))
      // Every thread connects and subscribes before any publishes (publishing starts with run).
      await t.ask({ cmd: 'connect' }, 120_000)
    } catch (err) {
      await t.close()
      throw err
    }
    return t
  }

  /** The same command to every thread; their answers, in thread order. */
  ask(c: Command, timeoutMs: number): Promise<Reply[]> {
    return Promise.all(this.threads.map((t) => t.ask(c, timeoutMs)))
  }

  /** Messages published and deliveries made so far, over all flows. */
  totals(): { sent: number; delivered: number } {
    let sent = 0
    let delivered = 0
    for (let f = 0; f < this.flows; f++) {
      sent += Atomics.load(this.shared, sentIndex(f))
      delivered += Atomics.load(this.shared, deliveredIndex(this.flows, f))
    }
    return { sent, delivered }
  }

  async close(): Promise<void> {
    Atomics.store(this.shared, RUNNING, 0)
    await Promise.all(this.threads.map((t) => t.ask({ cmd: 'close' }, 15_000).catch(() => undefined)))
    await Promise.all(this.threads.map((t) => t.terminate()))
  }
}

/** Latency percentiles over the samples (`latencies`, Float64Array) of every thread's stop answer. */
export function latencySummary(stops: Array<Record<string, unknown>>): RunResult['latencyMs'] {
  const parts = stops.map((x) => x.latencies as Float64Array)
  const all = new Float64Array(parts.reduce((n, x) => n + x.length, 0))
  let o = 0
  for (const x of parts) {
    all.set(x, o)
    o += x.length
  }
  all.sort()
  return { p50: round(percentile(all, 50), 2), p99: round(percentile(all, 99), 2), p999: round(percentile(all, 99.9), 2), max: round(all[all.length - 1] ?? NaN, 2), samples: all.length }
}

/** Connections of one measurement: publishers and subscribers spread over the generator threads. */
export class Generator {
  private constructor(
    private readonly t: RelayThreads,
    private readonly o: GeneratorOptions
  ) {}

  static async start(target: Target, o: GeneratorOptions): Promise<Generator> {
    const placements: Placement[] = []
    for (let w = 0; w < o.workers; w++) {
      const pubs: number[] = []
      const subs: Array<[number, number]> = []
      for (let f = 0; f < o.flows; f++) {
        // Point-to-point: a flow's publisher and subscriber in the same thread. Fan-out: the publisher
        // in thread f mod W, its subscribers spread over all threads.
        if (f % o.workers === w) pubs.push(f)
        const n = o.subscribers === 1 ? (f % o.workers === w ? 1 : 0) : Math.floor(o.subscribers / o.workers) + (w < o.subscribers % o.workers ? 1 : 0)
        if (n > 0) subs.push([f, n])
      }
      placements.push({ port: target.port, pubs, subs })
    }
    return new Generator(await RelayThreads.start({ ...o, kind: target.kind }, placements), o)
  }

  async run(target: Target, r: RunOptions): Promise<RunResult> {
    const s = this.t.shared
    Atomics.store(s, RUNNING, 1)
    const command: Command = r.rate > 0 ? { cmd: 'run', mode: 'rate', ratePerFlow: r.rate / this.o.flows, window: r.window } : { cmd: 'run', mode: 'window', window: r.window }
    await this.t.ask(command, 10_000)
    await sleep(r.warmupMs)
    const before = { t: performance.now(), ...this.t.totals(), gen: process.cpuUsage(), broker: cpuMs(target.pid), machine: machineBusyMs() }
    Atomics.store(s, MEASURING, 1)
    await this.t.ask({ cmd: 'mark' }, 10_000)
    await sleep(r.durationMs)
    Atomics.store(s, MEASURING, 0)
    const after = { t: performance.now(), ...this.t.totals(), gen: process.cpuUsage(before.gen), broker: cpuMs(target.pid), machine: machineBusyMs() }
    Atomics.store(s, RUNNING, 0)
    const stops = await this.t.ask({ cmd: 'stop' }, 30_000)
    const rss = memoryMiB(target.pid).rss
    // Let what is in flight arrive before the connections close (bounded).
    await waitUntil(() => {
      const t = this.t.totals()
      return t.delivered >= t.sent * this.o.subscribers
    }, 5_000, 50)
    const seconds = (after.t - before.t) / 1000
    return {
      deliveredPerSecond: Math.round((after.delivered - before.delivered) / seconds),
      publishedPerSecond: Math.round((after.sent - before.sent) / seconds),
      latencyMs: latencySummary(stops),
      brokerCores: round((after.broker - before.broker) / 1000 / seconds, 2),
      generatorCores: round((after.gen.user + after.gen.system) / 1e6 / seconds, 2),
      otherCores: round(Math.max(0, (after.machine - before.machine) / 1000 / seconds - (after.broker - before.broker) / 1000 / seconds - (after.gen.user + after.gen.system) / 1e6 / seconds), 2),
      workerElu: stops.map((x) => round(x.elu as number, 2)),
      brokerRssMiB: rss,
      errors: stops.reduce((n, x) => n + (x.errors as number), 0),
      ...(target.kind === 'chat' ? { receiptsPerSecond: Math.round(stops.reduce((n, x) => n + (x.receipts as number), 0) / seconds) } : {})
    }
  }

  close(): Promise<void> {
    return this.t.close()
  }
}

/** Starts the target, runs `fn` with it, and stops it by its PID whatever happens. */
export async function withTarget<T>(name: TargetName, fn: (t: Target) => Promise<T>): Promise<T> {
  const t = await startTarget(name)
  log(`${name}: pid ${t.pid}, port ${t.port}`)
  try {
    return await fn(t)
  } finally {
    await t.stop()
  }
}

/**
 * Starts a generator of `common`'s threads, client and payload against `target` (`o`: the QoS and
 * the flows), runs `fn` with it, and closes it whatever happens.
 */
export async function withGenerator<T>(
  target: Target,
  common: Pick<CommonOptions, 'workers' | 'client' | 'payload'>,
  o: Pick<GeneratorOptions, 'qos' | 'flows' | 'subscribers'>,
  fn: (gen: Generator) => Promise<T>
): Promise<T> {
  const gen = await Generator.start(target, { workers: common.workers, client: common.client, payloadBytes: common.payload, ...o })
  try {
    return await fn(gen)
  } finally {
    await gen.close()
  }
}

/** One measured row of a relay scenario: the run, its target and QoS, and its ratios (addRatios). */
export interface RelayRow extends RunResult {
  target: TargetName
  qos: 0 | 1
  limitedBy: string
  vsAedes?: number
  vsMosquitto?: number
}

/** What most likely limited a measurement, from the CPU each side used on this machine. */
export function limitedBy(r: Pick<RunResult, 'brokerCores' | 'generatorCores' | 'otherCores' | 'workerElu'>, target: TargetName): string {
  const cores = cpus().length
  const reasons: string[] = []
  // Every target relays on one thread (Node's event loop, Mosquitto's single loop).
  if (r.brokerCores >= 0.9) reasons.push(`broker (${target === 'mosquitto' ? 'single-threaded' : 'one event loop'}: ${r.brokerCores} cores)`)
  if (Math.max(...r.workerElu) >= 0.9) reasons.push(`generator thread saturated (ELU ${Math.max(...r.workerElu)})`)
  const busy = r.brokerCores + r.generatorCores + r.otherCores
  if (busy >= cores * 0.9) reasons.push(`machine (${round(busy, 1)} of ${cores} cores busy${r.otherCores >= 0.2 ? `, ${r.otherCores} by other processes` : ''})`)
  return reasons.length ? reasons.join('; ') : 'neither side saturated: window/latency-bound'
}

export interface MachineInfo {
  cores: number
  cpu: string
  memoryGiB: number
  node: string
  mosquitto: string
  loadAverage: number[]
  testsRunning: number
}

export function machineInfo(): MachineInfo {
  let mosquitto: string
  try {
    // `mosquitto -h` prints its version on the first line (and exits 3).
    mosquitto = execFileSync('mosquitto', ['-h'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).split('\n')[0]!
  } catch (err) {
    const out = (err as { stdout?: string }).stdout ?? ''
    mosquitto = out.split('\n')[0] || 'not installed'
  }
  let testsRunning = 0
  try {
    testsRunning = execFileSync('ps', ['-eo', 'cmd'], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => /node.*--test/.test(l)).length
  } catch {
    // no ps: unknown, counted as none
  }
  return {
    cores: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    memoryGiB: round(totalmem() / 2 ** 30, 1),
    node: process.version,
    mosquitto: mosquitto.replace(/^mosquitto version /, ''),
    loadAverage: loadavg().map((x) => round(x, 2)),
    testsRunning
  }
}



export const fmt = (n: number): string => (Number.isFinite(n) ? n.toLocaleString('en-US') : '—')

export function progress(line: string): void {
  log(line)
}

export interface CommonOptions {
  workers: number
  client: ClientKind
  payload: number
  warmupMs: number
  targets: TargetName[]
}

const TARGET_NAMES: TargetName[] = ['parley', 'parley-chat', 'aedes', 'mosquitto']

/** Options every relay scenario takes, parsed from `--name value` pairs; the rest are returned as given. */
export function commonOptions(values: Record<string, string | boolean | undefined>, defaultTargets: TargetName[]): CommonOptions {
  const int = (name: string, min: number) => {
    const v = Number(values[name])
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name}: expected an integer >= ${min}`)
    return v
  }
  const client = String(values.client)
  if (client !== 'raw' && client !== 'mqttjs') throw new Error('--client: raw or mqttjs')
  const targets = values.targets ? String(values.targets).split(',') : defaultTargets
  for (const t of targets) if (!TARGET_NAMES.includes(t as TargetName)) throw new Error(`--targets: ${t} is not one of ${TARGET_NAMES.join(', ')}`)
  return { workers: int('workers', 1), client, payload: int('payload', 8), warmupMs: int('warmup-ms', 0), targets: targets as TargetName[] }
}

export const COMMON_ARGS = {
  workers: { type: 'string', default: '2' },
  client: { type: 'string', default: 'raw' },
  payload: { type: 'string', default: '100' },
  'warmup-ms': { type: 'string', default: '1000' },
  targets: { type: 'string' }
} as const

/** docs/benchmarks.md: the machine, how it was run, and each scenario's table. */
export function benchmarksDoc(info: MachineInfo, command: string, sections: Array<{ name: string; markdown: string }>, infoAfter: MachineInfo): string {
  return [
    '# Benchmarks',
    '',
    `Generated by \`${command}\` on ${new Date().toISOString().slice(0, 10)}; every number below is from that one run.`,
    'The scenarios and how they measure are described in [How the numbers are measured](#how-the-numbers-are-measured).',
    '',
    '## Machine',
    '',
    '| | |',
    '| --- | --- |',
    `| CPU | ${info.cores} cores, ${info.cpu} |`,
    `| Memory | ${info.memoryGiB} GiB |`,
    `| Node.js | ${info.node} (the generator, Parley and plain Aedes; Parley runs from its TypeScript sources through tsx) |`,
    `| Mosquitto | ${info.mosquitto} (Debian) |`,
    '| Backends | Parley: in-memory Aedes persistence and emitter, and the embedded SQLite stores, except in `cluster` (Redis: mqemitter-redis and aedes-persistence-redis; its chat row also MongoDB) and `chat-mongo` (FerretDB 1.24 on SQLite, the MongoDB-compatible test server, plus Redis), which start their own Redis and FerretDB. Plain Aedes: in-memory. Mosquitto: `persistence false`. |',
    `| Load average | ${info.loadAverage.join(' / ')} before, ${infoAfter.loadAverage.join(' / ')} after (1/5/15 min) |`,
    `| Other work | ${info.testsRunning === 0 && infoAfter.testsRunning === 0 ? 'no test suite was running' : `test-suite processes were running (${info.testsRunning} before, ${infoAfter.testsRunning} after): numbers are lower bounds`} |`,
    '',
    'The load generator runs on the same 2 cores as the broker. Each row gives the cores the broker',
    'process and the generator used during the measured window, and each generator thread\'s event-loop',
    'utilisation (ELU; 1.0 means that thread, not the broker, set the pace).',
    '',
    ...sections.flatMap((s) => [`## ${s.name}`, '', s.markdown, '']),
    '## How the numbers are measured',
    '',
    '- **Targets**, each started by the benchmark in its own process, on 127.0.0.1, and stopped by PID:',
    '  `parley` is `parley start` from the sources with `PARLEY_PLUGINS=\'\'` and anonymous clients (the',
    '  bare relay: Aedes plus Parley\'s core); `parley-chat` is `parley start` with the chat plugins',
    `  (${CHAT_PLUGINS.join(', ')}; not auth-jwt, whose cost is at connect only, nor limits, whose per-device`,
    '  publish rate would be the number) where a publisher sends `s/dm/<peer>` and the peer receives',
    '  the stored message on `u/<peer>/m`, so its row is persisted chat, not relay; `aedes` is',
    '  `scripts/bench/_aedes-broker.ts` (`Aedes.createBroker()` and `net.createServer`, nothing else);',
    '  `mosquitto` is Debian\'s binary with a generated config (`listener <port> 127.0.0.1`,',
    '  `allow_anonymous true`, `persistence false`, `log_dest none`, otherwise its defaults).',
    '- **Load generator**: worker threads of the benchmark process (`--workers`, default 2), each with its',
    '  own TCP connections, using a minimal MQTT 3.1.1 client (`scripts/bench/_mqtt-raw.ts`, `TCP_NODELAY`,',
    '  writes of one tick corked together); `--client mqttjs` uses mqtt.js 5 instead. mqtt.js costs',
    '  about 3.5x more generator CPU per message (smoke run, 8 pairs at QoS 1 against Mosquitto on a busy',
    '  machine: 35 µs per delivered message with mqtt.js, 10 µs with this client), which on 2 cores would',
    '  take CPU from the broker under test. Publishers keep a',
    '  window of messages published but not yet delivered to every subscriber (counted in shared memory',
    '  across threads), so no target is flooded beyond what it delivers. Generator CPU is the whole',
    '  benchmark process (`process.cpuUsage()`), broker CPU is `/proc/<pid>/stat`, both over the',
    '  measured window only (after a warm-up).',
    '- **Latency**: every payload starts with its send time (`performance.timeOrigin + performance.now()`,',
    '  one clock for all threads), and the receiving thread subtracts it from its own clock. It includes',
    '  the generator\'s own queueing on a busy machine.',
    '- **Ratios** compare targets of the same scenario, QoS and run: `vs Aedes` = this row / plain',
    '  Aedes, `vs Mosquitto` = this row / Mosquitto.',
    '- **Stored chat** (`parley-chat`, `chat-mongo`, the chat row of `cluster`): recipients keep a',
    '  persistent session (`clean=false`), as a phone does, so their PUBACK of each message moves their',
    '  delivered marker and the sender gets a delivered receipt; senders subscribe to their own tree',
    '  (carbons and receipts). Receipts say "delivered up to seq N" and the broker sends one per burst,',
    '  so the generator counts the messages receipted (how far N moved), not receipt packets.',
    '- **Memory per member** (`group-fanout`): the broker is started with `--inspect=127.0.0.1:<port>`',
    '  and the benchmark forces a full garbage collection through the inspector before each heap and',
    '  RSS sample; without it the heap figures are noise. The same method on the bare relay with 900',
    '  offline persistent QoS 1 subscribers shows ~140 bytes per offline member per message, so a',
    '  per-member queue would show.',
    '- **Connections** (`connection-ramp`, `reconnect-storm`, `presence-storm`): the generator is',
    '  forked processes, each binding its sockets to its own source addresses in 127.0.0.0/8 to get',
    '  past the ephemeral port range. Every process here may hold at most 20,000 open files (a hard',
    '  limit this machine does not let us raise), so one broker holds at most ~19,950 sockets.',
    ''
  ].join('\n')
}

/** Sets each row's ratio to plain Aedes and to Mosquitto at the same QoS, from the rows of one run. */
export function addRatios(rows: Array<{ target: TargetName; qos: 0 | 1; deliveredPerSecond: number; vsAedes?: number; vsMosquitto?: number }>): void {
  for (const r of rows) {
    const same = (name: TargetName) => rows.find((x) => x.target === name && x.qos === r.qos)?.deliveredPerSecond
    const a = same('aedes')
    const m = same('mosquitto')
    if (a) r.vsAedes = Math.round((r.deliveredPerSecond / a) * 100) / 100
    if (m) r.vsMosquitto = Math.round((r.deliveredPerSecond / m) * 100) / 100
  }
}
