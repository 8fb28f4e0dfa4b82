// Presence under a connection storm (issue 6, item 6): N devices, each the only device of a user with
// K contacts, connect within a few seconds, then all leave. Presence work must stay proportional to
// the contacts (K events per user who comes online or goes offline) and batched.
//
//   npm run bench presence-storm -- [--devices 10000] [--contacts 20] [--workers 2] [--inflight 250]
//                                   [--setup-concurrency 200] [--grace-ms 500] [--snapshot 0|1]
//                                   [--cold-cache 1|0] [--presence 1|0]
//
// One broker process (`parley start`: protocol, groups, messages, presence on the embedded stores, anonymous
// devices, no limits plugin, listeners on 127.0.0.1, a fresh data directory) and --workers load-generator
// processes (scripts/bench/_presence-storm-worker.ts), each using 8 source addresses of 127.0.0.0/8.
//   setup (not measured)  every user connects, sets its contact list with contacts.add (user i: i±1, i±2,
//                         ... K mutual contacts), and disconnects; then everyone goes offline (grace
//                         period) and, with --cold-cache 1, the audience cache expires (audienceCacheMs).
//   connect storm         all devices connect (--inflight pending CONNECTs per worker) and subscribe to
//                         u/<user>/#; with --snapshot 1 each also calls presence.get, as an app does.
//   disconnect storm      all devices disconnect; after graceMs the users go offline.
// Measured per storm: wall time, broker CPU (utime+stime of the process, /proc/<pid>/stat) until the
// presence fan-out is over, broker RSS, presence changes and events (the broker's /metrics), events the
// devices received, the load generator's own CPU, and the same per connect and per contact.
// --presence 0 runs the connect storm without the presence plugin: the cost of a bare connect.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cpuMs, intOptions, memoryMiB, round, scrapeMetrics, sleep, startBroker, waitUntil, forkWorker, type WorkerProcess, type Broker as BrokerProcess } from './_common.js'
import type { Command, Counts } from './_presence-storm-worker.js'

export const description = 'presence under a storm: N devices with K contacts connect within seconds, then leave; presence events and CPU per connect'

const BATCH_MS = 250 // the presence plugin's default batchMs
const AUDIENCE_CACHE_MS = 10_000 // its default audienceCacheMs
const EVENTS = 'parley_presence_events_total'
const CHANGES = (to: 'online' | 'offline') => `parley_presence_changes_total{to="${to}"}`

type Worker = WorkerProcess<Command>
const startWorker = (): Worker => forkWorker<Command>('_presence-storm-worker.ts')

/** A snapshot of everything measured: broker and load-generator CPU, broker memory, presence counters. */
async function sample(broker: BrokerProcess, workers: Worker[]) {
  const metrics = await scrapeMetrics(broker.ports.ops!)
  const get = (name: string) => metrics.get(name) ?? 0
  return {
    at: Date.now(),
    brokerCpuMs: cpuMs(broker.pid),
    loadCpuMs: workers.reduce((sum, w) => sum + cpuMs(w.child.pid!), 0),
    memory: memoryMiB(broker.pid),
    events: get(EVENTS),
    online: get(CHANGES('online')),
    offline: get(CHANGES('offline')),
    connected: get('parley_connected_clients')
  }
}
type Sample = Awaited<ReturnType<typeof sample>>

/**
 * Waits until `want` users made the transition `to` since `base` and their fan-out is over: every
 * expected event counted (K per change), or the event counter unchanged for a few batch periods
 * (events a viewer may not see are not sent). Returns the sample taken when the counter last moved.
 */
async function settle(broker: BrokerProcess, workers: Worker[], base: Sample, to: 'online' | 'offline', want: number, k: number, timeoutMs: number): Promise<{ last: Sample; complete: boolean }> {
  let last = await sample(broker, workers)
  let stableSince = Date.now()
  const complete = await waitUntil(
    async () => {
      const s = await sample(broker, workers)
      if (s.events !== last.events || s[to] !== last[to]) {
        last = s
        stableSince = Date.now()
      }
      const changes = s[to] - base[to]
      return changes >= want && (s.events - base.events >= changes * k || Date.now() - stableSince > 4 * BATCH_MS + 1000)
    },
    timeoutMs,
    100
  )
  return { last, complete }
}

const sum = (xs: Array<Record<string, unknown>>, key: string) => xs.reduce((n, x) => n + Number(x[key] ?? 0), 0)

async function countsOf(workers: Worker[]): Promise<Counts> {
  const all = await Promise.all(workers.map((w) => w.ask<{ counts: Counts }>({ cmd: 'counts' }, 10_000)))
  return all.reduce((acc, { counts }) => ({ online: acc.online + counts.online, offline: acc.offline + counts.offline, other: acc.other + counts.other }), { online: 0, offline: 0, other: 0 })
}

const log = (line: string) => process.stderr.write(`[presence-storm] ${line}\n`)

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const o = intOptions(args, { devices: 10_000, contacts: 20, workers: 2, inflight: 250, setupConcurrency: 200, graceMs: 500, snapshot: 0, coldCache: 1, presence: 1 })
  const N = o.devices
  const K = o.contacts
  if (N < 2 || K < 1 || K >= N || o.workers < 1 || o.inflight < 1) throw new Error('need --devices >= 2, 1 <= --contacts < devices, --workers >= 1, --inflight >= 1')
  if (N + 200 > 19_000) throw new Error('at most about 18,800 devices: the broker and this machine allow 20,000 open descriptors per process')
  const presence = o.presence !== 0

  const dir = mkdtempSync(join(tmpdir(), 'parley-bench-'))
  const configFile = join(dir, 'parley.yaml')
  writeFileSync(
    configFile,
    [
      'mqtt: { allowAnonymous: true }',
      'shutdown: { drainMs: 0 }',
      'plugins:',
      '  - protocol',
      '  - groups',
      '  - messages',
      ...(presence ? [`  - use: presence`, `    config: { graceMs: ${o.graceMs}, batchMs: ${BATCH_MS}, audienceCacheMs: ${AUDIENCE_CACHE_MS} }`] : []),
      ''
    ].join('\n')
  )
  const startedAt = Date.now()
  let broker: BrokerProcess | undefined
  const workers: Worker[] = []
  try {
    broker = await startBroker({ args: ['--config', configFile], env: { PARLEY_LISTENERS__WS__ENABLED: 'false' }, timeoutMs: 60_000 })
    const b = broker
    const port = b.ports.tcp!
    for (let w = 0; w < o.workers; w++) workers.push(startWorker())
    await Promise.all(
      workers.map((wk, w) =>
        wk.ask({ cmd: 'init', port, devices: N, contacts: K, worker: w, indices: Array.from({ length: N }, (_, i) => i).filter((i) => i % o.workers === w) }, 30_000)
      )
    )

    // ---- setup (not measured) --------------------------------------------------------------
    let setup: Record<string, unknown> = { skipped: 'no presence plugin' }
    if (presence) {
      const t0 = Date.now()
      const base = await sample(b, workers)
      const done = await Promise.all(workers.map((w) => w.ask({ cmd: 'setup', concurrency: Math.ceil(o.setupConcurrency / o.workers) }, 160_000)))
      const rpcDone = await sample(b, workers)
      const failed = sum(done, 'failed')
      if (failed) throw new Error(`setup: ${failed} users without contacts (${done.map((d) => d.firstError).find(Boolean) as string})`)
      // Not by count: setup sent online and contacts.add events too; wait for the counter to rest.
      const offline = await settle(b, workers, base, 'offline', N, Number.POSITIVE_INFINITY, 30_000)
      if (!offline.complete) throw new Error('setup: the users did not all go offline within 30 s')
      setup = { seconds: round((Date.now() - t0) / 1000, 1), rpcSeconds: round((rpcDone.at - t0) / 1000, 1), brokerCpuMs: Math.round(offline.last.brokerCpuMs - base.brokerCpuMs) }
      log(`setup: ${N} users with ${K} contacts each in ${setup.seconds as number} s (contacts.add done at ${setup.rpcSeconds as number} s)`)
      if (o.coldCache) await sleep(AUDIENCE_CACHE_MS + 500)
    }

    // ---- connect storm -----------------------------------------------------------------------
    const before = await sample(b, workers)
    log(`connect storm: ${N} devices from ${o.workers} processes, ${o.inflight} CONNECTs pending per process at most`)
    const stormed = await Promise.all(workers.map((w) => w.ask({ cmd: 'storm', inflight: o.inflight, snapshot: o.snapshot !== 0 }, 160_000)))
    const connected = await sample(b, workers)
    const online = presence ? await settle(b, workers, before, 'online', N, K, 60_000) : { last: connected, complete: true }
    await sleep(500) // events on their way to the devices
    const receivedOn = await countsOf(workers)
    const end = online.last.at > connected.at ? online.last : connected
    const connects = sum(stormed, 'connected')
    const stormStart = Math.min(...stormed.map((s) => Number(s.startedAt)))
    const stormEnd = Math.max(...stormed.map((s) => Number(s.doneAt)))
    const onlineChanges = end.online - before.online
    const onlineEvents = end.events - before.events
    const connectStorm = {
      connected: connects,
      failed: sum(stormed, 'failed'),
      ...(sum(stormed, 'failed') ? { firstError: stormed.map((s) => s.firstError).find(Boolean) } : {}),
      wallMs: stormEnd - stormStart,
      connectsPerSecond: Math.round((connects * 1000) / (stormEnd - stormStart)),
      latencyMs: stormed.map((s) => s.latencyMs),
      presenceDoneMs: presence ? end.at - stormStart : undefined,
      presenceComplete: online.complete,
      brokerCpuMs: Math.round(end.brokerCpuMs - before.brokerCpuMs),
      brokerCpuMsDuringConnects: Math.round(connected.brokerCpuMs - before.brokerCpuMs),
      brokerRssMiB: { before: before.memory.rss, after: end.memory.rss },
      presenceChanges: onlineChanges,
      presenceEvents: onlineEvents,
      eventsReceived: receivedOn.online,
      loadGenCpuMs: Math.round(end.loadCpuMs - before.loadCpuMs),
      perConnect: {
        brokerCpuMs: round((end.brokerCpuMs - before.brokerCpuMs) / connects, 3),
        presenceEvents: round(onlineEvents / connects, 2),
        eventsReceived: round(receivedOn.online / connects, 2),
        loadGenCpuMs: round((end.loadCpuMs - before.loadCpuMs) / connects, 3)
      },
      eventsPerContact: round(onlineEvents / Math.max(1, onlineChanges * K), 3)
    }
    log(
      `connect storm: ${connects} connected (${connectStorm.failed} failed) in ${connectStorm.wallMs} ms (${connectStorm.connectsPerSecond}/s), ` +
        (presence ? `presence done at ${connectStorm.presenceDoneMs} ms; ${onlineChanges} online, ${onlineEvents} events sent (${connectStorm.perConnect.presenceEvents}/connect, ${connectStorm.eventsPerContact}/contact), ${receivedOn.online} received; ` : '') +
        `broker CPU ${connectStorm.brokerCpuMs} ms = ${connectStorm.perConnect.brokerCpuMs} ms/connect, RSS ${before.memory.rss} -> ${end.memory.rss} MiB; load generator CPU ${connectStorm.loadGenCpuMs} ms`
    )

    // ---- disconnect storm ------------------------------------------------------------------
    let disconnectStorm: Record<string, unknown> | undefined
    if (presence) {
      const base = await sample(b, workers)
      const left = await Promise.all(workers.map((w) => w.ask({ cmd: 'leave' }, 90_000)))
      const leaveStart = Math.min(...left.map((s) => Number(s.startedAt)))
      const leaveEnd = Math.max(...left.map((s) => Number(s.doneAt)))
      const offline = await settle(b, workers, base, 'offline', connects, K, 60_000)
      const receivedOff = await countsOf(workers)
      const changes = offline.last.offline - base.offline
      const events = offline.last.events - base.events
      disconnectStorm = {
        failed: sum(left, 'failed'),
        wallMs: leaveEnd - leaveStart,
        offlineDoneMs: offline.last.at - leaveStart,
        presenceComplete: offline.complete,
        brokerCpuMs: Math.round(offline.last.brokerCpuMs - base.brokerCpuMs),
        presenceChanges: changes,
        presenceEvents: events,
        eventsReceived: receivedOff.offline,
        loadGenCpuMs: Math.round(offline.last.loadCpuMs - base.loadCpuMs),
        perDisconnect: {
          brokerCpuMs: round((offline.last.brokerCpuMs - base.brokerCpuMs) / connects, 3),
          presenceEvents: round(events / connects, 2)
        },
        eventsPerContact: round(events / Math.max(1, changes * K), 3)
      }
      log(
        `disconnect storm: ${connects} left in ${leaveEnd - leaveStart} ms, offline done at ${disconnectStorm.offlineDoneMs as number} ms (grace ${o.graceMs} ms); ` +
          `${changes} offline, ${events} events sent (${round(events / connects, 2)}/user), ${receivedOff.offline} received (nobody is left online to receive them); ` +
          `broker CPU ${disconnectStorm.brokerCpuMs as number} ms`
      )
    }
    const peak = memoryMiB(b.pid).peak
    log(`broker peak RSS ${peak} MiB; whole scenario ${round((Date.now() - startedAt) / 1000, 1)} s`)
    return {
      devices: N,
      contacts: K,
      workers: o.workers,
      inflight: o.inflight,
      presence,
      snapshotOnConnect: o.snapshot !== 0,
      audienceCache: o.coldCache ? 'cold' : 'warm',
      graceMs: o.graceMs,
      batchMs: BATCH_MS,
      setup,
      connectStorm,
      ...(disconnectStorm ? { disconnectStorm } : {}),
      brokerPeakRssMiB: peak,
      totalSeconds: round((Date.now() - startedAt) / 1000, 1)
    }
  } finally {
    const cleanup = Date.now()
    await Promise.all(workers.map((w) => w.stop()))
    if (broker) {
      const b = broker
      await b.stop(20_000)
    }
    rmSync(dir, { recursive: true, force: true })
    log(`stopped in ${Date.now() - cleanup} ms`)
  }
}

interface StormResult {
  wallMs: number
  presenceComplete: boolean
  brokerCpuMs: number
  presenceChanges: number
  presenceEvents: number
  eventsReceived: number
  failed: number
  connectsPerSecond?: number
  latencyMs?: Array<{ p50: number; p99: number }>
  presenceDoneMs?: number
  offlineDoneMs?: number
  brokerRssMiB?: { before: number; after: number }
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as {
    devices: number
    contacts: number
    workers: number
    inflight: number
    presence: boolean
    audienceCache: string
    graceMs: number
    batchMs: number
    connectStorm: StormResult
    disconnectStorm?: StormResult
    brokerPeakRssMiB: number
  }
  const fmt = (n: number) => n.toLocaleString('en-US')
  const p = (s: StormResult, n: number) => round(s.brokerCpuMs / n, 3)
  const c = r.connectStorm
  const d = r.disconnectStorm
  const p50 = c.latencyMs?.length ? Math.max(...c.latencyMs.map((l) => l.p50)) : NaN
  const p99 = c.latencyMs?.length ? Math.max(...c.latencyMs.map((l) => l.p99)) : NaN
  return [
    `${fmt(r.devices)} devices, each the only device of a user with ${r.contacts} mutual contacts, connect within seconds (${r.workers} generator processes, ${r.inflight} CONNECTs pending each; the audience cache ${r.audienceCache}), then all disconnect; presence ${r.presence ? `on (batched every ${r.batchMs} ms, offline after a ${r.graceMs} ms grace)` : 'off'}. Broker: \`parley start\` with protocol, groups, messages and presence on the embedded stores.`,
    '',
    '| Storm | Wall time ms | Connects/s | Connect p50 / p99 ms (slowest process) | Presence done ms | Broker CPU ms per device | Presence changes | Events published | Events received | Failed | Broker RSS MiB |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    `| connect | ${fmt(c.wallMs)} | ${c.connectsPerSecond !== undefined ? fmt(c.connectsPerSecond) : '—'} | ${p50} / ${p99} | ${c.presenceDoneMs !== undefined ? fmt(c.presenceDoneMs) : '—'}${c.presenceComplete ? '' : ' (incomplete)'} | ${p(c, r.devices)} | ${fmt(c.presenceChanges)} | ${fmt(c.presenceEvents)} | ${fmt(c.eventsReceived)} | ${c.failed} | ${c.brokerRssMiB ? `${c.brokerRssMiB.before} → ${c.brokerRssMiB.after}` : '—'} (peak ${r.brokerPeakRssMiB}) |`,
    ...(d
      ? [`| disconnect | ${fmt(d.wallMs)} | — | — | ${d.offlineDoneMs !== undefined ? fmt(d.offlineDoneMs) : '—'}${d.presenceComplete ? '' : ' (incomplete)'} | ${p(d, r.devices)} | ${fmt(d.presenceChanges)} | ${fmt(d.presenceEvents)} | ${fmt(d.eventsReceived)} | ${d.failed} | — |`]
      : []),
    '',
    `Presence work stays proportional to the contacts: one change per device and ${r.contacts} events per change (one per contact). Events received are fewer than published: a contact that is not yet connected when its friend comes online gets nothing (presence events are QoS 0, not queued), and after the disconnect storm nobody is left to receive. What limits this number: the broker's one event loop (each connect also runs the chat plugins' connect work), on 2 cores shared with the generator processes.`
  ].join('\n')
}
