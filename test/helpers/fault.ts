// Building blocks of the fault tests (test/fault/): broker processes on fixed ports that can be
// killed and started again with the same configuration, chat devices that follow the client rules
// of docs/delivery.md (test/helpers/ordered-reader.ts) and fail over along a list of nodes, a
// ledger of what was sent and acknowledged, and the tally the tests report and assert on.
//
// FerretDB, the tests' MongoDB, answers every query except one by _id with a scan of the whole
// collection, and deadlocks a database at 100 concurrent updates (the nodes' default `mongo.maxPoolSize` of 25 keeps three below it): the tests keep
// scans and concurrent operations down, and run one at a time (exclusive). FAULT_VERBOSE=1 prints
// progress, node metrics and node warnings on stderr.
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import mqtt, { type MqttClient } from 'mqtt'
import type { ConversationRef, MessageEnvelope } from '../../schemas/protocol.js'
import { freePort } from '../../scripts/services.js'
import { eventually, startBroker, within, type BrokerProcess } from './broker-process.js'
import { OrderedReader, type SyncPage } from './ordered-reader.js'

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The chat plugins, anonymous clients (client id `<user>:<device>`), no token needed. */
export const CHAT: NodeJS.ProcessEnv = { PARLEY_PLUGINS: 'protocol,groups,messages', PARLEY_MQTT__ALLOW_ANONYMOUS: 'true' }

/** Empties one database of a Redis (the cluster's sessions and queues of an earlier run). */
export async function flushRedis(url: string): Promise<void> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await within(redis.connect().then(() => redis.flushdb()), 10_000, `emptying ${url}`)
  } finally {
    redis.disconnect()
  }
}

export interface ReadyAnswer {
  status: number
  body: { status?: string; checks?: Record<string, { ok: boolean; error?: string }> }
}

/** GET /readyz of a node's operations listener; status 0 when it does not answer at all. */
export async function readyz(opsPort: number): Promise<ReadyAnswer> {
  try {
    const res = await fetch(`http://127.0.0.1:${opsPort}/readyz`, { signal: AbortSignal.timeout(4000) })
    return { status: res.status, body: (await res.json()) as ReadyAnswer['body'] }
  } catch {
    return { status: 0, body: {} }
  }
}

/** Nodes started here and still running: killed if this process is told to stop (a runner timeout), so none outlives the test. */
const running = new Set<FaultNode>()
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    for (const n of running) n.process?.child.kill('SIGKILL')
    process.exit(signal === 'SIGTERM' ? 143 : 130)
  })
}

const LOCK = join(tmpdir(), 'parley-fault-tests.lock')

/**
 * Runs `fn` while no other fault test runs on this machine. The test runner runs two files at a
 * time; these tests load both cores and the shared FerretDB, and each would measure the other.
 * The lock is a directory holding the holder's PID; a holder that died leaves it stale and it is taken over.
 */
export async function exclusive<T>(fn: () => Promise<T>, waitMs = 300_000): Promise<T> {
  const deadline = Date.now() + waitMs
  for (;;) {
    try {
      mkdirSync(LOCK)
      writeFileSync(join(LOCK, 'pid'), String(process.pid))
      break
    } catch {
      let holder = 0
      try {
        holder = Number(readFileSync(join(LOCK, 'pid'), 'utf8'))
      } catch {
        // Being created or removed right now, or left without its PID by a crash in between.
        const since = (() => {
          try {
            return Date.now() - statSync(LOCK).mtimeMs
          } catch {
            return 0
          }
        })()
        if (since > 10_000) rmSync(LOCK, { recursive: true, force: true })
      }
      let alive = holder > 0
      if (alive) {
        try {
          process.kill(holder, 0)
        } catch {
          alive = false
        }
      }
      if (holder > 0 && !alive) rmSync(LOCK, { recursive: true, force: true })
      if (Date.now() > deadline) throw new Error(`another fault test (pid ${holder}) held ${LOCK} for ${waitMs} ms`)
      await sleep(500)
    }
  }
  const release = () => rmSync(LOCK, { recursive: true, force: true })
  process.once('exit', release)
  try {
    return await fn()
  } finally {
    process.off('exit', release)
    release()
  }
}

/** Progress lines on stderr when FAULT_VERBOSE is set (development of these tests). */
export function progress(line: string): void {
  if (process.env.FAULT_VERBOSE) process.stderr.write(`[fault ${new Date().toISOString().slice(11, 19)}] ${line}\n`)
}

/** A broker process on fixed ports and a fixed data directory: it can be killed and started again with the same configuration. */
export class FaultNode {
  process: BrokerProcess | undefined
  /** How many times it was started. */
  starts = 0

  private constructor(
    readonly name: string,
    readonly ports: { tcp: number; ops: number },
    readonly dataDir: string,
    readonly env: NodeJS.ProcessEnv
  ) {}

  /** Allocates its ports and data directory and starts it. */
  static async start(name: string, env: NodeJS.ProcessEnv): Promise<FaultNode> {
    const ports = { tcp: await freePort(), ops: await freePort() }
    const dataDir = mkdtempSync(join(tmpdir(), `parley-fault-${name}-`))
    const node = new FaultNode(name, ports, dataDir, {
      ...env,
      PARLEY_NODE_NAME: name,
      PARLEY_DATA_DIR: dataDir,
      PARLEY_LISTENERS__TCP__PORT: String(ports.tcp),
      PARLEY_LISTENERS__OPS__PORT: String(ports.ops),
      PARLEY_LISTENERS__WS__ENABLED: 'false'
    })
    await node.start()
    return node
  }

  get alive(): boolean {
    const child = this.process?.child
    return Boolean(child && child.exitCode === null && child.signalCode === null)
  }

  get pid(): number | undefined {
    return this.alive ? this.process?.child.pid : undefined
  }

  /** Starts it (again) with the same environment, ports and data directory; resolves once it is ready. */
  async start(): Promise<void> {
    if (this.alive) throw new Error(`${this.name} is running`)
    this.process = await startBroker({ env: this.env, timeoutMs: 30_000 })
    this.starts++
    running.add(this)
    void this.process.exited.then(() => running.delete(this))
  }

  /** kill -9 of this process (its PID only), resolves once it is gone. */
  async kill9(): Promise<void> {
    if (this.process) await within(this.process.stop('SIGKILL'), 10_000, `${this.name} killed`)
  }

  /** Graceful stop (SIGTERM), SIGKILL if that takes more than 15 s. */
  async stop(): Promise<void> {
    const p = this.process
    if (!p) return
    await within(p.stop('SIGTERM'), 15_000, `${this.name} stop`).catch(async () => p.stop('SIGKILL'))
  }

  readyz(): Promise<ReadyAnswer> {
    return readyz(this.ports.ops)
  }

  /** Stops it if it runs and removes its data directory. */
  async dispose(): Promise<void> {
    await this.stop()
    rmSync(this.dataDir, { recursive: true, force: true })
  }
}

/** Starts nodes one after the other (cheaper than at once on two cores) with the same environment. */
export async function startNodes(names: string[], env: NodeJS.ProcessEnv): Promise<FaultNode[]> {
  const nodes: FaultNode[] = []
  try {
    for (const name of names) nodes.push(await FaultNode.start(name, env))
  } catch (err) {
    await Promise.all(nodes.map((n) => n.dispose()))
    throw err
  }
  return nodes
}

interface RpcAnswer {
  id: string
  ok: boolean
  result?: unknown
  error?: { code: string; message?: string }
}

export interface DeviceOptions {
  user: string
  device?: string
  /** TCP ports of the nodes it may use: the first is its home; when a node refuses it, it tries the next. */
  ports: number[]
  /** Persistent session (default false: a clean session, caught up with messages.sync). */
  persistent?: boolean
  reconnectPeriodMs?: number
  /**
   * Let the reader call conversations.list on a reconnect (default true). It finds conversations
   * the device has not seen yet; on FerretDB it also costs two collection scans per conversation.
   */
  list?: boolean
  /**
   * Wait this long before answering a sync asked because of a gap (never one after a reconnect),
   * and skip the request when live delivery filled the gap meanwhile: docs/delivery.md allows it,
   * and on FerretDB every messages.sync costs two collection scans. Default 0: sync at once.
   */
  gapSyncDelayMs?: number
  /** How long a sync or list RPC may take before the reader gives up on it and retries (default 15 s). */
  rpcTimeoutMs?: number
}

interface OutboxEntry {
  topic: string
  payload: string
  resolve: () => void
  transmissions: number
}

/**
 * A device as docs/delivery.md describes it: an app over mqtt.js, one subscription to its user
 * tree, the OrderedReader rules (order by seq, drop duplicates, sync on a gap and after every
 * reconnect), an outbox, and what it saw on the wire.
 *
 * The app reconnects itself: each connection is a fresh mqtt.js client (reconnectPeriod 0), and a
 * node that refuses the connection makes it try the next port of its list. Its outbox is resent
 * in full on every connection (same payload, so the same cmid; the server stores a send once).
 * mqtt.js's own resend is not used: it sends its stored publishes one at a time, each waiting for
 * its PUBACK, and holds every new publish and the 'connect' event back until then, which after a
 * node failure stalls a device with a window of sends in flight for a minute.
 */
export class ChatDevice {
  readonly user: string
  readonly device: string
  readonly reader: OrderedReader<MessageEnvelope>
  /** What the application got: every message exactly once, in seq order per conversation. */
  readonly app: MessageEnvelope[] = []
  /** Message ids that arrived live on u/{user}/m, with how often. */
  readonly liveIds = new Map<string, number>()
  readonly wire = {
    connects: 0,
    closes: 0,
    /** Connection attempts that ended without a CONNACK (a node down). */
    failedConnects: 0,
    liveMessages: 0,
    packetsBeforeConnack: 0,
    rpcLost: 0,
    /** RPCs whose answer never came while the connection stayed up (given up after rpcTimeoutMs). */
    rpcTimeouts: 0,
    /** Answers that came after their RPC was given up (or twice). */
    lateAnswers: 0,
    /** Publishes of the outbox beyond the first of each message (resent after a reconnect). */
    resent: 0,
    /** messages.sync requests actually sent (a gap sync that live delivery made unnecessary is not). */
    syncRpcs: 0,
    /** CONNACKs per TCP port: which node the device was on. */
    connectsByPort: {} as Record<number, number>,
    /** The session-present flag of every CONNACK, in order (persistent sessions: true once the server knows it). */
    sessionPresent: [] as boolean[],
    errors: {} as Record<string, number>
  }
  /** The current mqtt.js client (a new one per connection). */
  client: MqttClient | undefined
  private ready = false
  private closed = false
  private serverIndex = 0
  private timer: NodeJS.Timeout | undefined
  private readonly ports: number[]
  private readonly persistent: boolean
  private readonly reconnectPeriodMs: number
  private readonly outbox = new Map<number, OutboxEntry>()
  private outboxIds = 0
  private readonly waiting = new Map<string, { resolve: (a: RpcAnswer) => void; reject: (err: Error) => void }>()
  private readonly readyWaiters: Array<() => void> = []
  private rpcIds = 0
  /** When the current connection got its CONNACK (or a catch-up was asked): syncs before it are stale. */
  private syncEpoch = 0
  private readonly lastRealSync = new Map<string, number>()

  constructor(options: DeviceOptions) {
    this.user = options.user
    this.device = options.device ?? 'phone'
    this.ports = options.ports
    this.persistent = options.persistent ?? false
    this.reconnectPeriodMs = options.reconnectPeriodMs ?? 300
    this.reader = new OrderedReader<MessageEnvelope>({
      deliver: (m) => this.app.push(m),
      sync: async (conversation, afterSeq) => {
        const key = `${conversation.kind}:${conversation.id}`
        const delay = options.gapSyncDelayMs ?? 0
        if (delay > 0 && (this.lastRealSync.get(key) ?? -1) >= this.syncEpoch) {
          // A gap sync (this conversation was synced on this connection already): give live delivery a moment.
          await sleep(delay)
          if (this.reader.nextSeq(conversation) > afterSeq + 1) return { messages: [], hasMore: false, lastSeq: afterSeq }
        }
        this.lastRealSync.set(key, this.syncEpoch)
        this.wire.syncRpcs++
        const answer = await this.rpc('messages.sync', { conversation, afterSeq, limit: 200 }, options.rpcTimeoutMs)
        if (!answer.ok) throw new Error(`messages.sync: ${answer.error?.code}`)
        return answer.result as SyncPage<MessageEnvelope>
      },
      list:
        options.list === false
          ? undefined
          : async () => {
              const answer = await this.rpc('conversations.list', { limit: 100 }, options.rpcTimeoutMs)
              if (!answer.ok) throw new Error(`conversations.list: ${answer.error?.code}`)
              return (answer.result as { conversations: Array<{ conversation: ConversationRef; lastSeq: number }> }).conversations
            },
      // A sync that failed is tried again after this; on FerretDB a sync is two collection scans.
      retryMs: 2000,
      onError: () => undefined // syncs cut by a reconnect or a backend outage: counted in reader.counters, retried
    })
    this.connect()
  }

  /** Connects (once it is subscribed to its user tree); rejects after `timeoutMs`. */
  static async open(options: DeviceOptions, timeoutMs = 20_000): Promise<ChatDevice> {
    const d = new ChatDevice(options)
    try {
      await within(d.whenReady(), timeoutMs, `${d.user}:${d.device} connecting`)
    } catch (err) {
      d.close()
      throw err
    }
    return d
  }

  /** Connected, subscribed, and its outbox sent on this connection. */
  get connected(): boolean {
    return this.ready
  }

  /** The port of the node it is connected to (undefined while it is not). */
  get port(): number | undefined {
    return this.ready ? this.ports[this.serverIndex % this.ports.length] : undefined
  }

  whenReady(): Promise<void> {
    if (this.ready) return Promise.resolve()
    return new Promise((resolve) => this.readyWaiters.push(resolve))
  }

  /** Unacknowledged publishes in the outbox. */
  get unacknowledged(): number {
    return this.outbox.size
  }

  private connect(): void {
    if (this.closed) return
    const port = this.ports[this.serverIndex % this.ports.length]!
    const user = this.user
    const device = this.device
    const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
      clientId: `${user}:${device}`,
      clean: !this.persistent,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      keepalive: 10,
      resubscribe: false
    })
    this.client = client
    let sawConnack = false
    client.on('packetreceive', (packet) => {
      if (packet.cmd === 'connack') sawConnack = true
      else if (!sawConnack) this.wire.packetsBeforeConnack++
    })
    client.on('error', (err) => {
      this.wire.errors[err.message] = (this.wire.errors[err.message] ?? 0) + 1
    })
    client.on('message', (topic, payload) => {
      if (topic === `u/${user}/m`) {
        this.wire.liveMessages++
        const m = JSON.parse(payload.toString()) as MessageEnvelope
        this.liveIds.set(m.id, (this.liveIds.get(m.id) ?? 0) + 1)
        this.reader.receive(m)
      } else if (topic === `u/${user}/d/${device}/res`) {
        const answer = JSON.parse(payload.toString()) as RpcAnswer
        const w = this.waiting.get(answer.id)
        if (w) w.resolve(answer)
        else {
          this.wire.lateAnswers++
          progress(`${user}:${device}: late answer ${answer.id}`)
        }
      }
    })
    client.once('connect', (connack) => {
      this.wire.connects++
      this.wire.sessionPresent.push(connack.sessionPresent)
      this.wire.connectsByPort[port] = (this.wire.connectsByPort[port] ?? 0) + 1
      void this.onConnack(client)
    })
    client.once('close', () => {
      if (this.client !== client) return
      this.ready = false
      this.wire.closes++
      if (!sawConnack) {
        this.wire.failedConnects++
        this.serverIndex++ // that node did not take it: try the next one
      }
      // A response goes to the live connection only: one on its way is lost with it.
      for (const w of this.waiting.values()) w.reject(new Error('connection lost'))
      this.wire.rpcLost += this.waiting.size
      this.waiting.clear()
      client.end(true)
      clearTimeout(this.timer)
      this.timer = setTimeout(() => this.connect(), this.reconnectPeriodMs)
    })
  }

  private async onConnack(client: MqttClient): Promise<void> {
    try {
      await client.subscribeAsync(`u/${this.user}/#`, { qos: 1 })
    } catch {
      return // the connection dropped meanwhile: the next one subscribes
    }
    if (this.client !== client || !client.connected) return
    this.ready = true
    this.syncEpoch++
    this.readyWaiters.splice(0).forEach((resolve) => resolve())
    void this.reader.resync()
    for (const [id, e] of this.outbox) this.transmit(id, e, client)
  }

  private transmit(id: number, e: OutboxEntry, client: MqttClient): void {
    if (e.transmissions++ > 0) this.wire.resent++
    client.publishAsync(e.topic, e.payload, { qos: 1 }).then(
      () => {
        if (this.outbox.delete(id)) e.resolve()
      },
      () => undefined // the connection closed first: the outbox sends it again on the next one
    )
  }

  /** Publishes at QoS 1 through the outbox; resolves on the first PUBACK, whichever connection it came on. */
  publish(topic: string, payload: string): Promise<void> {
    return new Promise((resolve) => {
      const id = ++this.outboxIds
      const e: OutboxEntry = { topic, payload, resolve, transmissions: 0 }
      this.outbox.set(id, e)
      if (this.ready && this.client) this.transmit(id, e, this.client)
    })
  }

  /** Syncs every conversation from the store, as after a reconnect (an app coming back to the foreground). */
  catchUp(): Promise<void> {
    this.syncEpoch++
    return this.reader.resync()
  }

  /** Cuts the TCP connection (the device reconnects by itself). */
  cut(): void {
    this.client?.stream?.destroy()
  }

  /** One RPC on s/rpc; rejects when the connection drops before the answer. */
  async rpc(method: string, params: object, timeoutMs = 15_000): Promise<RpcAnswer> {
    const client = this.client
    if (!this.ready || !client) throw new Error('not connected')
    const id = `q${++this.rpcIds}`
    const answered = new Promise<RpcAnswer>((resolve, reject) => this.waiting.set(id, { resolve, reject }))
    client.publish('s/rpc', JSON.stringify({ id, method, params }), { qos: 1 })
    const started = Date.now()
    try {
      return await within(answered, timeoutMs, `${this.user}: answer to ${method} ${id}`)
    } catch (err) {
      if (this.waiting.has(id)) {
        this.wire.rpcTimeouts++
        progress(`${this.user}:${this.device}: no answer to ${method} ${JSON.stringify(params).slice(0, 80)} ${id} (asked ${new Date(started).toISOString().slice(11, 23)}) within ${Date.now() - started} ms, connection up on ${this.port}`)
      }
      throw err
    } finally {
      this.waiting.delete(id)
    }
  }

  /** rpc() that throws unless the answer is ok; returns the result. */
  async call<T>(method: string, params: object = {}): Promise<T> {
    const answer = await this.rpc(method, params)
    if (!answer.ok) throw new Error(`${method} failed: ${JSON.stringify(answer.error)}`)
    return answer.result as T
  }

  /** The messages of one conversation the application got, in order. */
  conversation(ref: ConversationRef): MessageEnvelope[] {
    return this.app.filter((m) => m.conversation.kind === ref.kind && m.conversation.id === ref.id)
  }

  close(): void {
    this.closed = true
    clearTimeout(this.timer)
    this.reader.close()
    this.client?.end(true)
  }
}

/** Opens the devices one after the other (connecting them all at once costs more than it saves on two cores). */
export async function openDevices(list: DeviceOptions[]): Promise<ChatDevice[]> {
  const devices: ChatDevice[] = []
  try {
    for (const o of list) devices.push(await ChatDevice.open(o))
  } catch (err) {
    devices.forEach((d) => d.close())
    throw err
  }
  return devices
}

/** One message a test sends: from a device into a conversation (as the sender sees it), to the users who must get it. */
export interface Outgoing {
  from: ChatDevice
  to: ConversationRef
  cmid: string
  body: string
  /** Users who must receive it, the sender included (its copy is how it learns id and seq). */
  members: readonly string[]
}

export interface SentRecord extends Outgoing {
  /** When its PUBACK came (epoch ms). */
  ackedAt?: number
}

/** Everything sent, and what was acknowledged (PUBACK: stored). */
export class Ledger {
  readonly records: SentRecord[] = []
  /** Ack times in order, for the tests that check when acknowledgements may (not) come. */
  readonly acks: Array<{ cmid: string; at: number }> = []

  get sent(): number {
    return this.records.length
  }

  get acknowledged(): number {
    return this.acks.length
  }

  /**
   * Sends through the device's outbox and resolves on PUBACK; the outbox sends it again (same
   * cmid) after every reconnect, whichever node that is, and the server stores it once. Rejects
   * after `timeoutMs` (the record stays unacknowledged).
   */
  async send(o: Outgoing, timeoutMs = 120_000): Promise<void> {
    const record: SentRecord = { ...o }
    this.records.push(record)
    const topic = o.to.kind === 'dm' ? `s/dm/${o.to.id}` : `s/g/${o.to.id}`
    await within(o.from.publish(topic, JSON.stringify({ cmid: o.cmid, body: o.body })), timeoutMs, `PUBACK of ${o.cmid}`)
    record.ackedAt = Date.now()
    this.acks.push({ cmid: o.cmid, at: record.ackedAt })
  }

  /**
   * Sends a queue in order with at most `window` publishes in flight; resolves when all are
   * acknowledged or failed. Nothing new is started after `deadline` (epoch ms), and no send waits past it.
   */
  async sendAll(queue: Outgoing[], window: number, options: { deadline: number; onAck?: () => void }): Promise<{ failed: number; notSent: number }> {
    let next = 0
    let failed = 0
    const onAck = options.onAck
    const worker = async () => {
      while (next < queue.length && Date.now() < options.deadline) {
        const o = queue[next++]!
        try {
          await this.send(o, Math.max(1000, options.deadline - Date.now()))
          onAck?.()
        } catch {
          failed++
        }
      }
    }
    await Promise.all(Array.from({ length: Math.max(1, window) }, worker))
    return { failed, notSent: queue.length - next }
  }
}

export interface Tally {
  /** Messages sent (distinct cmids). */
  sent: number
  /** ... acknowledged with PUBACK (stored). */
  acknowledged: number
  /** (recipient, acknowledged message) pairs that must be delivered: every member, the sender included. */
  expected: number
  /** ... handed to the recipients' applications. */
  delivered: number
  /** Copies dropped by the readers (MQTT redeliveries, retried sends, sync pages overlapping live ones). */
  duplicated: number
  /** ... of which arrived live. */
  duplicatedLive: number
  /** Expected deliveries missing at the end. */
  lost: number
  /** Messages the applications got from a sync page rather than live. */
  fromSync: number
  gapSyncs: number
  syncRequests: number
  syncFailures: number
  reconnects: number
  /** Publishes sent again by the outboxes after a reconnect. */
  resent: number
  /** messages.sync requests sent (syncRequests counts those the reader asked for, some answered without a request). */
  syncRpcs: number
  rpcLost: number
  /** RPC answers that never came although the connection stayed up. */
  rpcTimeouts: number
  packetsBeforeConnack: number
  /** Rule violations found (wrong order, a message twice, recipients disagreeing on a seq); empty when all is well. */
  problems: string[]
}

const convKey = (c: ConversationRef) => `${c.kind}:${c.id}`

/** The conversation as `reader` sees a message `o` sent into it. */
function seenBy(o: Outgoing, reader: string): string {
  if (o.to.kind === 'group') return convKey(o.to)
  return convKey({ kind: 'dm', id: reader === o.from.user ? o.to.id : o.from.user })
}

/** Counts what the ledger says against what the devices' applications got, and checks the rules on the way. */
export function tally(ledger: Ledger, devices: readonly ChatDevice[]): Tally {
  const problems: string[] = []
  // What each application got: (conversation, sender, cmid) -> the envelope; the rules checked per conversation.
  const got = new Map<string, Map<string, MessageEnvelope>>()
  const canonical = new Map<string, string>() // "<conversation pair key>#seq" -> id, to check recipients agree
  for (const d of devices) {
    const index = new Map<string, MessageEnvelope>()
    got.set(d.user, index)
    const perConv = new Map<string, MessageEnvelope[]>()
    for (const m of d.app) {
      const k = convKey(m.conversation)
      let list = perConv.get(k)
      if (!list) perConv.set(k, (list = []))
      list.push(m)
      const id = `${k}\u0000${m.from.user}\u0000${m.cmid}`
      if (index.has(id)) problems.push(`${d.user}: ${m.cmid} from ${m.from.user} handed over twice`)
      index.set(id, m)
      const pair = m.conversation.kind === 'group' ? k : `dm:${[d.user, m.conversation.id].sort().join(':')}`
      const prior = canonical.get(`${pair}#${m.seq}`)
      if (prior === undefined) canonical.set(`${pair}#${m.seq}`, m.id)
      else if (prior !== m.id) problems.push(`${pair} seq ${m.seq}: ${d.user} got ${m.id}, another member ${prior}`)
    }
    for (const [k, list] of perConv) {
      const bad = list.findIndex((m, i) => m.seq !== i + 1)
      if (bad >= 0) problems.push(`${d.user} ${k}: position ${bad + 1} has seq ${list[bad]!.seq} (not 1, 2, 3, ...)`)
    }
  }
  let expected = 0
  let lost = 0
  for (const r of ledger.records) {
    if (r.ackedAt === undefined) continue
    for (const member of r.members) {
      expected++
      if (!got.get(member)?.has(`${seenBy(r, member)}\u0000${r.from.user}\u0000${r.cmid}`)) {
        lost++
        if (lost <= 5) problems.push(`${member} never got ${r.cmid} (acknowledged)`)
      }
    }
  }
  const wanted = new Set(ledger.records.map((r) => `${r.from.user}\u0000${r.cmid}`))
  let delivered = 0
  for (const d of devices) delivered += d.app.filter((m) => wanted.has(`${m.from.user}\u0000${m.cmid}`)).length
  const sum = (f: (d: ChatDevice) => number) => devices.reduce((n, d) => n + f(d), 0)
  return {
    sent: ledger.sent,
    acknowledged: ledger.acknowledged,
    expected,
    delivered,
    duplicated: sum((d) => d.reader.counters.duplicates),
    duplicatedLive: sum((d) => d.reader.counters.duplicatesLive),
    lost,
    fromSync: sum((d) => d.reader.counters.deliveredFromSync),
    gapSyncs: sum((d) => d.reader.counters.gapSyncs),
    syncRequests: sum((d) => d.reader.counters.syncRequests),
    syncFailures: sum((d) => d.reader.counters.syncFailures),
    reconnects: sum((d) => Math.max(0, d.wire.connects - 1)),
    resent: sum((d) => d.wire.resent),
    syncRpcs: sum((d) => d.wire.syncRpcs),
    rpcLost: sum((d) => d.wire.rpcLost),
    rpcTimeouts: sum((d) => d.wire.rpcTimeouts),
    packetsBeforeConnack: sum((d) => d.wire.packetsBeforeConnack),
    problems
  }
}

/**
 * The end of a stream: waits until every acknowledged message reached every member. Live delivery
 * brings nearly all of them; what it lost in the last moments leaves no gap behind it (nothing
 * follows), so if something is still missing once the stream is quiet, every device syncs once
 * more, as an app does when it comes back to the foreground. Gives up after `timeoutMs` (the tally
 * then shows what is missing).
 */
export async function settle(ledger: Ledger, devices: readonly ChatDevice[], timeoutMs: number): Promise<{ finalResync: boolean }> {
  const deadline = Date.now() + timeoutMs
  const delivered = () => devices.reduce((n, d) => n + d.app.length, 0)
  const done = () => devices.every((d) => !d.reader.busy) && tally(ledger, devices).lost === 0
  // Until nothing new arrived for two seconds (or everything is there).
  let last = -1
  while (Date.now() < deadline && !done() && delivered() !== last) {
    last = delivered()
    await sleep(2000)
  }
  if (done()) return { finalResync: false }
  progress(`settle: ${tally(ledger, devices).lost} deliveries missing once quiet; every device syncs`)
  await eventually(() => devices.every((d) => d.connected), Math.max(1000, Math.min(30_000, deadline - Date.now())), 'every device connected').catch(() => undefined)
  progress(`settle: connected: ${devices.map((d) => d.connected).join(',')}`)
  await Promise.all(devices.map((d) => d.catchUp()))
  progress(`settle: resync started; busy: ${devices.map((d) => d.reader.busy).join(',')}`)
  while (Date.now() < deadline && !done()) await sleep(500)
  progress(`settle: done ${done()}; lost ${tally(ledger, devices).lost}`)
  return { finalResync: true }
}

/** Counts of a node's own metrics that explain a slow or stuck run (FAULT_VERBOSE). */
export async function nodeMetrics(node: FaultNode): Promise<string> {
  if (!node.alive) return `${node.name}: down`
  try {
    const text = await (await fetch(`http://127.0.0.1:${node.ports.ops}/metrics`, { signal: AbortSignal.timeout(3000) })).text()
    const pick = text.split('\n').filter((l) => /^parley_(hook_denials_total|connected_clients|messages_stored_total|messages_store_failures_total|messages_batch_size_(sum|count)|messages_duplicates_total)/.test(l))
    return `${node.name}: ${pick.map((l) => l.replace(/^parley_(messages_)?/, '').replace(/hook="authorizePublish",/, '')).join(' ')}`
  } catch (err) {
    return `${node.name}: metrics ${(err as Error).message}`
  }
}

/** Warnings and errors a node logged, counted by message (FAULT_VERBOSE). */
export function nodeLogSummary(node: FaultNode): string {
  const seen = new Map<string, number>()
  for (const l of node.process?.logs ?? []) {
    if (l.level === 'info' || l.level === 'debug' || l.level === 'trace') continue
    const err = l.err as { message?: string } | string | undefined
    const key = `${l.level} ${l.msg}${err ? `: ${typeof err === 'string' ? err : (err.message ?? '')}`.slice(0, 160) : ''}`
    seen.set(key, (seen.get(key) ?? 0) + 1)
  }
  return `${node.name} logged: ${JSON.stringify([...seen])}`
}

/** Progress every 5 s on stderr when FAULT_VERBOSE is set (development of these tests); returns stop(). */
export function watch(ledger: Ledger, devices: readonly ChatDevice[], nodes: readonly FaultNode[]): () => void {
  if (!process.env.FAULT_VERBOSE) return () => undefined
  const timer = setInterval(() => {
    const c = devices.map((d) => d.reader.counters)
    const total = (f: (x: (typeof c)[number]) => number) => c.reduce((n, x) => n + f(x), 0)
    progress(devices.map((d) => `${d.user}:${d.port ?? 'down'}:${d.unacknowledged}`).join(' '))
    progress(
      `sent ${ledger.sent}, acked ${ledger.acknowledged}, delivered ${total((x) => x.delivered)}, gapSyncs ${total((x) => x.gapSyncs)}, ` +
        `syncRpcs ${devices.reduce((n, d) => n + d.wire.syncRpcs, 0)}, fromSync ${total((x) => x.deliveredFromSync)}`
    )
    for (const n of nodes) void nodeMetrics(n).then(progress)
  }, 5000)
  return () => {
    clearInterval(timer)
    for (const n of nodes) progress(nodeLogSummary(n))
  }
}

/** A compact line for t.diagnostic. */
export function report(name: string, t: Tally, extra: Record<string, unknown> = {}): string {
  const { problems, ...counts } = t
  return `${name}: ${JSON.stringify({ ...counts, ...extra, problems: problems.length })}`
}

/** What every fault test asserts in the end: every send acknowledged, every acknowledged message delivered once, nothing odd. */
export function assertNothingLost(counts: Tally): void {
  assert.equal(counts.acknowledged, counts.sent, 'every send acknowledged')
  assert.equal(counts.lost, 0, 'no acknowledged message lost')
  assert.equal(counts.delivered, counts.expected)
  assert.deepEqual(counts.problems, [])
  assert.equal(counts.packetsBeforeConnack, 0)
}
