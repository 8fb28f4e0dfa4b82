// Connection ramp (issue 10, item 1): as many concurrent idle connections as one broker process
// holds, each a device that CONNECTs (clean session, keepalive 300 s, client id `<user>:phone`) and
// SUBSCRIBEs once to `u/<user>/#` at QoS 1, as a real device does. Memory per connection and
// connect rate, for Parley as deployed (the chat plugins), plain Aedes and Mosquitto.
//
//   npm run bench connection-ramp -- [--connections 19000] [--step 4750] [--inflight 500] [--workers 2]
//                                     [--hold-ms 3000] [--probes 100] [--targets parley,aedes,mosquitto]
//
// Targets, each started here in its own process on 127.0.0.1 and stopped by its PID:
//   parley     `parley start` with the chat plugins (_relay.ts CHAT_PLUGINS), anonymous devices, embedded
//              stores, fresh data directory; its /metrics gives the V8 heap and its connected clients
//   aedes      _aedes-broker.ts (Aedes.createBroker() and net.createServer, nothing else)
//   mosquitto  Debian's binary: listener on 127.0.0.1, anonymous, no persistence, max_connections -1
// Load: --workers processes (_ramp-worker.ts), each with its own source addresses 127.<run>.<w>.1-4
// (each source address has its own ephemeral port range), together --inflight connections between
// TCP connect and SUBACK. The ramp goes in steps of --step connections; after each step: broker RSS
// (/proc/<pid>/status), broker CPU (/proc/<pid>/stat), its open descriptors, Parley's heap.
// Then everything idles --hold-ms, and the scenario checks that the connections are alive: none
// closed, every one answers a PINGREQ, and --probes devices each get a message from another device.
//
// Limit: this machine gives every process at most 20,000 open descriptors (a hard limit, which
// cannot be raised here), so the broker process holds at most ~19,990 sockets: 19,000 is the ceiling.
// Parley's memory at 100,000 (the issue's target) is a linear extrapolation, labelled as such.
import { readFileSync, readdirSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { cpuMs, memoryMiB, round, scrapeMetrics, sleep, forkWorker, type WorkerProcess } from './_common.js'
import { CHAT_PLUGINS, HOST, fmt, machineBusyMs, startTarget } from './_relay.js'
import type { Command, ConnectReply, StatusReply } from './_ramp-worker.js'

export const description = 'connection ramp: up to 19,000 idle devices (CONNECT + SUBSCRIBE u/<user>/#) on one broker; memory per connection, connect rate; Parley vs Aedes vs Mosquitto'

const TARGETS = ['parley', 'aedes', 'mosquitto'] as const
/** Not in the default run: Parley with no plugins (Aedes plus Parley's core), to tell the plugins' share from the core's. */
const EXTRA_TARGETS = ['parley-bare'] as const
type RampTarget = (typeof TARGETS)[number] | (typeof EXTRA_TARGETS)[number]
/** Descriptors one process may open here (RLIMIT_NOFILE, hard): the broker's listeners, files and pipes take a few. */
const FD_LIMIT = 20_000
const EXTRAPOLATE_TO = 100_000

const log = (line: string) => process.stderr.write(`[connection-ramp] ${line}\n`)

interface Target {
  name: RampTarget
  port: number
  pid: number
  /** Parley's operations port (/metrics). */
  opsPort?: number
  stop(): Promise<void>
}

// ---- targets ------------------------------------------------------------------------------------

/**
 * The targets of _relay.ts: `parley` is its parley-chat (chat plugins, anonymous devices), `parley-bare`
 * its parley (no plugins); Mosquitto with no cap on connections; Parley given 30 s to stop with
 * thousands of connections.
 */
async function start(name: RampTarget): Promise<Target> {
  const t = await startTarget(name === 'parley' ? 'parley-chat' : name === 'parley-bare' ? 'parley' : name, { mosquittoConf: ['max_connections -1'], stopGraceMs: 30_000 })
  return { name, port: t.port, pid: t.pid, ...(t.opsPort ? { opsPort: t.opsPort } : {}), stop: () => t.stop() }
}

// ---- generator processes ------------------------------------------------------------------------

type Worker = WorkerProcess<Command>
const startWorker = (): Worker => forkWorker<Command>('_ramp-worker.ts', 'generator')


// ---- measurement --------------------------------------------------------------------------------

const openFds = (pid: number): number => {
  try {
    return readdirSync(`/proc/${pid}/fd`).length
  } catch {
    return NaN
  }
}

/** The kernel's count of connections dropped because a listen queue was full (machine-wide, /proc/net/netstat). */
function listenOverflows(): number {
  try {
    const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'))
    const names = lines[0]!.split(/\s+/)
    const values = lines[1]!.split(/\s+/)
    return Number(values[names.indexOf('ListenOverflows')])
  } catch {
    return NaN
  }
}

async function parleyMetrics(t: Target): Promise<{ heapMiB: number; connected: number } | undefined> {
  if (!t.opsPort) return undefined
  try {
    const m = await scrapeMetrics(t.opsPort)
    return { heapMiB: round((m.get('nodejs_heap_size_used_bytes') ?? NaN) / 2 ** 20, 1), connected: m.get('parley_connected_clients') ?? NaN }
  } catch {
    return undefined
  }
}

interface Step {
  connections: number
  /** Connects (CONNACK + SUBACK) per second during this step. */
  connectsPerSecond: number
  rssMiB: number
  heapMiB?: number
  brokerCpuMs: number
  brokerCpuMsPerConnection: number
  brokerFds: number
  failed: number
}

interface Row {
  target: RampTarget
  requested: number
  held: number
  failed: number
  firstError?: string
  rampSeconds: number
  connectsPerSecond: number
  latencyMs: { p50: number; p99: number; max: number }
  rssMiB: { idle: number; full: number; peak: number }
  kibPerConnection: number
  heapMiB?: { idle: number; full: number }
  heapKibPerConnection?: number
  brokerCpuMsPerConnection: number
  brokerCores: number
  brokerFds: number
  brokerConnectedClients?: number
  /** SYNs/ACKs the kernel dropped during the ramp because the broker's listen queue was full (retried by the client's kernel after ~1 s). */
  listenOverflows: number
  generator: { processes: number; cores: number; cpuMsPerConnection: number }
  /** Cores the rest of the machine (other processes, the kernel's own threads) used during the ramp. */
  otherCores: number
  /** Least-squares slope of RSS (and heap) over the steps, idle included: less sensitive to one late GC than the end points. */
  fitKibPerConnection: { rss: number; heap?: number }
  alive: { holdMs: number; open: number; unexpectedCloses: number; closeReasons: Record<string, number>; pingSent: number; pingAnswered: number; pingMs: number; probes: number; probesAcked: number; probesReceived: number; probeMs: number }
  steps: Step[]
  extrapolated100k?: { rssMiB: number; heapMiB?: number }
  closeMs: number
  stopMs: number
}

/** Slope of MiB over connections, in KiB per connection (least squares). */
function slopeKib(points: Array<[number, number]>): number {
  const n = points.length
  const mx = sum(points.map((p) => p[0])) / n
  const my = sum(points.map((p) => p[1])) / n
  const sxy = sum(points.map(([x, y]) => (x - mx) * (y - my)))
  const sxx = sum(points.map(([x]) => (x - mx) ** 2))
  return sxx > 0 ? round((sxy / sxx) * 1024, 1) : NaN
}

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? NaN
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0)

async function rampOne(name: RampTarget, index: number, o: Options): Promise<Row> {
  const t = await start(name)
  log(`${name}: pid ${t.pid}, port ${t.port}`)
  const workers: Worker[] = []
  let closeMs = 0
  let row: Row | undefined
  try {
    // Source addresses: 127.<A>.<worker>.1-4, A fresh for each target of each run, so sockets of an
    // earlier target (or run) still in TIME_WAIT never hold a port this ramp needs.
    const a = 20 + ((Math.floor(Date.now() / 1000) * 3 + index) % 200)
    const per = Math.ceil(o.connections / o.workers)
    for (let w = 0; w < o.workers; w++) workers.push(startWorker())
    await Promise.all(
      workers.map((wk, w) =>
        wk.ask(
          { cmd: 'init', host: HOST, port: t.port, first: w * per, count: Math.max(0, Math.min(per, o.connections - w * per)), addresses: [1, 2, 3, 4].map((i) => `127.${a}.${w}.${i}`), keepalive: 300, userPrefix: 'ramp' },
          30_000
        )
      )
    )
    await sleep(1000) // the broker settles after its start
    const overflows0 = listenOverflows()
    const idle = { rss: memoryMiB(t.pid).rss, metrics: await parleyMetrics(t), cpu: cpuMs(t.pid), gen: sum(workers.map((w) => cpuMs(w.child.pid!))), machine: machineBusyMs(), at: performance.now() }
    log(`${name}: idle RSS ${idle.rss} MiB${idle.metrics ? `, heap ${idle.metrics.heapMiB} MiB` : ''}; ramping to ${fmt(o.connections)} in steps of ${fmt(o.step)}, ${o.inflight} in flight`)

    const steps: Step[] = []
    const latencies: number[] = []
    let held = 0
    let failed = 0
    let firstError: string | undefined
    let prevCpu = idle.cpu
    while (held + failed < o.connections) {
      const want = Math.min(o.step, o.connections - held - failed)
      const t0 = performance.now()
      // Split the step over the workers (each connects from its own share of the devices).
      const replies = await Promise.all(
        workers.map((w, i) => w.ask<ConnectReply>({ cmd: 'connect', count: Math.floor(want / o.workers) + (i < want % o.workers ? 1 : 0), inflight: Math.ceil(o.inflight / o.workers), timeoutMs: 30_000 }, 150_000))
      )
      const seconds = (performance.now() - t0) / 1000
      const connected = sum(replies.map((r) => r.connected))
      const stepFailed = sum(replies.map((r) => r.failed))
      held += connected
      failed += stepFailed
      firstError ??= replies.map((r) => r.firstError).find(Boolean)
      for (const r of replies) for (const l of r.latencies) latencies.push(l)
      const cpu = cpuMs(t.pid)
      const m = await parleyMetrics(t)
      const step: Step = { connections: held, connectsPerSecond: Math.round(connected / seconds), rssMiB: memoryMiB(t.pid).rss, ...(m ? { heapMiB: m.heapMiB } : {}), brokerCpuMs: Math.round(cpu - prevCpu), brokerCpuMsPerConnection: connected ? round((cpu - prevCpu) / connected, 3) : NaN, brokerFds: openFds(t.pid), failed: stepFailed }
      prevCpu = cpu
      steps.push(step)
      log(`${name}: ${fmt(held)} held (+${fmt(connected)} at ${fmt(step.connectsPerSecond)}/s${stepFailed ? `, ${stepFailed} failed: ${firstError}` : ''}), RSS ${step.rssMiB} MiB${m ? `, heap ${m.heapMiB} MiB` : ''}, broker CPU ${step.brokerCpuMs} ms (${step.brokerCpuMsPerConnection} per connect), ${step.brokerFds} fds`)
      if (stepFailed > want / 2) break // the broker refuses: more steps would only wait for timeouts
    }
    const full = { cpu: cpuMs(t.pid), gen: sum(workers.map((w) => cpuMs(w.child.pid!))), machine: machineBusyMs(), at: performance.now() }
    const overflows = listenOverflows() - overflows0
    log(`${name}: ramp done in ${round((full.at - idle.at) / 1000, 1)} s, other processes used ${round(Math.max(0, (full.machine - idle.machine - (full.cpu - idle.cpu) - (full.gen - idle.gen)) / (full.at - idle.at)), 2)} cores meanwhile; the kernel dropped ${overflows} connects on a full listen queue (machine-wide ListenOverflows)`)

    // ---- hold, then check every connection is alive -------------------------------------------
    await sleep(o.holdMs)
    const fullMem = memoryMiB(t.pid)
    const fullMetrics = await parleyMetrics(t)
    const brokerFds = openFds(t.pid)
    const statuses = await Promise.all(workers.map((w) => w.ask<StatusReply>({ cmd: 'status' }, 10_000)))
    const pings = await Promise.all(workers.map((w) => w.ask<{ sent: number; answered: number; ms: number }>({ cmd: 'ping', timeoutMs: 15_000 }, 30_000)))
    const probes = await Promise.all(
      workers.map((w) => w.ask<{ pairs: number; acked: number; received: number; ms: number }>({ cmd: 'probe', pairs: Math.ceil(o.probes / o.workers), chat: name === 'parley', timeoutMs: 15_000 }, 30_000))
    )
    const closeReasons: Record<string, number> = {}
    for (const s of statuses) for (const [k, v] of Object.entries(s.closeReasons)) closeReasons[k] = (closeReasons[k] ?? 0) + v
    const alive = {
      holdMs: o.holdMs,
      open: sum(statuses.map((s) => s.open)),
      unexpectedCloses: sum(statuses.map((s) => s.unexpectedCloses)),
      closeReasons,
      pingSent: sum(pings.map((p) => p.sent)),
      pingAnswered: sum(pings.map((p) => p.answered)),
      pingMs: Math.max(...pings.map((p) => p.ms)),
      probes: sum(probes.map((p) => p.pairs)),
      probesAcked: sum(probes.map((p) => p.acked)),
      probesReceived: sum(probes.map((p) => p.received)),
      probeMs: Math.max(...probes.map((p) => p.ms))
    }
    log(
      `${name}: after ${o.holdMs} ms idle: ${fmt(alive.open)} open, ${alive.unexpectedCloses} closed by the broker${alive.unexpectedCloses ? ` (${JSON.stringify(closeReasons)})` : ''}; ` +
        `PINGRESP ${fmt(alive.pingAnswered)}/${fmt(alive.pingSent)} in ${alive.pingMs} ms; probe messages ${alive.probesReceived}/${alive.probes} received (${alive.probesAcked} acked) in ${alive.probeMs} ms; ` +
        `RSS ${fullMem.rss} MiB (peak ${fullMem.peak})${fullMetrics ? `, heap ${fullMetrics.heapMiB} MiB, parley_connected_clients ${fullMetrics.connected}` : ''}, ${brokerFds} fds`
    )

    // ---- disconnect all -----------------------------------------------------------------------
    const c0 = performance.now()
    await Promise.all(workers.map((w) => w.ask({ cmd: 'close', timeoutMs: 20_000 }, 40_000)))
    closeMs = Math.round(performance.now() - c0)

    latencies.sort((x, y) => x - y)
    const rampWall = (full.at - idle.at) / 1000
    const kib = held ? round(((fullMem.rss - idle.rss) * 1024) / held, 1) : NaN
    const heapKib = idle.metrics && fullMetrics && held ? round(((fullMetrics.heapMiB - idle.metrics.heapMiB) * 1024) / held, 1) : undefined
    row = {
      target: name,
      requested: o.connections,
      held,
      failed,
      ...(firstError ? { firstError } : {}),
      rampSeconds: round(rampWall, 1),
      connectsPerSecond: Math.round(held / rampWall),
      latencyMs: { p50: round(percentile(latencies, 50), 1), p99: round(percentile(latencies, 99), 1), max: round(latencies[latencies.length - 1] ?? NaN, 1) },
      rssMiB: { idle: idle.rss, full: fullMem.rss, peak: fullMem.peak },
      kibPerConnection: kib,
      ...(idle.metrics && fullMetrics ? { heapMiB: { idle: idle.metrics.heapMiB, full: fullMetrics.heapMiB }, heapKibPerConnection: heapKib } : {}),
      brokerCpuMsPerConnection: held ? round((full.cpu - idle.cpu) / held, 3) : NaN,
      brokerCores: round((full.cpu - idle.cpu) / 1000 / rampWall, 2),
      brokerFds,
      ...(fullMetrics ? { brokerConnectedClients: fullMetrics.connected } : {}),
      listenOverflows: overflows,
      generator: { processes: o.workers, cores: round((full.gen - idle.gen) / 1000 / rampWall, 2), cpuMsPerConnection: held ? round((full.gen - idle.gen) / held, 3) : NaN },
      otherCores: round(Math.max(0, (full.machine - idle.machine - (full.cpu - idle.cpu) - (full.gen - idle.gen)) / 1000 / rampWall), 2),
      fitKibPerConnection: {
        rss: slopeKib([[0, idle.rss], ...steps.map((x): [number, number] => [x.connections, x.rssMiB])]),
        ...(idle.metrics ? { heap: slopeKib([[0, idle.metrics.heapMiB], ...steps.map((x): [number, number] => [x.connections, x.heapMiB ?? NaN])]) } : {})
      },
      alive,
      steps,
      ...(name === 'parley' && held
        ? {
            extrapolated100k: {
              rssMiB: Math.round(idle.rss + (kib * EXTRAPOLATE_TO) / 1024),
              ...(heapKib !== undefined && idle.metrics ? { heapMiB: Math.round(idle.metrics.heapMiB + (heapKib * EXTRAPOLATE_TO) / 1024) } : {})
            }
          }
        : {}),
      closeMs,
      stopMs: 0
    }
  } finally {
    await Promise.all(workers.map((w) => w.stop()))
    const s0 = performance.now()
    await t.stop()
    const stopMs = Math.round(performance.now() - s0)
    if (row) row.stopMs = stopMs
    log(`${name}: disconnected in ${closeMs} ms, stopped in ${stopMs} ms`)
  }
  return row
}

interface Options {
  connections: number
  step: number
  inflight: number
  workers: number
  holdMs: number
  probes: number
  targets: RampTarget[]
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const { values } = parseArgs({
    args,
    options: {
      connections: { type: 'string', default: '19000' },
      step: { type: 'string', default: '4750' },
      inflight: { type: 'string', default: '500' },
      workers: { type: 'string', default: '2' },
      'hold-ms': { type: 'string', default: '3000' },
      probes: { type: 'string', default: '100' },
      targets: { type: 'string', default: TARGETS.join(',') }
    }
  })
  const int = (name: keyof typeof values, min: number) => {
    const v = Number(values[name])
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name}: expected an integer >= ${min}`)
    return v
  }
  const targets = values.targets.split(',') as RampTarget[]
  for (const t of targets) if (![...TARGETS, ...EXTRA_TARGETS].includes(t)) throw new Error(`--targets: ${t} is not one of ${[...TARGETS, ...EXTRA_TARGETS].join(', ')}`)
  const o: Options = { connections: int('connections', 1), step: int('step', 1), inflight: int('inflight', 1), workers: int('workers', 1), holdMs: int('hold-ms', 0), probes: int('probes', 0), targets }
  if (o.connections > FD_LIMIT - 200) throw new Error(`--connections: at most ${FD_LIMIT - 200}: a process may open ${FD_LIMIT} descriptors here (hard limit), and the broker is one process`)
  if (Math.ceil(o.connections / o.workers) > FD_LIMIT - 500) throw new Error(`--workers: each generator process holds connections/workers sockets, at most ${FD_LIMIT - 500}`)

  const started = performance.now()
  const rows: Row[] = []
  for (const [i, name] of targets.entries()) {
    const s0 = performance.now()
    rows.push(await rampOne(name, i, o))
    log(`${name}: ${round((performance.now() - s0) / 1000, 1)} s in all`)
  }
  return { connections: o.connections, step: o.step, inflight: o.inflight, workers: o.workers, holdMs: o.holdMs, probes: o.probes, fdLimit: FD_LIMIT, rows, totalSeconds: round((performance.now() - started) / 1000, 1) }
}

/** What set the pace of a target's connects, from the CPU each side used and the kernel's listen-queue drops. */
function connectLimit(x: Row): string {
  const reasons: string[] = []
  if (x.brokerCores >= 0.9) reasons.push(`the broker's one thread (${x.brokerCores} cores)`)
  if (x.listenOverflows > 0) reasons.push(`its listen queue (${fmt(x.listenOverflows)} connects dropped, retried by TCP after 1 s)`)
  const busy = x.brokerCores + x.generator.cores + x.otherCores
  if (busy >= 1.8) reasons.push(`the machine (${round(busy, 1)} of 2 cores busy${x.otherCores >= 0.2 ? `, ${x.otherCores} by other processes` : ''})`)
  return reasons.length ? reasons.join('; ') : 'neither side saturated: latency-bound'
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as { connections: number; step: number; inflight: number; workers: number; holdMs: number; probes: number; fdLimit: number; rows: Row[] }
  const parley = r.rows.find((x) => x.target === 'parley')
  const aliveCell = (x: Row) => {
    const ok = x.alive.unexpectedCloses === 0 && x.alive.pingAnswered === x.held && x.alive.probesReceived === x.alive.probes
    return `${ok ? 'yes' : 'NO'}: ${x.alive.unexpectedCloses} closed, PINGRESP ${fmt(x.alive.pingAnswered)}/${fmt(x.held)}, messages ${x.alive.probesReceived}/${x.alive.probes}`
  }
  const e = parley?.extrapolated100k
  return [
    `Each device CONNECTs (clean session, keepalive 300 s, client id \`<user>:phone\`) and SUBSCRIBEs once to \`u/<user>/#\` at QoS 1, then stays idle. Ramp to ${fmt(r.connections)} in steps of ${fmt(r.step)}, ${r.inflight} connects in flight (CONNECT sent to SUBACK), from ${r.workers} generator processes with 4 source addresses of 127.0.0.0/8 each; then ${r.holdMs / 1000} s idle, a PINGREQ on every connection and ${r.probes} device-to-device messages (Parley: stored chat on \`s/dm/<peer>\`, delivered on \`u/<peer>/m\`). RSS: the idle broker, and at ${fmt(r.connections)} connections after the idle hold; KiB per connection = (full - idle) / connections (Parley: V8 heap used in brackets). Parley is \`parley start\` with the chat plugins (${CHAT_PLUGINS.join(', ')}), anonymous devices.`,
    '',
    '| Target | Held | Connects/s | p50 / p99 ms to SUBACK | RSS MiB idle → full | KiB per connection | Broker CPU ms per connection | Broker cores | Generator processes (cores) | Other cores | All alive after the hold | Held limited by | Connect rate limited by |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.target} | ${fmt(x.held)}${x.failed ? ` (${fmt(x.failed)} failed: ${x.firstError ?? '?'})` : ''} | ${fmt(x.connectsPerSecond)} | ${x.latencyMs.p50} / ${x.latencyMs.p99} | ${x.rssMiB.idle} → ${x.rssMiB.full} | ${x.kibPerConnection}${x.heapKibPerConnection !== undefined ? ` (heap ${x.heapKibPerConnection})` : ''} | ${x.brokerCpuMsPerConnection} | ${x.brokerCores} | ${x.generator.processes} (${x.generator.cores}) | ${x.otherCores} | ${aliveCell(x)} | ${x.held >= r.connections ? `the ${fmt(r.fdLimit)}-descriptor limit per process: at most ${fmt(r.fdLimit - (x.brokerFds - x.held))} sockets for this broker (its own files take ${x.brokerFds - x.held})` : 'refused connections (see failures)'} | ${connectLimit(x)} |`
    ),
    '',
    ...(parley && e
      ? [
          `**Parley at ${fmt(EXTRAPOLATE_TO)} connections (the issue's target) is a linear extrapolation, not a measurement** (${parley.held >= FD_LIMIT - 1000 ? `the descriptor limit stops the ramp at ${fmt(parley.held)}` : `this run held ${fmt(parley.held)}`}): about ${fmt(e.rssMiB)} MiB RSS${e.heapMiB !== undefined ? ` and ${fmt(e.heapMiB)} MiB of V8 heap (Node's default heap limit here is about 4,144 MB)` : ''}, at the ${parley.kibPerConnection} KiB RSS${parley.heapKibPerConnection !== undefined ? ` and ${parley.heapKibPerConnection} KiB heap` : ''} per connection measured here (fitted over the steps: ${parley.fitKibPerConnection.rss} KiB RSS${parley.fitKibPerConnection.heap !== undefined ? `, ${parley.fitKibPerConnection.heap} KiB heap` : ''}). Parley's RSS by step: idle ${parley.rssMiB.idle}, ${parley.steps.map((s) => `${fmt(s.connections)}: ${s.rssMiB}`).join(', ')} MiB; its CPU per connect by step: ${parley.steps.map((s) => s.brokerCpuMsPerConnection).join(', ')} ms (where it grows with the devices already connected, the connect time below is optimistic); at ${fmt(parley.connectsPerSecond)} connects/s, ${fmt(EXTRAPOLATE_TO)} devices would take ${Math.round(EXTRAPOLATE_TO / parley.connectsPerSecond)} s to connect.`,
          ''
        ]
      : []),
    `What limits these numbers: every process here may open at most ${fmt(r.fdLimit)} descriptors (a hard limit that cannot be raised on this machine), so no broker can be shown holding more than about 19,950 to 19,990 sockets and 100,000 is extrapolated; the broker and the generator share 2 cores, so connect rates are lower bounds; RSS growth includes V8 garbage not yet collected.`
  ].join('\n')
}
