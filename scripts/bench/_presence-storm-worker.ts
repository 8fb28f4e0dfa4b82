// Load generator process of the presence-storm scenario (forked by presence-storm.ts, commands over IPC).
// It holds the devices of a share of the users: `setup` gives each user its contact list through the
// contacts.add RPC (connect, request, disconnect), `storm` connects all of them as fast as the broker
// accepts (at most `inflight` CONNECTs pending) and subscribes each to its own tree, `leave` disconnects
// them all at once. Presence events received on u/<user>/e are counted.
import { createConnection } from 'node:net'
import { MqttClient } from 'mqtt'
import { pool as poolWithin, serveCommands } from './_common.js'

export type Command =
  | { cmd: 'init'; port: number; indices: number[]; devices: number; contacts: number; worker: number }
  | { cmd: 'setup'; concurrency: number }
  | { cmd: 'storm'; inflight: number; snapshot: boolean }
  | { cmd: 'counts' }
  | { cmd: 'leave' }
  | { cmd: 'exit' }

export interface Counts {
  online: number
  offline: number
  other: number
}

export const userName = (i: number): string => `ps${i}`

/** The contacts of user i: i±1, i±2, ... (K of them, mutual when K is even), wrapping around. */
export function contactsOf(i: number, devices: number, k: number): string[] {
  const out: string[] = []
  for (let j = 0; j < k; j++) {
    const d = Math.floor(j / 2) + 1
    out.push(userName((((j % 2 ? i - d : i + d) % devices) + devices) % devices))
  }
  return out
}

const PHASE_TIMEOUT_MS = 150_000
/** A phase's tasks, `concurrency` at a time; what is not started within PHASE_TIMEOUT_MS counts as failed. */
const pool = <T>(items: readonly T[], concurrency: number, task: (item: T, n: number) => Promise<void>) => poolWithin(items, concurrency, PHASE_TIMEOUT_MS, task)

let port = 0
let indices: number[] = []
let devices = 0
let contacts = 0
let worker = 0
const clients: MqttClient[] = []
const counts: Counts = { online: 0, offline: 0, other: 0 }

function open(user: string, localAddress: string, onMessage?: (topic: string, payload: Buffer) => void): Promise<MqttClient> {
  const client = new MqttClient(() => createConnection({ host: '127.0.0.1', port, localAddress }), {
    clientId: `${user}:phone`,
    protocolVersion: 4,
    clean: true,
    keepalive: 300,
    reconnectPeriod: 0,
    connectTimeout: 60_000
  })
  if (onMessage) client.on('message', onMessage)
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      client.end(true)
      reject(err)
    }
    client.once('error', fail)
    client.once('close', () => fail(new Error('connection closed before CONNACK')))
    client.once('connect', () => {
      client.removeAllListeners('error')
      client.removeAllListeners('close')
      client.on('error', () => undefined)
      resolve(client)
    })
  })
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
    })
  ])
}

async function setupUser(i: number, n: number): Promise<void> {
  const user = userName(i)
  const want = contactsOf(i, devices, contacts)
  const pending = new Map<string, { resolve: () => void; reject: (e: Error) => void }>()
  const client = await open(user, `127.0.${100 + worker}.${1 + (n % 8)}`, (topic, payload) => {
    if (!topic.startsWith(`u/${user}/d/`)) return
    const body = JSON.parse(payload.toString()) as { id?: string; ok?: boolean; error?: unknown; ref?: { rpcId?: string }; code?: string }
    const id = body.id ?? body.ref?.rpcId
    const waiter = id ? pending.get(id) : undefined
    if (!waiter) return
    if (body.ok) waiter.resolve()
    else waiter.reject(new Error(`contacts.add refused: ${payload.toString()}`))
  })
  try {
    await client.subscribeAsync(`u/${user}/#`, { qos: 1 })
    for (let from = 0; from < want.length; from += 100) {
      const id = `c${from}`
      const answered = new Promise<void>((resolve, reject) => pending.set(id, { resolve, reject }))
      await client.publishAsync('s/rpc', JSON.stringify({ id, method: 'contacts.add', params: { users: want.slice(from, from + 100) } }), { qos: 1 })
      await withTimeout(answered, 30_000, `contacts.add for ${user}`)
    }
  } finally {
    await client.endAsync()
  }
}

async function storm(inflight: number, snapshot: boolean): Promise<Record<string, unknown>> {
  const order = [...indices]
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[order[i], order[j]] = [order[j]!, order[i]!]
  }
  const latencies: number[] = []
  const startedAt = Date.now()
  const result = await pool(order, inflight, async (i, n) => {
    const user = userName(i)
    const events = `u/${user}/e`
    const t0 = performance.now()
    let answered: (() => void) | undefined
    const client = await open(user, `127.0.${10 + worker}.${1 + (n % 8)}`, (topic, payload) => {
      if (topic !== events) {
        if (topic.startsWith(`u/${user}/d/`)) answered?.()
        return
      }
      const event = JSON.parse(payload.toString()) as { type?: string; online?: boolean }
      if (event.type !== 'presence') counts.other++
      else if (event.online) counts.online++
      else counts.offline++
    })
    clients.push(client)
    await client.subscribeAsync(`u/${user}/#`, { qos: 1 })
    if (snapshot) {
      // What an app does on connect: the presence of everyone it may see.
      const done = new Promise<void>((resolve) => (answered = resolve))
      await client.publishAsync('s/rpc', JSON.stringify({ id: 'p1', method: 'presence.get', params: {} }), { qos: 1 })
      await withTimeout(done, 60_000, `presence.get for ${user}`)
    }
    latencies.push(performance.now() - t0)
  })
  latencies.sort((a, b) => a - b)
  const pct = (p: number) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? NaN)
  return { ...result, connected: latencies.length, startedAt, doneAt: Date.now(), latencyMs: { p50: pct(0.5), p99: pct(0.99), max: pct(1) } }
}

serveCommands<Command>(async (message) => {
  switch (message.cmd) {
    case 'init':
      ;({ port, indices, devices, contacts, worker } = message)
      return {}
    case 'setup':
      return pool(indices, message.concurrency, setupUser)
    case 'storm':
      return storm(message.inflight, message.snapshot)
    case 'counts':
      return { counts: { ...counts } }
    case 'leave': {
      const startedAt = Date.now()
      const ends = await Promise.allSettled(clients.splice(0).map((c) => withTimeout(c.endAsync(), 60_000, 'disconnect')))
      return { failed: ends.filter((e) => e.status === 'rejected').length, startedAt, doneAt: Date.now() }
    }
    case 'exit':
      for (const c of clients) c.end(true)
      process.exit(0)
  }
})
