// One load-generator thread of the relay benchmarks (started by _relay.ts). It holds its share of the
// publishers and subscribers, each with its own TCP connection, and counts into a SharedArrayBuffer
// that every thread and the main thread read, so a publisher's window covers deliveries made in any
// thread. Payloads carry their send time (performance.timeOrigin + performance.now(): one clock for
// every thread of the process), so latency is measured where the message arrives. Runs only as a
// worker thread: import its types from _relay-shared.ts.
import { parentPort, workerData } from 'node:worker_threads'
import mqtt from 'mqtt'
import { RawClient } from './_mqtt-raw.js'
import { MEASURING, RUNNING, chatUsers, deliveredIndex, relayTopic, sentIndex, serveThread, type Command, type WorkerInit } from './_relay-shared.js'

const now = (): number => performance.timeOrigin + performance.now()

interface Conn {
  publish(topic: Buffer, topicText: string, payload: Buffer, qos: 0 | 1): void
  subscribe(topic: string, qos: 0 | 1): Promise<void>
  close(): Promise<void>
}

async function open(init: WorkerInit, clientId: string, onMessage: (topic: string, payload: Buffer) => void, onAck: () => void, clean = true): Promise<Conn> {
  if (init.client === 'raw') {
    const c = await RawClient.connect({ host: init.host, port: init.port, clientId, clean })
    c.onMessage = onMessage
    c.onPuback = onAck
    return {
      publish: (topic, _text, payload, qos) => void c.publish(topic, payload, qos),
      subscribe: (topic, qos) => c.subscribe(topic, qos),
      close: () => c.close()
    }
  }
  const c = await mqtt.connectAsync(`mqtt://${init.host}:${init.port}`, { clientId, protocolVersion: 4, clean, keepalive: 300, reconnectPeriod: 0, connectTimeout: 30_000 })
  c.on('message', onMessage)
  return {
    publish: (_topic, text, payload, qos) => void c.publish(text, payload, { qos }, () => onAck()),
    subscribe: async (topic, qos) => {
      const granted = await c.subscribeAsync(topic, { qos })
      if (granted.some((g) => g.qos === 128)) throw new Error(`SUBACK 0x80 for ${topic}`)
    },
    close: () => c.endAsync()
  }
}

const init = workerData as WorkerInit
const shared = new Int32Array(init.shared)
const port = parentPort!
const publishers = new Map<number, Conn>()
const subscribers: Conn[] = []
const samples = new Float64Array(init.sampleCap)
let sampleCount = 0
/** Messages chat senders got delivered receipts for while measuring. */
let receipts = 0
let errors = 0
let lastError = ''
let elu0 = performance.eventLoopUtilization()
let mode: Extract<Command, { cmd: 'run' }> | undefined
let rateStart = 0
let rateSent = new Map<number, number>()
let ticker: NodeJS.Timeout | undefined
let seq = 0

const filler = Buffer.alloc(Math.max(init.payloadBytes, 8), 'x')
const topicBufs = new Map<number, { buf: Buffer; text: string }>()
for (const f of init.pubs) {
  const text = init.kind === 'relay' ? relayTopic(init.run, f) : `s/dm/${chatUsers(init.run, f).to}`
  topicBufs.set(f, { buf: Buffer.from(text), text })
}

function payload(): Buffer {
  if (init.kind === 'relay') {
    const p = Buffer.allocUnsafe(filler.length)
    filler.copy(p)
    p.writeDoubleLE(now(), 0)
    return p
  }
  // A chat message: the send time leads the body; the rest pads it to about payloadBytes.
  const head = `{"cmid":"c${init.worker}-${seq++}","body":"${now()} `
  return Buffer.from(`${head}${'x'.repeat(Math.max(0, init.payloadBytes - head.length - 2))}"}`)
}

function stampOf(topic: string, p: Buffer): number | undefined {
  if (init.kind === 'relay') return p.length >= 8 ? p.readDoubleLE(0) : undefined
  if (!topic.endsWith('/m')) return undefined // other chat traffic (receipts, presence) is not counted
  const body = (JSON.parse(p.toString()) as { body?: string }).body
  return body === undefined ? undefined : Number.parseFloat(body)
}

function send(f: number, n: number): void {
  const conn = publishers.get(f)!
  const t = topicBufs.get(f)!
  for (let i = 0; i < n; i++) conn.publish(t.buf, t.text, payload(), init.qos)
  Atomics.add(shared, sentIndex(f), n)
}

/** Sends as much as the flow's window allows: messages published but not yet delivered to every subscriber. */
function pump(f: number): void {
  if (!mode || !Atomics.load(shared, RUNNING) || !publishers.has(f)) return
  const outstanding = Atomics.load(shared, sentIndex(f)) - Math.floor(Atomics.load(shared, deliveredIndex(init.flows, f)) / init.subsPerFlow[f]!)
  let n = mode.window - outstanding
  if (mode.mode === 'rate') {
    const due = Math.floor(((performance.now() - rateStart) * mode.ratePerFlow) / 1000) - (rateSent.get(f) ?? 0)
    n = Math.min(n, due)
    if (n > 0) rateSent.set(f, (rateSent.get(f) ?? 0) + n)
  }
  if (n > 0) send(f, n)
}

function onMessage(f: number, topic: string, p: Buffer): void {
  let stamp: number | undefined
  try {
    stamp = stampOf(topic, p)
  } catch (err) {
    errors++
    lastError = String(err)
    return
  }
  if (stamp === undefined) return
  Atomics.add(shared, deliveredIndex(init.flows, f), 1)
  if (Atomics.load(shared, MEASURING) && sampleCount < samples.length) samples[sampleCount++] = now() - stamp
  if (mode?.mode === 'window') pump(f)
}

async function connectAll(): Promise<void> {
  const jobs: Array<() => Promise<void>> = []
  for (const f of init.pubs) {
    const id = init.kind === 'relay' ? `bp${init.run}f${f}` : `${chatUsers(init.run, f).from}:phone`
    jobs.push(async () => {
      // A chat sender listens to its own tree as an app does: carbons of its sends and the
      // recipient's delivered receipts (u/<sender>/r).
      // A receipt says "delivered up to seq N" and the broker coalesces a burst into one, so what
      // counts is how far N moved: the messages receipted.
      let upTo = 0
      const onOwnTree = (topic: string, p: Buffer) => {
        if (!topic.endsWith('/r')) return
        const n = (JSON.parse(p.toString()) as { upToSeq?: number }).upToSeq ?? 0
        if (n > upTo) {
          if (Atomics.load(shared, MEASURING)) receipts += n - upTo
          upTo = n
        }
      }
      const c = await open(init, id, onOwnTree, () => mode?.mode === 'window' && pump(f))
      if (init.kind === 'chat') await c.subscribe(`u/${chatUsers(init.run, f).from}/#`, 1)
      publishers.set(f, c)
    })
  }
  for (const [f, count] of init.subs) {
    for (let k = 0; k < count; k++) {
      const id = init.kind === 'relay' ? `bs${init.run}f${f}w${init.worker}k${k}` : `${chatUsers(init.run, f).to}:phone`
      jobs.push(async () => {
        // A chat recipient keeps a persistent session, as a phone does: its PUBACK of a message is
        // what tells the server "delivered" (docs/protocol.md), so every message makes a receipt.
        const c = await open(init, id, (topic, p) => onMessage(f, topic, p), () => {}, init.kind !== 'chat')
        await c.subscribe(init.kind === 'relay' ? relayTopic(init.run, f) : `u/${chatUsers(init.run, f).to}/#`, init.qos)
        subscribers.push(c)
      })
    }
  }
  // 50 connections at a time: fast, without a SYN flood of the broker's accept queue.
  for (let i = 0; i < jobs.length; i += 50) await Promise.all(jobs.slice(i, i + 50).map((j) => j()))
}

async function handle(c: Command): Promise<Record<string, unknown>> {
  switch (c.cmd) {
    case 'connect':
      await connectAll()
      return { connections: publishers.size + subscribers.length }
    case 'run':
      mode = c
      rateStart = performance.now()
      rateSent = new Map()
      // Every millisecond: pace the rate, and refill windows whose deliveries happened in other threads.
      ticker = setInterval(() => {
        for (const f of publishers.keys()) pump(f)
      }, 1)
      for (const f of publishers.keys()) pump(f)
      return {}
    case 'mark':
      elu0 = performance.eventLoopUtilization()
      receipts = 0
      return {}
    case 'stop': {
      const elu = performance.eventLoopUtilization(elu0).utilization
      clearInterval(ticker)
      mode = undefined
      const latencies = samples.slice(0, sampleCount)
      return { elu, latencies, errors, lastError, receipts }
    }
    case 'close':
      await Promise.all([...publishers.values(), ...subscribers].map((s) => s.close().catch(() => {})))
      return {}
  }
}

serveThread<Command>(port, handle)
