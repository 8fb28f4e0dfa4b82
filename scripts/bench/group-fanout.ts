// Group fan-out through the chat plugins (issue 10, items 1 and 4): one message to a 1,000-member
// group with every member online, and the target "the 1,000-member fan-out with no memory growth
// per offline member".
//   npm run bench group-fanout -- [--members 1000] [--offline 900] [--senders 2] [--window 2]
//                                 [--seconds 8] [--warmup-ms 1000] [--messages 500] [--sample 20]
//                                 [--workers 2] [--payload 100] [--gc 1]
//
// One broker: `parley start` with the chat plugins, as relay-p2p's parley-chat target (anonymous
// devices, embedded SQLite stores, no auth-jwt, no limits), listeners on 127.0.0.1. Setup: member 0
// creates the group with the others through the groups.create RPC (docs/protocol.md), then every
// member's one device (<user>:phone, clean=false, subscribed to u/<user>/# at QoS 1) connects from
// the generator threads of this process (_group-fanout-worker.ts).
//   phase 1, all online   --senders members publish s/g/<group> at QoS 1 (PUBACK = stored), keeping
//                         at most --window messages not yet delivered to every member, for
//                         --seconds after --warmup-ms: messages stored/s, deliveries/s (messages x
//                         members received), latency from the send time in the body to its arrival,
//                         broker and generator CPU.
//   phase 2, offline      --messages messages with everyone online, then --offline members
//                         disconnect (their persistent sessions stay: where a broker that queued
//                         per session would keep one copy per offline member) and --messages more
//                         are sent. The broker's V8 heap (its /metrics, after a full GC forced
//                         through the inspector, --gc 1) and RSS are sampled before and after each
//                         batch; the difference between the two batches' growth, per offline member
//                         and message, is what an offline member costs. Then --sample offline
//                         members reconnect and catch up with messages.pull (their cursors were
//                         started before they left): every message of the offline batch must come
//                         back, in seq order, and none may arrive as a queued copy.
import { loadavg } from 'node:os'
import WebSocket from 'ws'
import { cpuMs, intOptions, memoryMiB, round, scrapeMetrics, settlesWithin, sleep, waitUntil } from './_common.js'
import { ACKED, DELIVERED, LIMIT, MEASURING, ONLINE, RUNNING, SENT, SHARED_INTS, openDevice, userOf, type CatchUp, type Command, type WorkerInit } from './_group-fanout-worker.js'
import type { RawClient } from './_mqtt-raw.js'
import { CHAT_PLUGINS, GenThread, HOST, fmt, freePort, latencySummary, limitedBy, machineBusyMs, startTarget, type Target } from './_relay.js'

export const description = 'group fan-out through the chat plugins: 1,000-member group all online (msg/s, deliveries/s, latency), then memory growth per offline member and catch-up'
export const order = 2

const log = (line: string) => process.stderr.write(`[group-fanout] ${line}\n`)

// ---- measuring helpers ------------------------------------------------------------------------

/** A full garbage collection in the broker, through its inspector (HeapProfiler.collectGarbage). */
async function collectGarbage(inspectPort: number): Promise<void> {
  const targets = (await (await fetch(`http://${HOST}:${inspectPort}/json/list`, { signal: AbortSignal.timeout(5000) })).json()) as Array<{ webSocketDebuggerUrl?: string }>
  const url = targets[0]?.webSocketDebuggerUrl
  if (!url) throw new Error('the broker has no inspector target')
  const ws = new WebSocket(url)
  try {
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve())
      ws.once('error', reject)
    })
    // Twice: objects freed by the first collection's weak callbacks go in the second.
    for (let id = 1; id <= 2; id++) {
      const done = new Promise<void>((resolve, reject) => {
        const onMessage = (data: WebSocket.RawData) => {
          const msg = JSON.parse((Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(new Uint8Array(data))).toString()) as { id?: number; error?: { message: string } }
          if (msg.id !== id) return
          ws.off('message', onMessage)
          if (msg.error) reject(new Error(msg.error.message))
          else resolve()
        }
        ws.on('message', onMessage)
      })
      ws.send(JSON.stringify({ id, method: 'HeapProfiler.collectGarbage' }))
      if (!(await settlesWithin(done, 15_000))) throw new Error('HeapProfiler.collectGarbage: no answer in 15 s')
      await done
    }
  } finally {
    ws.close()
  }
}

interface Memory {
  rssMiB: number
  heapUsedMiB: number
  /** Buffers and other memory outside the V8 heap that JavaScript objects hold. */
  externalMiB: number
}

const MiB = 2 ** 20
/** Broker counters Aedes remembers per client (patches/aedes+1.2.0.patch, lib/client.js dedupe). */
const DEDUPE_WINDOW = 64

// ---- the scenario -----------------------------------------------------------------------------

interface Phase1 {
  seconds: number
  storedPerSecond: number
  deliveredPerSecond: number
  /** Deliveries per stored message (members reached): should equal the member count. */
  deliveriesPerMessage: number
  latencyMs: { p50: number; p99: number; p999: number; max: number; samples: number }
  brokerCores: number
  generatorCores: number
  otherCores: number
  workerElu: number[]
  limitedBy: string
  errors: number
  /** Deliveries that had not arrived 10 s after the senders stopped (QoS 0 lost, or a stall). */
  undelivered: number
}

interface Batch {
  online: number
  messages: number
  seconds: number
  storedPerSecond: number
  deliveredPerSecond: number
  undelivered: number
  brokerCores: number
  /** Broker CPU time per message sent in the batch (storing it and fanning it out). */
  brokerCpuMsPerMessage: number
  before: Memory
  after: Memory
  heapGrowthMiB: number
  rssGrowthMiB: number
  /** parley_mqtt_messages_sent_total by QoS during the batch, and parley_offline_queue_dropped_total. */
  sentQos0: number
  sentQos1: number
  offlineQueueDropped: number
}

interface Result {
  members: number
  offline: number
  senders: number
  window: number
  workers: number
  payloadBytes: number
  gcForced: boolean
  /** Messages sent between phase 1 and the all-online batch so that every client has passed Aedes' dedupe window. */
  dedupeFill: number
  setup: { groupCreateMs: number; connectMs: number; rssIdleMiB: number; rssConnectedMiB: number }
  phase1: Phase1
  phase2: {
    online: Batch
    offline: Batch
    /** (offline-batch heap growth − online-batch heap growth) / (offline members × messages). */
    heapBytesPerOfflineMemberPerMessage: number
    /** The offline batch's heap growth alone, all of it charged to the offline members. */
    heapBytesPerOfflineMemberPerMessageAlone: number
    rssBytesPerOfflineMemberPerMessage: number
    rssBytesPerOfflineMemberPerMessageAlone: number
    /** What 1 byte per offline member per message amounts to here, in MiB (scale of the result). */
    mibPerByte: number
    catchUp: CatchUp
  }
  brokerPeakRssMiB: number
  totalSeconds: number
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const o = intOptions(args, { members: 1000, offline: 900, senders: 2, window: 2, seconds: 8, warmupMs: 1000, messages: 500, sample: 20, workers: 2, payload: 100, gc: 1 })
  if (o.members < 2 || o.members > 1024) throw new Error('--members: 2 to 1024 (groups.maxMembers)')
  if (o.senders < 1 || o.senders + o.offline > o.members) throw new Error('--senders >= 1 and --senders + --offline <= --members (senders stay online)')
  if (o.window < 1 || o.workers < 1 || o.seconds < 1 || o.messages < 1 || o.payload < 60) throw new Error('--window, --workers, --seconds, --messages >= 1, --payload >= 60')
  const startedAt = Date.now()
  const run = Math.random().toString(36).slice(2, 8)
  let gcForced = o.gc !== 0

  // The broker as relay-p2p's parley-chat target, plus an inspector on 127.0.0.1 to force GCs.
  const inspectPort = gcForced ? await freePort() : 0
  // startTarget waits for its /readyz.
  const b: Target = await startTarget('parley-chat', gcForced ? { nodeArgs: [`--inspect=${HOST}:${inspectPort}`] } : {})
  const port = b.port
  const ops = b.opsPort!
  const threads: Array<GenThread<Command>> = []
  let admin: RawClient | undefined
  try {
    if (gcForced) {
      // The memory samples need the inspector; without it (say, its port was taken meanwhile), none is forced.
      const err = await collectGarbage(inspectPort).then(() => undefined, (e: unknown) => e as Error)
      if (err) log(`no forced GC: the broker's inspector does not answer (${err.message})`)
      gcForced = !err
    }
    log(`broker pid ${b.pid}, port ${port}${gcForced ? `, inspector ${inspectPort}` : ''}`)
    const metric = async (name: string) => (await scrapeMetrics(ops)).get(name) ?? 0
    const memory = async (): Promise<Memory> => {
      if (gcForced) await collectGarbage(inspectPort)
      const m = await scrapeMetrics(ops)
      return {
        rssMiB: memoryMiB(b.pid).rss,
        heapUsedMiB: round((m.get('nodejs_heap_size_used_bytes') ?? NaN) / MiB, 2),
        externalMiB: round((m.get('nodejs_external_memory_bytes') ?? NaN) / MiB, 2)
      }
    }
    const rssIdleMiB = memoryMiB(b.pid).rss

    // ---- setup: the group, then every member's device ----------------------------------------
    let t0 = performance.now()
    admin = await openDevice(HOST, port, `${userOf(run, 0)}:admin`, true)
    // Answers reach the device without a subscription (docs/protocol.md): this one receives nothing else.
    const others = Array.from({ length: o.members - 1 }, (_, i) => userOf(run, i + 1))
    const group = (await admin.call<{ id: string }>('groups.create', { name: `bench ${run}`, members: others }, 60_000)).id
    const groupCreateMs = Math.round(performance.now() - t0)
    log(`group ${group}: ${o.members} members created in ${groupCreateMs} ms`)

    const shared = new Int32Array(new SharedArrayBuffer(SHARED_INTS * 4))
    const threadOf = (i: number) => i % o.workers
    for (let w = 0; w < o.workers; w++) {
      threads.push(
        new GenThread<Command>(
          {
            groupFanout: true,
            worker: w,
            host: HOST,
            port,
            run,
            group,
            members: Array.from({ length: o.members }, (_, i) => i).filter((i) => threadOf(i) === w),
            shared: shared.buffer,
            payloadBytes: o.payload,
            sampleCap: 4_000_000
          } satisfies WorkerInit,
          '_group-fanout-worker.ts'
        )
      )
    }
    await Promise.all(threads.map((t) => settlesWithin(t.started, 30_000)))
    t0 = performance.now()
    await Promise.all(threads.map((t) => t.ask({ cmd: 'connect' }, 120_000)))
    const connectMs = Math.round(performance.now() - t0)
    const rssConnectedMiB = memoryMiB(b.pid).rss
    log(`${o.members} devices connected (clean=false) in ${connectMs} ms; broker RSS ${rssIdleMiB} -> ${rssConnectedMiB} MiB`)

    const senders = Array.from({ length: o.senders }, (_, i) => i)
    const sendersIn = (w: number) => senders.filter((i) => threadOf(i) === w)
    const byThread = (members: number[]) => threads.map((_, w) => members.filter((i) => threadOf(i) === w))
    const startPhase = async (online: number, limit: number, tag: string) => {
      Atomics.store(shared, SENT, 0)
      Atomics.store(shared, ACKED, 0)
      Atomics.store(shared, DELIVERED, 0)
      Atomics.store(shared, ONLINE, online)
      Atomics.store(shared, LIMIT, limit)
      Atomics.store(shared, RUNNING, 1)
      await Promise.all(threads.map((t, w) => t.ask({ cmd: 'run', window: o.window, senders: sendersIn(w), tag }, 10_000)))
    }
    /** Waits (bounded) until every send is stored and delivered to every online member; returns the deliveries missing. */
    const drain = async (timeoutMs: number) => {
      const complete = () => Atomics.load(shared, ACKED) >= Atomics.load(shared, SENT) && Atomics.load(shared, DELIVERED) >= Atomics.load(shared, SENT) * Atomics.load(shared, ONLINE)
      await waitUntil(complete, timeoutMs, 20)
      return Math.max(0, Atomics.load(shared, SENT) * Atomics.load(shared, ONLINE) - Atomics.load(shared, DELIVERED))
    }
    const stopAll = async () => {
      Atomics.store(shared, RUNNING, 0)
      Atomics.store(shared, MEASURING, 0)
      return Promise.all(threads.map((t) => t.ask({ cmd: 'stop' }, 30_000)))
    }

    // ---- phase 1: all online -------------------------------------------------------------------
    log(`phase 1: ${o.senders} senders, window ${o.window}, ${o.warmupMs} ms warm-up + ${o.seconds} s`)
    await startPhase(o.members, 0, `${run}-p1`)
    await sleep(o.warmupMs)
    const before = { t: performance.now(), acked: Atomics.load(shared, ACKED), delivered: Atomics.load(shared, DELIVERED), gen: process.cpuUsage(), broker: cpuMs(b.pid), machine: machineBusyMs() }
    Atomics.store(shared, MEASURING, 1)
    await Promise.all(threads.map((t) => t.ask({ cmd: 'mark' }, 10_000)))
    await sleep(o.seconds * 1000)
    Atomics.store(shared, MEASURING, 0)
    const after = { t: performance.now(), acked: Atomics.load(shared, ACKED), delivered: Atomics.load(shared, DELIVERED), gen: process.cpuUsage(before.gen), broker: cpuMs(b.pid), machine: machineBusyMs() }
    const stops = await stopAll()
    const undelivered1 = await drain(10_000)
    const phase1Sent = Atomics.load(shared, SENT)
    const seconds = (after.t - before.t) / 1000
    const brokerCores = round((after.broker - before.broker) / 1000 / seconds, 2)
    const generatorCores = round((after.gen.user + after.gen.system) / 1e6 / seconds, 2)
    const cores = { brokerCores, generatorCores, otherCores: round(Math.max(0, (after.machine - before.machine) / 1000 / seconds - brokerCores - generatorCores), 2), workerElu: stops.map((x) => round(x.elu as number, 2)) }
    const stored = after.acked - before.acked
    const phase1: Phase1 = {
      seconds: round(seconds, 2),
      storedPerSecond: Math.round(stored / seconds),
      deliveredPerSecond: Math.round((after.delivered - before.delivered) / seconds),
      deliveriesPerMessage: Math.round(Atomics.load(shared, DELIVERED) / Math.max(1, Atomics.load(shared, SENT))),
      latencyMs: latencySummary(stops),
      ...cores,
      limitedBy: limitedBy(cores, 'parley-chat'),
      errors: stops.reduce((n, x) => n + (x.errors as number), 0),
      undelivered: undelivered1
    }
    log(
      `phase 1: ${fmt(phase1.storedPerSecond)} msg/s stored, ${fmt(phase1.deliveredPerSecond)} deliveries/s, p50/p99 ${phase1.latencyMs.p50}/${phase1.latencyMs.p99} ms, ` +
        `broker ${brokerCores} cores, generator ${generatorCores} (ELU ${cores.workerElu.join(', ')}), other ${cores.otherCores}; ${undelivered1} deliveries missing`
    )

    // ---- phase 2: the same batch with everyone online, then with most members offline -----------
    /** Sends `count` messages through the window and waits until they are stored and delivered; returns the deliveries missing. */
    const sendCount = async (online: number, count: number, tag: string) => {
      await startPhase(online, count, tag)
      const done = await waitUntil(() => Atomics.load(shared, SENT) >= count, 120_000, 20)
      const undelivered = await drain(30_000)
      await stopAll()
      if (!done) throw new Error(`phase 2 (${tag}): only ${Atomics.load(shared, SENT)} of ${count} sent in 120 s`)
      return undelivered
    }
    // Aedes (as patched by Parley) remembers the last 64 broker counters delivered to each client
    // to drop duplicates (a 512-byte ring per client, allocated at its first delivery). Fill it
    // before the baseline anyway, so the baseline counts no per-client state still being made.
    const fill = Math.max(0, DEDUPE_WINDOW + 44 - phase1Sent)
    if (fill) {
      log(`phase 2: ${fill} messages first, so that every client has had more than ${DEDUPE_WINDOW} deliveries (Aedes' dedupe window)`)
      await sendCount(o.members, fill, `${run}-p2fill`)
    }
    const batch = async (online: number, tag: string): Promise<Batch> => {
      const m0 = await scrapeMetrics(ops)
      const mem0 = await memory()
      const t = performance.now()
      const cpu0 = cpuMs(b.pid)
      const undelivered = await sendCount(online, o.messages, tag)
      const s = (performance.now() - t) / 1000
      const cpu = cpuMs(b.pid) - cpu0
      await sleep(500) // what the sends left to do (activity flush, push checks) ends
      const mem1 = await memory()
      const m1 = await scrapeMetrics(ops)
      const delta = (name: string) => (m1.get(name) ?? 0) - (m0.get(name) ?? 0)
      return {
        online,
        messages: o.messages,
        seconds: round(s, 2),
        storedPerSecond: Math.round(Atomics.load(shared, ACKED) / s),
        deliveredPerSecond: Math.round(Atomics.load(shared, DELIVERED) / s),
        undelivered,
        brokerCores: round(cpu / 1000 / s, 2),
        brokerCpuMsPerMessage: round(cpu / o.messages, 2),
        before: mem0,
        after: mem1,
        heapGrowthMiB: round(mem1.heapUsedMiB - mem0.heapUsedMiB, 2),
        rssGrowthMiB: round(mem1.rssMiB - mem0.rssMiB, 1),
        sentQos0: delta('parley_mqtt_messages_sent_total{qos="0"}'),
        sentQos1: delta('parley_mqtt_messages_sent_total{qos="1"}'),
        offlineQueueDropped: delta('parley_offline_queue_dropped_total')
      }
    }
    log(`phase 2: ${fmt(o.messages)} messages with all ${o.members} members online`)
    const onlineBatch = await batch(o.members, `${run}-p2on`)
    log(`  ${onlineBatch.seconds} s (${fmt(onlineBatch.storedPerSecond)} msg/s); heap ${onlineBatch.before.heapUsedMiB} -> ${onlineBatch.after.heapUsedMiB} MiB, RSS ${onlineBatch.before.rssMiB} -> ${onlineBatch.after.rssMiB} MiB`)

    // The offline members: the last --offline of the group; the sample that catches up, spread over them.
    const offline = Array.from({ length: o.offline }, (_, k) => o.members - o.offline + k)
    const step = Math.max(1, Math.floor(o.offline / Math.max(1, o.sample)))
    const sample = offline.filter((_, k) => k % step === 0).slice(0, o.sample)
    // Their cursors start at the present, as after an app's first messages.pull.
    const pulled = await Promise.all(threads.map((t, w) => t.ask({ cmd: 'pull', members: byThread(sample)[w]! }, 60_000)))
    const pullFailures = pulled.flatMap((p) => p.failures as string[])
    if (pullFailures.length) throw new Error(`first messages.pull failed: ${pullFailures[0]}`)
    const afterSeq = (await admin.call<{ lastSeq: number }>('messages.sync', { conversation: { kind: 'group', id: group }, afterSeq: 0, limit: 1 })).lastSeq
    const presenceOffline0 = await metric('parley_presence_changes_total{to="offline"}')
    await Promise.all(threads.map((t, w) => t.ask({ cmd: 'disconnect', members: byThread(offline)[w]! }, 60_000)))
    // Let presence take them offline (its grace period) so that work is not inside the measured batch.
    // (In a group of at most presence.maxGroupSize, 256, members see each other's presence: its events go out one batch later.)
    await waitUntil(async () => (await metric('parley_presence_changes_total{to="offline"}')) - presenceOffline0 >= o.offline, 10_000, 200)
    await sleep(750)
    const connected = await metric('parley_connected_clients')
    log(`${o.offline} members disconnected (persistent sessions kept); ${connected} clients connected`)

    log(`phase 2: ${fmt(o.messages)} messages with ${o.members - o.offline} members online, ${o.offline} offline`)
    const offlineBatch = await batch(o.members - o.offline, `${run}-p2off`)
    log(`  ${offlineBatch.seconds} s (${fmt(offlineBatch.storedPerSecond)} msg/s); heap ${offlineBatch.before.heapUsedMiB} -> ${offlineBatch.after.heapUsedMiB} MiB, RSS ${offlineBatch.before.rssMiB} -> ${offlineBatch.after.rssMiB} MiB`)
    const perOffline = (growthMiB: number) => round((growthMiB * MiB) / (o.offline * o.messages), 2)

    // ---- catch-up: a sample of the offline members reconnects and pulls --------------------------
    const caught = await Promise.all(
      threads.map((t, w) => t.ask({ cmd: 'catchup', members: byThread(sample)[w]!, tag: `${run}-p2off`, expect: o.messages, afterSeq, listenMs: 500 }, 120_000))
    )
    const catchUp = caught
      .map((c) => c.stats as CatchUp)
      .reduce<CatchUp>(
        (acc, s) => {
          for (const [k, v] of Object.entries(s.methods)) acc.methods[k] = (acc.methods[k] ?? 0) + v
          return { ...acc, checked: acc.checked + s.checked, complete: acc.complete + s.complete, queuedCopies: acc.queuedCopies + s.queuedCopies, rpcs: acc.rpcs + s.rpcs, failures: [...acc.failures, ...s.failures].slice(0, 5) }
        },
        { checked: 0, complete: 0, queuedCopies: 0, methods: {}, rpcs: 0, failures: [] }
      )
    log(`catch-up: ${catchUp.complete} of ${catchUp.checked} members got all ${o.messages} (${Object.keys(catchUp.methods).join(', ')}; ${catchUp.rpcs} requests), ${catchUp.queuedCopies} queued copies${catchUp.failures.length ? `; ${catchUp.failures.join('; ')}` : ''}`)

    const result: Result = {
      members: o.members,
      offline: o.offline,
      senders: o.senders,
      window: o.window,
      workers: o.workers,
      payloadBytes: o.payload,
      gcForced,
      dedupeFill: fill,
      setup: { groupCreateMs, connectMs, rssIdleMiB, rssConnectedMiB },
      phase1,
      phase2: {
        online: onlineBatch,
        offline: offlineBatch,
        heapBytesPerOfflineMemberPerMessage: perOffline(offlineBatch.heapGrowthMiB - onlineBatch.heapGrowthMiB),
        heapBytesPerOfflineMemberPerMessageAlone: perOffline(offlineBatch.heapGrowthMiB),
        rssBytesPerOfflineMemberPerMessage: perOffline(offlineBatch.rssGrowthMiB - onlineBatch.rssGrowthMiB),
        rssBytesPerOfflineMemberPerMessageAlone: perOffline(offlineBatch.rssGrowthMiB),
        mibPerByte: round((o.offline * o.messages) / MiB, 2),
        catchUp
      },
      brokerPeakRssMiB: memoryMiB(b.pid).peak,
      totalSeconds: 0
    }
    result.totalSeconds = round((Date.now() - startedAt) / 1000, 1)
    log(`heap per offline member per message: ${result.phase2.heapBytesPerOfflineMemberPerMessage} bytes; whole scenario ${result.totalSeconds} s`)
    return { ...result, loadAverage: loadavg().map((x) => round(x, 2)) }
  } finally {
    await admin?.close(5000).catch(() => undefined)
    await Promise.all(threads.map((t) => t.ask({ cmd: 'close' }, 30_000).catch(() => undefined)))
    await Promise.all(threads.map((t) => t.terminate()))
    await b.stop()
  }
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as unknown as Result
  const p1 = r.phase1
  const { online: on, offline: off, catchUp: cu } = r.phase2
  const signed = (x: number) => `${x >= 0 ? '+' : ''}${x}`
  const row = (label: string, x: Batch) =>
    `| ${label} | ${fmt(x.online)} | ${fmt(x.storedPerSecond)} | ${fmt(x.deliveredPerSecond)} | ${x.brokerCpuMsPerMessage} | ${x.before.heapUsedMiB} → ${x.after.heapUsedMiB} (${signed(x.heapGrowthMiB)}) | ${x.before.rssMiB} → ${x.after.rssMiB} (${signed(x.rssGrowthMiB)}) | ${fmt(x.sentQos0)} / ${fmt(x.sentQos1)} | ${fmt(x.offlineQueueDropped)} |`
  return [
    `One \`parley start\` with the chat plugins (${CHAT_PLUGINS.join(', ')}; anonymous devices, embedded SQLite stores), a group of ${fmt(r.members)} members made with one \`groups.create\`, each member's one device connected with a persistent session (clean=false) and subscribed to \`u/<user>/#\` at QoS 1, from ${r.workers} generator threads of the benchmark process (a minimal MQTT client). ${r.senders} members send \`s/g/<group>\` at QoS 1 (PUBACK = stored), ${r.payloadBytes}-byte messages with the send time in the body, at most ${r.window} messages not yet delivered to every online member; the broker fans each out at QoS 0 to every member's \`u/<member>/m\`, the sender's included.`,
    '',
    `**All ${fmt(r.members)} members online** (${p1.seconds} s measured after a warm-up):`,
    '',
    '| Messages stored/s | Deliveries/s | Deliveries per message | p50 / p99 / p99.9 ms | Broker cores | Generator cores (thread ELU) | Other cores | Limited by |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    `| ${fmt(p1.storedPerSecond)} | ${fmt(p1.deliveredPerSecond)} | ${fmt(p1.deliveriesPerMessage)} | ${p1.latencyMs.p50} / ${p1.latencyMs.p99} / ${p1.latencyMs.p999} | ${p1.brokerCores} | ${p1.generatorCores} (${p1.workerElu.join(', ')}) | ${p1.otherCores} | ${p1.limitedBy}${p1.errors ? `; ${p1.errors} errors` : ''}${p1.undelivered ? `; ${fmt(p1.undelivered)} deliveries missing` : ''} |`,
    '',
    `**Offline members**: ${fmt(on.messages)} messages with every member online, then ${fmt(r.offline)} members disconnect (their persistent sessions stay) and ${fmt(off.messages)} more are sent. Broker memory before and after each batch, ${r.gcForced ? "each sample right after a full GC forced through the broker's inspector" : 'with no forced GC (--gc 0, or the inspector did not answer)'}; heap is \`nodejs_heap_size_used_bytes\` of its /metrics, PUBLISHes written and offline-queue drops are its \`parley_mqtt_messages_sent_total\` and \`parley_offline_queue_dropped_total\`.`,
    '',
    '| Batch | Members online | Messages/s | Deliveries/s | Broker CPU ms per message | Heap MiB before → after | RSS MiB before → after | PUBLISHes written QoS 0 / QoS 1 | Offline-queue drops |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    row('all online', on),
    row(`${fmt(r.offline)} offline`, off),
    '',
    '| Growth per offline member per message | Heap | RSS |',
    '| --- | --- | --- |',
    `| (offline batch − all-online batch) / (${fmt(r.offline)} × ${fmt(off.messages)}) | **${r.phase2.heapBytesPerOfflineMemberPerMessage} bytes** | ${r.phase2.rssBytesPerOfflineMemberPerMessage} bytes |`,
    `| the offline batch alone, all of it charged to the offline members | ${r.phase2.heapBytesPerOfflineMemberPerMessageAlone} bytes | ${r.phase2.rssBytesPerOfflineMemberPerMessageAlone} bytes |`,
    '',
    '| Catch-up: offline members reconnected | Got every message of the offline batch, in seq order | Queued copies received | Requests |',
    '| --- | --- | --- | --- |',
    `| ${cu.checked} | ${cu.complete} of ${cu.checked} (${Object.keys(cu.methods).join(', ')}) | ${cu.queuedCopies} | ${cu.rpcs} |`,
    '',
    `One byte per offline member per message is ${r.phase2.mibPerByte} MiB here. Aedes' in-memory offline queue costs about 140 bytes per queued packet, measured the same way (a plain topic with 1,000 persistent QoS 1 subscribers, 900 of them offline), so a broker queueing group messages per offline session would show that much; what is left here is the noise of the samples (the heap after a GC; RSS also moves with the allocator returning pages, SQLite's cache and socket buffers). The offline members reconnect with their persistent sessions and catch up with \`messages.pull\`, their cursors started before they left. Offline members still cost CPU: each message is one publish per member, online or not (docs/groups.md). The broker fans out on its one event loop: for each message it stores once, takes the group's member list (cached, groups.memberListCacheMs), looks up push registrations of all recipients in one query, and makes one Aedes publish, so one socket write, per member; the generator, reading every delivery, shares the same 2 cores. Latency counts from the send to each member's copy: the last of ${fmt(r.members)} members gets it ${fmt(r.members - 1)} socket writes after the first, behind the other messages of the window.${r.dedupeFill ? ` Before the all-online batch, ${fmt(r.dedupeFill)} more messages were sent so that` : ' Before the all-online batch'} every client had more than ${DEDUPE_WINDOW} deliveries: Aedes' duplicate check (as patched by Parley) keeps the last ${DEDUPE_WINDOW} broker counters per connected client in a 512-byte ring, per connection and bounded, not per message.`
  ].join('\n')
}
