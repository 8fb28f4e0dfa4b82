// Load generator process of the connection-ramp scenario (forked by connection-ramp.ts, commands over
// IPC). It holds a contiguous share of the devices, each one TCP connection bound to one of its own
// source addresses in 127.0.0.0/8 (each address has its own ~28,000 ephemeral ports), with the
// minimal client of _mqtt-raw.ts: CONNECT (clean session), SUBSCRIBE `u/<user>/#` at QoS 1 once
// CONNACK arrives, PINGREQ, a QoS 1 PUBLISH for the delivery probe, PUBACK for what it receives,
// DISCONNECT. A connection costs this process one socket and a small object, so one process holds
// ~19,000 of them (its 20,000 descriptors are the limit, not its memory or CPU).
//   connect  the next `count` devices, at most `inflight` of them between TCP connect and SUBACK
//   status   how many are open, and how many closed without being asked to (and why)
//   ping     PINGREQ on every open connection, counts PINGRESPs
//   probe    `pairs` devices each send one message to another device of this process (Parley: a chat
//            message on s/dm/<peer>, delivered on u/<peer>/m; plain brokers: a publish on u/<peer>/m)
//   close    DISCONNECT on every connection, waits for the sockets to close
import { RawClient } from './_mqtt-raw.js'
import { serveCommands } from './_common.js'

export type Command =
  | { cmd: 'init'; host: string; port: number; first: number; count: number; addresses: string[]; keepalive: number; userPrefix: string }
  | { cmd: 'connect'; count: number; inflight: number; timeoutMs: number }
  | { cmd: 'status' }
  | { cmd: 'ping'; timeoutMs: number }
  | { cmd: 'probe'; pairs: number; chat: boolean; timeoutMs: number }
  | { cmd: 'close'; timeoutMs: number }
  | { cmd: 'exit' }

export interface ConnectReply {
  connected: number
  failed: number
  firstError?: string
  startedAt: number
  doneAt: number
  /** CONNECT sent → SUBACK received, ms, one per connected device. */
  latencies: number[]
}

export interface StatusReply {
  open: number
  /** Connections closed after their SUBACK without this process asking. */
  unexpectedCloses: number
  closeReasons: Record<string, number>
}

/** One device: its connection, and whether it is closed (and why, when nobody asked). */
interface Device {
  user: string
  client: RawClient
  closed: boolean
}

let init: Extract<Command, { cmd: 'init' }> | undefined
let next = 0 // index (within this process's share) of the next device to connect
const devices: Device[] = []
let unexpectedCloses = 0
const closeReasons: Record<string, number> = {}

async function open(k: number, timeoutMs: number): Promise<Device> {
  const o = init!
  const user = `${o.userPrefix}${o.first + k}`
  const deadline = Date.now() + timeoutMs
  const client = await RawClient.connect({ host: o.host, port: o.port, localAddress: o.addresses[k % o.addresses.length], clientId: `${user}:phone`, keepalive: o.keepalive, timeoutMs })
  try {
    await client.subscribe(`u/${user}/#`, 1, Math.max(1, deadline - Date.now()))
  } catch (err) {
    client.destroy()
    throw err
  }
  const d: Device = { user, client, closed: client.closed }
  client.onClose = (asked, reason) => {
    d.closed = true
    if (asked) return
    unexpectedCloses++
    const why = reason ?? 'closed by the broker'
    closeReasons[why] = (closeReasons[why] ?? 0) + 1
  }
  return d
}

async function connectMany(count: number, inflight: number, timeoutMs: number): Promise<ConnectReply> {
  const end = Math.min(init!.count, next + count)
  const latencies: number[] = []
  let failed = 0
  let firstError: string | undefined
  const startedAt = Date.now()
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(inflight, end - next)) }, async (_, lane) => {
      // Lanes start 1 ms apart: a burst of hundreds of SYNs at one instant overflows a short listen
      // queue (Mosquitto's), and each dropped SYN waits the kernel's 1 s retransmission.
      if (lane > 0) await new Promise((r) => setTimeout(r, lane))
      while (next < end) {
        const k = next++
        const t0 = performance.now()
        try {
          devices.push(await open(k, timeoutMs))
          latencies.push(Math.round((performance.now() - t0) * 100) / 100)
        } catch (err) {
          failed++
          firstError ??= (err as Error).message
        }
      }
    })
  )
  return { connected: latencies.length, failed, ...(firstError ? { firstError } : {}), startedAt, doneAt: Date.now(), latencies }
}

/** Resolves when `count()` reaches `want`, or after `timeoutMs`, whichever is first. */
async function until(count: () => number, want: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (count() < want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
}

async function ping(timeoutMs: number): Promise<Record<string, unknown>> {
  const live = devices.filter((d) => !d.closed)
  let answered = 0
  const t0 = performance.now()
  await Promise.all(live.map((d) => d.client.ping(timeoutMs).then(() => answered++, () => undefined)))
  return { sent: live.length, answered, ms: Math.round(performance.now() - t0) }
}

async function probe(pairs: number, chat: boolean, timeoutMs: number): Promise<Record<string, unknown>> {
  const live = devices.filter((d) => !d.closed)
  const n = Math.min(pairs, Math.floor(live.length / 2))
  const marker = `ramp-probe-${process.pid}-${Date.now()}`
  let acked = 0
  let received = 0
  const t0 = performance.now()
  for (let k = 0; k < n; k++) {
    const from = live[k]!
    const to = live[live.length - 1 - k]!
    const want = `u/${to.user}/m`
    to.client.onMessage = (topic, payload) => {
      if (topic !== want || !payload.includes(marker)) return
      to.client.onMessage = () => undefined
      received++
    }
    from.client.onPuback = () => {
      from.client.onPuback = () => undefined
      acked++
    }
    const body = `${marker} ${k}`
    // Parley: a one-to-one chat message, stored and delivered to the peer's devices; the plain
    // brokers have no chat: the publish goes straight to the peer's own tree.
    if (chat) from.client.publish(`s/dm/${to.user}`, JSON.stringify({ cmid: `p${k}`, body }), 1)
    else from.client.publish(want, body, 1)
  }
  await until(() => Math.min(acked, received), n, timeoutMs)
  return { pairs: n, acked, received, ms: Math.round(performance.now() - t0) }
}

async function closeAll(timeoutMs: number): Promise<Record<string, unknown>> {
  const t0 = performance.now()
  let destroyed = 0
  // DISCONNECT on all at once; a socket not closed by the broker within timeoutMs is destroyed.
  await Promise.all(
    devices.map(async (d) => {
      if (d.closed) return
      await d.client.close(timeoutMs)
      if (!d.closed) destroyed++
    })
  )
  const closed = devices.length
  devices.length = 0
  return { closed, destroyed, ms: Math.round(performance.now() - t0) }
}

serveCommands<Command>(async (message) => {
  switch (message.cmd) {
    case 'init':
      init = message
      return {}
    case 'connect':
      return connectMany(message.count, message.inflight, message.timeoutMs)
    case 'status':
      return { open: devices.filter((d) => !d.closed).length, unexpectedCloses, closeReasons: { ...closeReasons } } satisfies StatusReply
    case 'ping':
      return ping(message.timeoutMs)
    case 'probe':
      return probe(message.pairs, message.chat, message.timeoutMs)
    case 'close':
      return closeAll(message.timeoutMs)
    case 'exit':
      for (const d of devices) d.client.destroy()
      process.exit(0)
  }
})
