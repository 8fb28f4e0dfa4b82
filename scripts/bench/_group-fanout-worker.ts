// Load-generator thread of the group-fanout scenario (started by group-fanout.ts). A thread holds
// the devices of its share of the group's members (one device per user, client id <user>:phone, persistent session, subscribed to u/<user>/# at QoS 1), counts the
// group messages they receive into a SharedArrayBuffer every thread reads, and sends from the
// members chosen as senders, keeping the group-wide window of messages not yet delivered to every
// online member. The module body runs only in such a thread; the main thread imports the types.
import { isMainThread, parentPort, workerData } from 'node:worker_threads'
import { RawClient } from './_mqtt-raw.js'
import { serveThread } from './_relay-shared.js'

// ---- shared between the main thread and the generator threads ---------------------------------

/** A member's device (_mqtt-raw.ts): persistent session by default, as the scenario is about those. */
export const openDevice = (host: string, port: number, clientId: string, clean = false): Promise<RawClient> =>
  RawClient.connect({ host, port, clientId, clean, keepalive: 600, timeoutMs: 60_000 })

/** Member i of run r: user id and the client id of its one device. */
export const userOf = (run: string, i: number): string => `gf${run}u${i}`
export const deviceOf = (run: string, i: number): string => `${userOf(run, i)}:phone`

// Layout of the shared Int32Array.
export const RUNNING = 0
export const MEASURING = 1
/** Sends claimed (published or about to be) in the current phase. */
export const SENT = 2
/** PUBACKs of those sends: stored. */
export const ACKED = 3
/** Group messages of the benchmark received by any member (deliveries). */
export const DELIVERED = 4
/** Members online now: deliveries expected per message. */
export const ONLINE = 5
/** At most this many sends in the phase (0: no limit). */
export const LIMIT = 6
export const SHARED_INTS = 8

export interface WorkerInit {
  groupFanout: true
  worker: number
  host: string
  port: number
  run: string
  group: string
  /** Member indices whose device lives in this thread. */
  members: number[]
  shared: SharedArrayBuffer
  payloadBytes: number
  sampleCap: number
}

export type Command =
  | { cmd: 'connect' }
  | { cmd: 'run'; window: number; senders: number[]; tag: string }
  | { cmd: 'mark' }
  | { cmd: 'stop' }
  | { cmd: 'pull'; members: number[] }
  | { cmd: 'disconnect'; members: number[] }
  | { cmd: 'catchup'; members: number[]; tag: string; expect: number; afterSeq: number; listenMs: number }
  | { cmd: 'close' }

export interface CatchUp {
  checked: number
  /** Members whose catch-up returned every message of the offline phase, in seq order without gaps. */
  complete: number
  /** Group messages of the offline phase that arrived live after the reconnect (queued copies). */
  queuedCopies: number
  /** How the messages came: pull (messages.pull pages), or sync after pull answered reset. */
  methods: Record<string, number>
  rpcs: number
  failures: string[]
}

// ---- the generator thread ---------------------------------------------------------------------

const BODY_KEY = Buffer.from('"body":"')

/** The send time at the start of a benchmark message's body, or undefined (system notices have no body). */
export function stampOf(payload: Buffer): number | undefined {
  const i = payload.indexOf(BODY_KEY)
  if (i < 0) return undefined
  const start = i + BODY_KEY.length
  const stamp = Number.parseFloat(payload.toString('latin1', start, Math.min(payload.length, start + 24)))
  return Number.isFinite(stamp) ? stamp : undefined
}

function thread(init: WorkerInit): void {
  const port = parentPort!
  const shared = new Int32Array(init.shared)
  const now = (): number => performance.timeOrigin + performance.now()
  const devices = new Map<number, RawClient>()
  const samples = new Float64Array(init.sampleCap)
  let sampleCount = 0
  let elu0 = performance.eventLoopUtilization()
  let errors = 0
  let lastError = ''
  let running: Extract<Command, { cmd: 'run' }> | undefined
  let ticker: NodeJS.Timeout | undefined
  let turn = 0
  const groupTopic = Buffer.from(`s/g/${init.group}`)
  const pad = 'x'.repeat(Math.max(0, init.payloadBytes - 60))

  const onMessage = (topic: string, payload: Buffer): void => {
    if (!topic.endsWith('/m')) return // events, receipts: not group messages
    const stamp = stampOf(payload)
    if (stamp === undefined) return
    Atomics.add(shared, DELIVERED, 1)
    if (Atomics.load(shared, MEASURING) && sampleCount < samples.length) samples[sampleCount++] = now() - stamp
    pump()
  }

  const open = async (i: number): Promise<RawClient> => {
    const c = await openDevice(init.host, init.port, deviceOf(init.run, i))
    c.onMessage = onMessage
    c.onPuback = () => {
      Atomics.add(shared, ACKED, 1)
      pump()
    }
    await c.subscribe(`u/${userOf(init.run, i)}/#`, 1, 60_000)
    return c
  }

  /** Sends while the group-wide window allows: messages sent but not yet delivered to every online member. */
  function pump(): void {
    const r = running
    if (!r || !r.senders.length || !Atomics.load(shared, RUNNING)) return
    const online = Math.max(1, Atomics.load(shared, ONLINE))
    const limit = Atomics.load(shared, LIMIT)
    for (let guard = 0; guard < 1000; guard++) {
      const outstanding = Atomics.load(shared, SENT) - Math.floor(Atomics.load(shared, DELIVERED) / online)
      if (outstanding >= r.window) return
      const n = Atomics.add(shared, SENT, 1)
      if (limit && n >= limit) {
        Atomics.sub(shared, SENT, 1)
        return
      }
      const sender = devices.get(r.senders[turn++ % r.senders.length]!)
      if (!sender || sender.closed) {
        Atomics.sub(shared, SENT, 1)
        errors++
        lastError = 'a sender is not connected'
        return
      }
      // The send time leads the body; cmid is unique per run, phase and send.
      sender.publish(groupTopic, Buffer.from(`{"cmid":"${r.tag}-${n}","body":"${now()} ${pad}"}`), 1)
    }
  }

  /** Runs `task` over `items`, `width` at a time; failures are counted, the first few kept. */
  const pool = async <T>(items: readonly T[], width: number, task: (item: T) => Promise<void>): Promise<string[]> => {
    const failures: string[] = []
    let next = 0
    await Promise.all(
      Array.from({ length: Math.min(width, items.length) }, async () => {
        while (next < items.length) {
          const item = items[next++]!
          try {
            await task(item)
          } catch (err) {
            if (failures.length < 5) failures.push((err as Error).message)
            else failures.push('')
          }
        }
      })
    )
    return failures
  }

  /** Pull pages (ack loop) of a device's group conversation; falls back to messages.sync after a reset. */
  const catchUp = async (c: RawClient, tag: string, expect: number, afterSeq: number, stats: CatchUp): Promise<void> => {
    const seqs: number[] = []
    const take = (messages: Array<{ seq: number; cmid: string }>) => {
      for (const m of messages) if (m.cmid.startsWith(`${tag}-`)) seqs.push(m.seq)
    }
    let method = 'pull'
    let ack: string | undefined
    for (let page = 0; page < 200; page++) {
      stats.rpcs++
      const r = await c.call<{ changes: Array<{ conversation: { id: string }; messages: Array<{ seq: number; cmid: string }>; reset?: boolean }>; cursor: string; hasMore: boolean; fresh?: boolean }>(
        'messages.pull',
        ack === undefined ? {} : { ack }
      )
      if (r.fresh) throw new Error(`${c.clientId}: its first pull (no cursor was kept before it went offline)`)
      const mine = r.changes.find((x) => x.conversation.id === init.group)
      if (mine?.reset) method = 'sync (pull answered reset: more than messages.maxDeltaMessages behind)'
      else if (mine) take(mine.messages)
      ack = r.cursor
      if (!r.hasMore) break
    }
    stats.rpcs++
    await c.call('messages.pull', { ack }) // commits the last page
    if (method !== 'pull') {
      seqs.length = 0
      let after = afterSeq
      for (let page = 0; page < 1000; page++) {
        stats.rpcs++
        const r = await c.call<{ messages: Array<{ seq: number; cmid: string }>; hasMore: boolean }>('messages.sync', { conversation: { kind: 'group', id: init.group }, afterSeq: after })
        take(r.messages)
        after = r.messages.at(-1)?.seq ?? after
        if (!r.hasMore) break
      }
    }
    stats.methods[method] = (stats.methods[method] ?? 0) + 1
    seqs.sort((a, b) => a - b)
    const contiguous = seqs.every((s, k) => k === 0 || s === seqs[k - 1]! + 1)
    if (seqs.length === expect && contiguous) stats.complete++
    else if (stats.failures.length < 5) stats.failures.push(`${c.clientId}: ${seqs.length} of ${expect} messages${contiguous ? '' : ', with gaps'}`)
  }

  async function handle(c: Command): Promise<Record<string, unknown>> {
    switch (c.cmd) {
      case 'connect': {
        const failures = await pool(init.members, 50, async (i) => {
          devices.set(i, await open(i))
        })
        if (failures.length) throw new Error(`${failures.length} devices did not connect: ${failures[0]}`)
        return { connected: devices.size }
      }
      case 'run':
        running = c
        ticker = setInterval(pump, 1) // windows freed by deliveries in the other threads
        pump()
        return {}
      case 'mark':
        elu0 = performance.eventLoopUtilization()
        return {}
      case 'stop': {
        const elu = performance.eventLoopUtilization(elu0).utilization
        clearInterval(ticker)
        running = undefined
        const latencies = samples.slice(0, sampleCount)
        sampleCount = 0
        const e = errors
        errors = 0
        return { elu, latencies, errors: e, lastError }
      }
      case 'pull': {
        // A device's first pull starts its server-kept cursors at the present (docs/protocol.md).
        const failures = await pool(
          c.members.filter((i) => devices.has(i)),
          10,
          async (i) => void (await devices.get(i)!.call('messages.pull', {}))
        )
        return { failures }
      }
      case 'disconnect': {
        const mine = c.members.filter((i) => devices.has(i))
        await Promise.all(mine.map((i) => devices.get(i)!.close(5000)))
        for (const i of mine) devices.delete(i)
        return { disconnected: mine.length }
      }
      case 'catchup': {
        const stats: CatchUp = { checked: 0, complete: 0, queuedCopies: 0, methods: {}, rpcs: 0, failures: [] }
        const failures = await pool(c.members, 10, async (i) => {
          stats.checked++
          const client = await openDevice(init.host, init.port, deviceOf(init.run, i))
          // Anything of the offline phase that arrives live now came from a queue: nothing is being sent.
          client.onMessage = (topic, payload) => {
            if (topic.endsWith('/m') && payload.includes(`"cmid":"${c.tag}-`)) stats.queuedCopies++
          }
          await client.subscribe(`u/${userOf(init.run, i)}/#`, 1, 60_000)
          await new Promise((r) => setTimeout(r, c.listenMs))
          await catchUp(client, c.tag, c.expect, c.afterSeq, stats)
          devices.set(i, client)
        })
        stats.failures.push(...failures.filter(Boolean))
        return { stats }
      }
      case 'close':
        clearInterval(ticker)
        await Promise.all([...devices.values()].map((d) => d.close(5000).catch(() => undefined)))
        devices.clear()
        return {}
    }
  }

  serveThread<Command>(port, handle)
}

if (!isMainThread && (workerData as Partial<WorkerInit> | undefined)?.groupFanout) thread(workerData as WorkerInit)
