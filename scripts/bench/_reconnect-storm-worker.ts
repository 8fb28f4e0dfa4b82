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
// The MQTT client is a minimal one over node:net (like _mqtt-raw.ts, plus a source address, so the
// storm's connections spread over several 127.x addresses): mqtt.js would cost the generator several
// times the CPU on the 2 cores the broker also runs on.
import { connect, type Socket } from 'node:net'

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
const RPC_TIMEOUT_MS = 60_000

// ---- a minimal MQTT 3.1.1 client -------------------------------------------------------------

const CONNACK = 2
const PUBLISH = 3
const PUBACK = 4
const SUBACK = 9

function remainingLength(n: number): Buffer {
  const bytes: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    bytes.push(b)
  } while (n > 0)
  return Buffer.from(bytes)
}

function str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8')
  const out = Buffer.allocUnsafe(2 + b.length)
  out.writeUInt16BE(b.length, 0)
  b.copy(out, 2)
  return out
}

const packet = (header: number, ...parts: Buffer[]): Buffer => {
  const body = Buffer.concat(parts)
  return Buffer.concat([Buffer.from([header]), remainingLength(body.length), body])
}

interface Waiter {
  resolve: (code: number) => void
  reject: (err: Error) => void
  timer: NodeJS.Timeout
}

class Conn {
  onMessage: (topic: string, payload: Buffer) => void = () => undefined
  private pending: Buffer | undefined
  private nextId = 1
  private readonly waiters = new Map<string, Waiter>()
  private closed = false

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.data(chunk))
    const fail = (err: Error) => {
      this.closed = true
      for (const w of this.waiters.values()) {
        clearTimeout(w.timer)
        w.reject(err)
      }
      this.waiters.clear()
    }
    socket.on('error', fail)
    socket.on('close', () => fail(new Error('connection closed')))
  }

  static async open(port: number, localAddress: string, clientId: string, timeoutMs = 60_000): Promise<Conn> {
    const socket = connect({ host: '127.0.0.1', port, localAddress })
    const c = new Conn(socket)
    const keepalive = Buffer.alloc(2)
    keepalive.writeUInt16BE(300, 0)
    const connack = c.wait('connack', timeoutMs)
    socket.write(packet(0x10, str('MQTT'), Buffer.from([4, 0x02]), keepalive, str(clientId))) // clean session, no credentials
    const code = await connack
    if (code !== 0) {
      socket.destroy()
      throw new Error(`CONNACK ${code} for ${clientId}`)
    }
    return c
  }

  async subscribe(topic: string, timeoutMs = RPC_TIMEOUT_MS): Promise<void> {
    const id = this.id()
    const suback = this.wait(`suback:${id}`, timeoutMs)
    this.socket.write(packet(0x82, Buffer.from([id >> 8, id & 0xff]), str(topic), Buffer.from([1])))
    if ((await suback) === 0x80) throw new Error(`SUBACK 0x80 for ${topic}`)
  }

  /** QoS 1 publish; resolves at its PUBACK. */
  async publish(topic: string, payload: string, timeoutMs = RPC_TIMEOUT_MS): Promise<void> {
    const id = this.id()
    const puback = this.wait(`puback:${id}`, timeoutMs)
    this.socket.write(packet(0x32, str(topic), Buffer.from([id >> 8, id & 0xff]), Buffer.from(payload, 'utf8')))
    await puback
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.socket.destroy()
        resolve()
      }, 5000)
      this.socket.once('close', () => {
        clearTimeout(timer)
        resolve()
      })
      this.socket.end(Buffer.from([0xe0, 0]))
    })
  }

  destroy(): void {
    this.closed = true
    this.socket.destroy()
  }

  private id(): number {
    const id = this.nextId
    this.nextId = id === 65535 ? 1 : id + 1
    return id
  }

  private wait(key: string, timeoutMs: number): Promise<number> {
    if (this.closed) return Promise.reject(new Error('connection closed'))
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(key)
        reject(new Error(`no ${key.split(':')[0]} within ${timeoutMs} ms`))
      }, timeoutMs)
      this.waiters.set(key, { resolve, reject, timer })
    })
  }

  private settle(key: string, code: number): void {
    const w = this.waiters.get(key)
    if (!w) return
    this.waiters.delete(key)
    clearTimeout(w.timer)
    w.resolve(code)
  }

  private data(chunk: Buffer): void {
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk
    let off = 0
    for (;;) {
      if (buf.length - off < 2) break
      let len = 0
      let mult = 1
      let i = off + 1
      let complete = false
      for (let n = 0; n < 4 && i < buf.length; n++) {
        const b = buf[i++]!
        len += (b & 0x7f) * mult
        mult *= 128
        if (!(b & 0x80)) {
          complete = true
          break
        }
      }
      if (!complete || buf.length - i < len) break
      this.handle(buf[off]!, buf.subarray(i, i + len))
      off = i + len
    }
    this.pending = off < buf.length ? Buffer.from(buf.subarray(off)) : undefined
  }

  private handle(header: number, body: Buffer): void {
    switch (header >> 4) {
      case PUBLISH: {
        const qos = (header >> 1) & 3
        const tlen = body.readUInt16BE(0)
        const topic = body.toString('utf8', 2, 2 + tlen)
        let o = 2 + tlen
        if (qos > 0) {
          const id = body.readUInt16BE(o)
          o += 2
          this.socket.write(Buffer.from([0x40, 2, id >> 8, id & 0xff]))
        }
        this.onMessage(topic, body.subarray(o))
        break
      }
      case PUBACK:
        this.settle(`puback:${body.readUInt16BE(0)}`, 0)
        break
      case CONNACK:
        this.settle('connack', body[1]!)
        break
      case SUBACK:
        this.settle(`suback:${body.readUInt16BE(0)}`, body[2]!)
        break
      default:
        break
    }
  }
}

// ---- a device: RPCs over s/rpc and u/<user>/d/<device>/res ----------------------------------

interface RpcAnswer {
  id?: string
  ok?: boolean
  result?: unknown
  error?: { code?: string; message?: string }
}

class Device {
  private readonly calls = new Map<string, { resolve: (a: RpcAnswer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>()
  private n = 0
  /** Envelopes received live on u/<user>/m, receipts on u/<user>/r, and anything else. */
  live = { messages: 0, receipts: 0, other: 0 }

  constructor(
    readonly user: string,
    readonly device: string,
    readonly conn: Conn
  ) {
    const res = `u/${user}/d/${device}/res`
    conn.onMessage = (topic, payload) => {
      if (topic === res) {
        const answer = JSON.parse(payload.toString()) as RpcAnswer
        const call = answer.id ? this.calls.get(answer.id) : undefined
        if (!call) return
        this.calls.delete(answer.id!)
        clearTimeout(call.timer)
        call.resolve(answer)
      } else if (topic === `u/${user}/m`) this.live.messages++
      else if (topic === `u/${user}/r`) this.live.receipts++
      else this.live.other++
    }
  }

  static async connect(port: number, localAddress: string, user: string, device: string): Promise<Device> {
    return new Device(user, device, await Conn.open(port, localAddress, `${user}:${device}`))
  }

  /** One RPC; resolves with its result, rejects on an error answer or no answer in time. */
  async rpc<T>(method: string, params: Record<string, unknown>): Promise<T> {
    const id = `r${++this.n}`
    const answered = new Promise<RpcAnswer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.calls.delete(id)
        reject(new Error(`${method}: no answer within ${RPC_TIMEOUT_MS} ms`))
      }, RPC_TIMEOUT_MS)
      this.calls.set(id, { resolve, reject, timer })
    })
    try {
      await this.conn.publish('s/rpc', JSON.stringify({ id, method, params }))
    } catch (err) {
      clearTimeout(this.calls.get(id)?.timer)
      this.calls.delete(id)
      throw err
    }
    const answer = await answered
    if (!answer.ok) throw new Error(`${method} refused: ${answer.error?.code ?? '?'} ${answer.error?.message ?? ''}`)
    return answer.result as T
  }
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

const send = (msg: Record<string, unknown>): void => {
  process.send!(msg)
}

/** Source address of the n-th connection of a phase: 8 per process and phase, in 127.<base+worker>.x. */
const source = (base: number, n: number) => `127.0.${base + worker}.${1 + (n % 8)}`

/** Runs `task` over `items`, `concurrency` at a time; returns the number of failures and the first error. */
async function pool<T>(items: readonly T[], concurrency: number, task: (item: T, n: number) => Promise<void>): Promise<{ failed: number; firstError?: string }> {
  let next = 0
  let failed = 0
  let firstError: string | undefined
  const deadline = Date.now() + PHASE_TIMEOUT_MS
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, async () => {
      while (next < items.length && Date.now() < deadline) {
        const n = next++
        try {
          await task(items[n]!, n)
        } catch (err) {
          failed++
          firstError ??= (err as Error).message
        }
      }
    })
  )
  failed += items.length - Math.min(next, items.length)
  return { failed, ...(firstError ? { firstError } : {}) }
}

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
  const phone = await Device.connect(port, source(20, n), user, 'phone')
  let keep = false
  try {
    // No SUBSCRIBE: answers on .../d/<device>/res reach the live connection without one (protocol.md),
    // and this client hands every PUBLISH over; messages on u/<user>/m are not delivered without one.
    const first = await phone.rpc<PullAnswer>('messages.pull', {})
    if (!first.fresh) throw new Error(`${user}: the first pull was not fresh`)
    keep = !web
  } finally {
    if (keep) setupPhones.set(i, phone)
    else await phone.conn.close()
  }
}

async function sendAll(i: number, n: number, web: boolean): Promise<void> {
  const user = userName(i)
  const conn = web ? await Conn.open(port, source(30, n), `${user}:web`) : setupPhones.get(i)?.conn
  if (!conn) throw new Error(`${user}: no setup connection`)
  setupPhones.delete(i)
  try {
    const body = `hello from ${user}, `.padEnd(80, 'x')
    await Promise.all(
      Array.from({ length: messages }, (_, k) => conn.publish(`s/dm/${userName((i + 1 + (k % partners)) % devices)}`, JSON.stringify({ cmid: `m${k}`, body: `${body}${k}` })))
    )
  } finally {
    await conn.close()
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
    phone = await Device.connect(port, source(40, n), user, 'phone')
  } finally {
    release()
  }
  connectLatencies.push(performance.now() - c0)
  const connectedAt = Date.now()
  phones.push(phone)
  await phone.conn.subscribe(`u/${user}/#`)
  const got = new Map<string, { seqs: number[]; ids: Set<string>; fromPeer: boolean; lastSeq: number }>()
  let params: Record<string, unknown> = limit ? { limit } : {}
  let pulls = 0
  let synced = 0
  let problem: string | undefined
  for (;;) {
    if (++pulls > 1000) throw new Error(`${user}: more than 1000 pulls`)
    const t0 = performance.now()
    const page = await phone.rpc<PullAnswer>('messages.pull', params)
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
      [...got].filter(([, e]) => e.fromPeer).map(([peer, e]) => phone.conn.publish('s/delivered', JSON.stringify({ conversation: { kind: 'dm', id: peer }, seq: e.lastSeq })))
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

process.on('disconnect', () => process.exit(0))
process.on('message', (message: Command) => {
  const reply = (data: Record<string, unknown>) => send({ reply: message.cmd, ...data })
  const run = async (): Promise<void> => {
    switch (message.cmd) {
      case 'init':
        ;({ port, indices, devices, partners, messages, worker } = message)
        return reply({})
      case 'sync':
        return reply(await pool(indices, message.concurrency, (i, n) => syncOnce(i, n, message.web)))
      case 'send': {
        const done = await pool(indices, message.concurrency, (i, n) => sendAll(i, n, message.web))
        await Promise.all([...setupPhones.values()].map((p) => p.conn.close()))
        setupPhones.clear()
        return reply(done)
      }
      case 'storm':
        return reply(await storm(message.inflight, message.limit, message.delivered))
      case 'leave': {
        const startedAt = Date.now()
        await Promise.all(phones.splice(0).map((p) => p.conn.close()))
        return reply({ startedAt, doneAt: Date.now() })
      }
      case 'exit':
        for (const p of [...phones, ...setupPhones.values()]) p.conn.destroy()
        process.exit(0)
    }
  }
  run().catch((err: unknown) => send({ reply: message.cmd, error: (err as Error).stack ?? String(err) }))
})
