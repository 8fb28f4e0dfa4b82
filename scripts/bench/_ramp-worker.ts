// Load generator process of the connection-ramp scenario (forked by connection-ramp.ts, commands over
// IPC). It holds a contiguous share of the devices, each one TCP connection bound to one of its own
// source addresses in 127.0.0.0/8 (each address has its own ~28,000 ephemeral ports), speaking just
// enough MQTT 3.1.1 by hand: CONNECT (clean session), SUBSCRIBE `u/<user>/#` at QoS 1 once CONNACK
// arrives, PINGREQ, a QoS 1 PUBLISH for the delivery probe, PUBACK for what it receives, DISCONNECT.
// A connection costs this process one socket and a small object, so one process holds ~19,000 of
// them (its 20,000 descriptors are the limit, not its memory or CPU).
//   connect  the next `count` devices, at most `inflight` of them between TCP connect and SUBACK
//   status   how many are open, and how many closed without being asked to (and why)
//   ping     PINGREQ on every open connection, counts PINGRESPs
//   probe    `pairs` devices each send one message to another device of this process (Parley: a chat
//            message on s/dm/<peer>, delivered on u/<peer>/m; plain brokers: a publish on u/<peer>/m)
//   close    DISCONNECT on every connection, waits for the sockets to close
import { connect, type Socket } from 'node:net'

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

const CONNACK = 2
const PUBLISH = 3
const PUBACK = 4
const SUBACK = 9
const PINGRESP = 13

function remainingLength(n: number): number[] {
  const bytes: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    bytes.push(b)
  } while (n > 0)
  return bytes
}

function mqttString(s: string): Buffer {
  const b = Buffer.from(s, 'utf8')
  const out = Buffer.allocUnsafe(2 + b.length)
  out.writeUInt16BE(b.length, 0)
  b.copy(out, 2)
  return out
}

function packet(header: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([header, ...remainingLength(body.length)]), body])
}

const connectPacket = (clientId: string, keepalive: number): Buffer => {
  const ka = Buffer.allocUnsafe(2)
  ka.writeUInt16BE(keepalive, 0)
  // Protocol "MQTT" level 4, flags: clean session only (no will, no credentials: anonymous devices).
  return packet(0x10, Buffer.concat([mqttString('MQTT'), Buffer.from([4, 0x02]), ka, mqttString(clientId)]))
}

const subscribePacket = (id: number, topic: string, qos: number): Buffer => packet(0x82, Buffer.concat([Buffer.from([id >> 8, id & 0xff]), mqttString(topic), Buffer.from([qos])]))

const publishPacket = (id: number, topic: string, payload: string): Buffer => packet(0x32, Buffer.concat([mqttString(topic), Buffer.from([id >> 8, id & 0xff]), Buffer.from(payload, 'utf8')]))

const PINGREQ = Buffer.from([0xc0, 0])
const DISCONNECT = Buffer.from([0xe0, 0])

/** One device: its socket, what it waits for, and a parser for what the broker sends. */
class Device {
  up = false
  closing = false
  closed = false
  reason: string | undefined
  pending: Buffer | undefined
  onConnack: ((code: number) => void) | undefined
  onSuback: ((code: number) => void) | undefined
  onPingresp: (() => void) | undefined
  onPuback: (() => void) | undefined
  onPublish: ((topic: string, payload: Buffer) => void) | undefined

  constructor(
    readonly user: string,
    readonly socket: Socket
  ) {
    socket.on('data', (chunk: Buffer) => this.data(chunk))
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
      case CONNACK:
        this.onConnack?.(body[1]!)
        break
      case SUBACK:
        this.onSuback?.(body[2]!)
        break
      case PINGRESP:
        this.onPingresp?.()
        break
      case PUBACK:
        this.onPuback?.()
        break
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
        this.onPublish?.(topic, body.subarray(o))
        break
      }
      default:
        break
    }
  }
}

let init: Extract<Command, { cmd: 'init' }> | undefined
let next = 0 // index (within this process's share) of the next device to connect
const devices: Device[] = []
let unexpectedCloses = 0
const closeReasons: Record<string, number> = {}

function open(k: number, timeoutMs: number): Promise<Device> {
  const o = init!
  const user = `${o.userPrefix}${o.first + k}`
  const socket = connect({ host: o.host, port: o.port, localAddress: o.addresses[k % o.addresses.length] })
  socket.setNoDelay(true)
  const d = new Device(user, socket)
  return new Promise<Device>((resolve, reject) => {
    let settled = false
    const timer = setTimeout(() => fail(new Error(`no CONNACK+SUBACK within ${timeoutMs} ms`)), timeoutMs)
    const fail = (err: Error) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      reject(err)
    }
    socket.on('error', (err) => {
      d.reason ??= (err as NodeJS.ErrnoException).code ?? err.message
      if (!d.up) fail(err)
    })
    socket.on('close', () => {
      d.closed = true
      if (!d.up) return fail(new Error(`closed before SUBACK${d.reason ? ` (${d.reason})` : ''}`))
      if (d.closing) return
      unexpectedCloses++
      const reason = d.reason ?? 'closed by the broker'
      closeReasons[reason] = (closeReasons[reason] ?? 0) + 1
    })
    d.onConnack = (code) => {
      if (code !== 0) return fail(new Error(`CONNACK ${code}`))
      socket.write(subscribePacket(1, `u/${user}/#`, 1))
    }
    d.onSuback = (code) => {
      if (code === 0x80) return fail(new Error('SUBACK 0x80'))
      if (settled) return
      settled = true
      clearTimeout(timer)
      d.up = true
      d.onConnack = d.onSuback = undefined
      resolve(d)
    }
    socket.write(connectPacket(`${user}:phone`, o.keepalive))
  })
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
  for (const d of live) {
    d.onPingresp = () => {
      d.onPingresp = undefined
      answered++
    }
    d.socket.write(PINGREQ)
  }
  await until(() => answered, live.length, timeoutMs)
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
    to.onPublish = (topic, payload) => {
      if (topic !== want || !payload.includes(marker)) return
      to.onPublish = undefined
      received++
    }
    from.onPuback = () => {
      from.onPuback = undefined
      acked++
    }
    const body = `${marker} ${k}`
    // Parley: a one-to-one chat message, stored and delivered to the peer's devices; the plain
    // brokers have no chat: the publish goes straight to the peer's own tree.
    if (chat) from.socket.write(publishPacket(2, `s/dm/${to.user}`, JSON.stringify({ cmid: `p${k}`, body })))
    else from.socket.write(publishPacket(2, want, body))
  }
  await until(() => Math.min(acked, received), n, timeoutMs)
  return { pairs: n, acked, received, ms: Math.round(performance.now() - t0) }
}

async function closeAll(timeoutMs: number): Promise<Record<string, unknown>> {
  const t0 = performance.now()
  for (const d of devices) {
    d.closing = true
    if (!d.closed) d.socket.end(DISCONNECT)
  }
  await until(() => devices.filter((d) => d.closed).length, devices.length, timeoutMs)
  let destroyed = 0
  for (const d of devices) {
    if (d.closed) continue
    destroyed++
    d.socket.destroy()
  }
  const closed = devices.length
  devices.length = 0
  return { closed, destroyed, ms: Math.round(performance.now() - t0) }
}

process.on('disconnect', () => process.exit(0))
process.on('message', (message: Command) => {
  const reply = (data: object): void => {
    process.send!({ reply: message.cmd, ...data })
  }
  const run = async (): Promise<void> => {
    switch (message.cmd) {
      case 'init':
        init = message
        return reply({})
      case 'connect':
        return reply(await connectMany(message.count, message.inflight, message.timeoutMs))
      case 'status':
        return reply({ open: devices.filter((d) => !d.closed).length, unexpectedCloses, closeReasons: { ...closeReasons } } satisfies StatusReply)
      case 'ping':
        return reply(await ping(message.timeoutMs))
      case 'probe':
        return reply(await probe(message.pairs, message.chat, message.timeoutMs))
      case 'close':
        return reply(await closeAll(message.timeoutMs))
      case 'exit':
        for (const d of devices) d.socket.destroy()
        process.exit(0)
    }
  }
  run().catch((err: unknown) => process.send!({ reply: message.cmd, error: (err as Error).stack ?? String(err) }))
})
