// Load generator process of the reconnect-storm scenario (forked by reconnect-storm.ts, commands over
// IPC). It holds the phones of a share of the users (user i talks one-to-one with i+1 .. i+K):
//   sync    each phone connects (clean session, no subscription), makes its first messages.pull
//           (the server starts the device's cursor at the present) and stays connected (or, with
//           `web`, disconnects);
//   send    once every phone has its cursor, each user sends M messages to its K partners in turn
//           (QoS 1, every PUBACK awaited) from its phone, which then disconnects, or (`web`) from a
//           second device <user>:web that connects for it. No phone is subscribed meanwhile, so
//           nothing is delivered live: every message waits in the store, as for an offline phone;
//   storm   every phone reconnects (at most `inflight` CONNECTs pending in this process), subscribes,
//           pulls until the server says there is nothing more, acking each page's cursor (the last
//           ack commits the end), then sends s/delivered for each conversation that brought messages
//           from the partner (a clean session's delivery report), and stays connected;
//   leave   the phones disconnect.
// The MQTT client is _mqtt-raw.ts, with source addresses so the storm's connections spread over
// several 127.x addresses: mqtt.js would cost the generator several times the CPU on the 2 cores the
// broker also runs on.
import { RawClient } from './_mqtt-raw.js'
import { pool as poolWithin, serveCommands } from './_common.js'

export type Command =
  | { cmd: 'init'; port: number; indices: number[]; devices: number; partners: number; messages: number; worker: number }
  | { cmd: 'sync'; concurrency: number; web: boolean }
  | { cmd: 'send'; concurrency: number; web: boolean }
  | { cmd: 'storm'; inflight: number; limit: number; delivered: boolean }
  | { cmd: 'leave' }
  | { cmd: 'exit' }

export const userName = (i: number): string => `rs${i}`

/** Messages user i sends to the partner i+d (1 <= d <= K): message k goes to partner i+1+(k mod K). */
export const sentTo = (d: number, k: number, m: number): number => (d > k || d > m ? 0 : Math.floor((m - d) / k) + 1)

/** Messages each conversation of user i holds after the send phase, by partner index (both directions). */
export function expectedFor(i: number, n: number, k: number, m: number): Map<number, number> {
  const out = new Map<number, number>()
  for (let d = 1; d <= k; d++) {
    const c = sentTo(d, k, m)
    if (!c) continue
    for (const peer of [(i + d) % n, (((i - d) % n) + n) % n]) out.set(peer, (out.get(peer) ?? 0) + c)
  }
  return out
}

const PHASE_TIMEOUT_MS = 150_000
/** A phase's tasks, `concurrency` at a time; what is not started within PHASE_TIMEOUT_MS counts as failed. */
const pool = <T>(items: readonly T[], concurrency: number, task: (item: T, n: number) => Promise<void>) => poolWithin(items, concurrency, PHASE_TIMEOUT_MS, task)
const RPC_TIMEOUT_MS = 60_000

// ---- a device: its connection (_mqtt-raw.ts) and what arrived live on it ----------------------

interface Device {
  conn: RawClient
  /** Envelopes received live on u/<user>/m, receipts on u/<user>/r, and anything else (RPC answers are the client's). */
  live: { messages: number; receipts: number; other: number }
}

async function connectDevice(localAddress: string, user: string, device: string): Promise<Device> {
  const conn = await RawClient.connect({ host: '127.0.0.1', port, localAddress, clientId: `${user}:${device}`, timeoutMs: 60_000 })
  const live = { messages: 0, receipts: 0, other: 0 }
  conn.onMessage = (topic) => {
    if (topic === `u/${user}/m`) live.messages++
    else if (topic === `u/${user}/r`) live.receipts++
    else live.other++
  }
  return { conn, live }
}

// ---- state of this process -------------------------------------------------------------------

let port = 0
let indices: number[] = []
let devices = 0
let partners = 0
let messages = 0
let worker = 0
const phones: Device[] = []
/** Setup connections of the phones, by user index, between `sync` and `send`. */
const setupPhones = new Map<number, Device>()

/** Source address of the n-th connection of a phase: 8 per process and phase, in 127.<base+worker>.x. */
const source = (base: number, n: number) => `127.0.${base + worker}.${1 + (n % 8)}`

interface Envelope {
  id: string
  seq: number
  from: { user: string; device: string }
  conversation: { kind: string; id: string }
}
interface PullChange {
  conversation: { kind: string; id: string }
  lastSeq: number
  messages: Envelope[]
  reset?: boolean
}
interface PullAnswer {
  fresh?: boolean
  changes: PullChange[]
  cursor: string
  hasMore: boolean
}

async function syncOnce(i: number, n: number, web: boolean): Promise<void> {
  const user = userName(i)
  const phone = await connectDevice(source(20, n), user, 'phone')
  let keep = false
  try {
    // No SUBSCRIBE: answers on .../d/<device>/res reach the live connection without one (protocol.md),
    // and this client hands every PUBLISH over; messages on u/<user>/m are not delivered without one.
    const first = await phone.conn.call<PullAnswer>('messages.pull', {}, RPC_TIMEOUT_MS)
    if (!first.fresh) throw new Error(`${user}: the first pull was not fresh`)
    keep = !web
  } finally {
    if (keep) setupPhones.set(i, phone)
    else await phone.conn.close(5000)
  }
}

async function sendAll(i: number, n: number, web: boolean): Promise<void> {
  const user = userName(i)
  const conn = web ? await RawClient.connect({ host: '127.0.0.1', port, localAddress: source(30, n), clientId: `${user}:web`, timeoutMs: 60_000 }) : setupPhones.get(i)?.conn
  if (!conn) throw new Error(`${user}: no setup connection`)
  setupPhones.delete(i)
  try {
    const body = `hello from ${user}, `.padEnd(80, 'x')
    await Promise.all(
      Array.from({ length: messages }, (_, k) => conn.publishAcked(`s/dm/${userName((i + 1 + (k % partners)) % devices)}`, JSON.stringify({ cmid: `m${k}`, body: `${body}${k}` }), RPC_TIMEOUT_MS))
    )
  } finally {
    await conn.close(5000)
  }
}

/** What one phone got in the storm, checked against what was sent to its conversations. */
interface Check {
  synced: number
  pulls: number
  ok: boolean
  problem?: string
}

async function catchUp(
  i: number,
  n: number,
  limit: number,
  delivered: boolean,
  connectSlot: () => Promise<() => void>,
  latencies: number[],
  connectLatencies: number[]
): Promise<Check & { connectedAt: number }> {
  const user = userName(i)
  const release = await connectSlot()
  let phone: Device
  const c0 = performance.now()
  try {
    phone = await connectDevice(source(40, n), user, 'phone')
  } finally {
    release()
  }
  connectLatencies.push(performance.now() - c0)
  const connectedAt = Date.now()
  phones.push(phone)
  await phone.conn.subscribe(`u/${user}/#`, 1, RPC_TIMEOUT_MS)
  const got = new Map<string, { seqs: number[]; ids: Set<string>; fromPeer: boolean; lastSeq: number }>()
  let params: Record<string, unknown> = limit ? { limit } : {}
  let pulls = 0
  let synced = 0
  let problem: string | undefined
  for (;;) {
    if (++pulls > 1000) throw new Error(`${user}: more than 1000 pulls`)
    const t0 = performance.now()
    const page = await phone.conn.call<PullAnswer>('messages.pull', params, RPC_TIMEOUT_MS)
    latencies.push(performance.now() - t0)
    if (page.fresh) throw new Error(`${user}: pull answered fresh (the device's cursor was lost)`)
    for (const c of page.changes) {
      if (c.reset) problem ??= `reset for ${c.conversation.id}`
      const entry = got.get(c.conversation.id) ?? { seqs: [], ids: new Set<string>(), fromPeer: false, lastSeq: 0 }
      for (const m of c.messages) {
        entry.seqs.push(m.seq)
        entry.ids.add(m.id)
        if (m.from.user !== user) entry.fromPeer = true
        if (m.from.user !== user && m.from.user !== c.conversation.id) problem ??= `message from ${m.from.user} in the conversation with ${c.conversation.id}`
      }
      entry.lastSeq = Math.max(entry.lastSeq, c.lastSeq)
      got.set(c.conversation.id, entry)
      synced += c.messages.length
    }
    // Store the page (here: the map above), then ack its cursor: the answer is the next page. The
    // ack of the page that said hasMore: false commits the end; its answer is the (empty) rest.
    const more = page.hasMore
    const empty = page.changes.length === 0
    if (empty && !more && pulls > 1) break
    params = { ...(limit ? { limit } : {}), ack: page.cursor }
    if (empty && !more) break // the first pull found nothing: nothing to ack
  }
  if (delivered) {
    // A clean session reports delivery per conversation once it has every message up to lastSeq.
    await Promise.all(
      [...got].filter(([, e]) => e.fromPeer).map(([peer, e]) => phone.conn.publishAcked('s/delivered', JSON.stringify({ conversation: { kind: 'dm', id: peer }, seq: e.lastSeq }), RPC_TIMEOUT_MS))
    )
  }
  // Exactly the messages sent to this user's conversations: seqs 1..count, each once.
  const expected = expectedFor(i, devices, partners, messages)
  for (const [peerIndex, count] of expected) {
    const e = got.get(userName(peerIndex))
    const seqs = (e?.seqs ?? []).sort((a, b) => a - b)
    const exact = seqs.length === count && seqs.every((s, j) => s === j + 1) && e!.ids.size === count
    if (!exact) problem ??= `conversation with ${userName(peerIndex)}: expected seqs 1..${count}, got [${seqs.slice(0, 20).join(',')}${seqs.length > 20 ? ',...' : ''}]`
  }
  for (const peer of got.keys()) if (!expected.has(Number(peer.slice(2)))) problem ??= `unexpected conversation with ${peer}`
  return { synced, pulls, ok: !problem, ...(problem ? { problem } : {}), connectedAt }
}

async function storm(inflight: number, limit: number, delivered: boolean): Promise<Record<string, unknown>> {
  const order = [...indices]
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[order[i], order[j]] = [order[j]!, order[i]!]
  }
  // At most `inflight` CONNECTs waiting for their CONNACK; what a phone does after it is not bounded.
  let free = inflight
  const queue: Array<() => void> = []
  const connectSlot = async (): Promise<() => void> => {
    if (free > 0) free--
    else await new Promise<void>((resolve) => queue.push(resolve))
    return () => {
      const next = queue.shift()
      if (next) next()
      else free++
    }
  }
  const latencies: number[] = []
  const connectLatencies: number[] = []
  const startedAt = Date.now()
  let lastConnectedAt = startedAt
  let synced = 0
  let pulls = 0
  let caughtUp = 0
  let wrong = 0
  let firstProblem: string | undefined
  const deadline = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), PHASE_TIMEOUT_MS).unref())
  const results = await Promise.all(
    order.map(async (i, n) => {
      const r = await Promise.race([catchUp(i, n, limit, delivered, connectSlot, latencies, connectLatencies), deadline]).catch((err: unknown) => err as Error)
      if (r === 'timeout') return `${userName(i)}: not caught up within ${PHASE_TIMEOUT_MS} ms`
      if (r instanceof Error) return r.message
      lastConnectedAt = Math.max(lastConnectedAt, r.connectedAt)
      synced += r.synced
      pulls += r.pulls
      caughtUp++
      if (!r.ok) {
        wrong++
        firstProblem ??= r.problem
      }
      return undefined
    })
  )
  const doneAt = Date.now()
  const errors = results.filter(Boolean)
  const live = phones.reduce((acc, p) => ({ messages: acc.messages + p.live.messages, receipts: acc.receipts + p.live.receipts, other: acc.other + p.live.other }), { messages: 0, receipts: 0, other: 0 })
  return {
    startedAt,
    lastConnectedAt,
    doneAt,
    caughtUp,
    failed: errors.length,
    ...(errors.length ? { firstError: errors[0] } : {}),
    wrong,
    ...(firstProblem ? { firstProblem } : {}),
    synced,
    pulls,
    live,
    latencies,
    connectLatencies
  }
}

serveCommands<Command>(async (message) => {
  switch (message.cmd) {
    case 'init':
      ;({ port, indices, devices, partners, messages, worker } = message)
      return {}
    case 'sync':
      return pool(indices, message.concurrency, (i, n) => syncOnce(i, n, message.web))
    case 'send': {
      const done = await pool(indices, message.concurrency, (i, n) => sendAll(i, n, message.web))
      await Promise.all([...setupPhones.values()].map((p) => p.conn.close(5000)))
      setupPhones.clear()
      return done
    }
    case 'storm':
      return storm(message.inflight, message.limit, message.delivered)
    case 'leave': {
      const startedAt = Date.now()
      await Promise.all(phones.splice(0).map((p) => p.conn.close(5000)))
      return { startedAt, doneAt: Date.now() }
    }
    case 'exit':
      for (const p of [...phones, ...setupPhones.values()]) p.conn.destroy()
      process.exit(0)
  }
})
