// A minimal MQTT 3.1.1 client over node:net for the relay benchmarks: CONNECT, SUBSCRIBE, PUBLISH
// (QoS 0/1), PUBACK, DISCONNECT; nothing else. mqtt.js keeps an in-flight store, a packet id
// allocator and per-packet callbacks, which costs several times more CPU per message than the
// broker under test on this 2-core machine; this client does only what the benchmark needs, so the
// load generator is not what the numbers measure. (mqtt.js stays available: `--client mqttjs`.)
import { connect, type Socket } from 'node:net'

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

function packet(header: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts)
  return Buffer.concat([Buffer.from([header]), remainingLength(body.length), body])
}

export interface RawClientOptions {
  host: string
  port: number
  clientId: string
  keepalive?: number
  timeoutMs?: number
  /** false: a persistent session (the broker keeps it and queues QoS 1 for it); default true. */
  clean?: boolean
}

export class RawClient {
  /** Called for every PUBLISH received (QoS 1 ones are acknowledged right after). */
  onMessage: (topic: string, payload: Buffer) => void = () => {}
  /** Called for every PUBACK received, with its packet id. */
  onPuback: (id: number) => void = () => {}
  private pending: Buffer | undefined
  private nextId = 1
  private waiters = new Map<string, { resolve: (code: number) => void; reject: (err: Error) => void }>()
  private corked = false
  closed = false

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.data(chunk))
    const fail = (err: Error) => {
      this.closed = true
      for (const w of this.waiters.values()) w.reject(err)
      this.waiters.clear()
    }
    socket.on('error', fail)
    socket.on('close', () => fail(new Error('connection closed')))
  }

  static async connect(o: RawClientOptions): Promise<RawClient> {
    const socket = connect({ host: o.host, port: o.port })
    const client = new RawClient(socket)
    const flags = o.clean === false ? 0x00 : 0x02 // clean session or not; no will, no credentials
    const keepalive = Buffer.alloc(2)
    keepalive.writeUInt16BE(o.keepalive ?? 300, 0)
    const connack = client.wait('connack', o.timeoutMs ?? 30_000)
    socket.write(packet(0x10, str('MQTT'), Buffer.from([4, flags]), keepalive, str(o.clientId)))
    const code = await connack
    if (code !== 0) {
      socket.destroy()
      throw new Error(`CONNACK ${code} for ${o.clientId}`)
    }
    return client
  }

  async subscribe(topic: string, qos: 0 | 1, timeoutMs = 30_000): Promise<void> {
    const id = this.id()
    const suback = this.wait(`suback:${id}`, timeoutMs)
    const pid = Buffer.alloc(2)
    pid.writeUInt16BE(id, 0)
    this.socket.write(packet(0x82, pid, str(topic), Buffer.from([qos])))
    const granted = await suback
    if (granted === 0x80) throw new Error(`SUBACK 0x80 for ${topic}`)
  }

  /** Sends a PUBLISH and returns its packet id (0 for QoS 0). Writes of one tick go out together. */
  publish(topic: Buffer, payload: Buffer, qos: 0 | 1): number {
    const id = qos ? this.id() : 0
    const len = 2 + topic.length + (qos ? 2 : 0) + payload.length
    const rl = remainingLength(len)
    const out = Buffer.allocUnsafe(1 + rl.length + len)
    let o = 0
    out[o++] = 0x30 | (qos << 1)
    rl.copy(out, o)
    o += rl.length
    out.writeUInt16BE(topic.length, o)
    o += 2
    topic.copy(out, o)
    o += topic.length
    if (qos) {
      out.writeUInt16BE(id, o)
      o += 2
    }
    payload.copy(out, o)
    this.write(out)
    return id
  }

  /** Ends the session with DISCONNECT and closes the socket. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.socket.destroy()
        resolve()
      }, 2000)
      this.socket.once('close', () => {
        clearTimeout(timer)
        resolve()
      })
      this.socket.end(Buffer.from([0xe0, 0]))
    })
  }

  private id(): number {
    const id = this.nextId
    this.nextId = id === 65535 ? 1 : id + 1
    return id
  }

  // Cork until the end of the tick: a burst of publishes (or PUBACKs) leaves in one segment.
  private write(buf: Buffer): void {
    if (!this.corked) {
      this.corked = true
      this.socket.cork()
      process.nextTick(() => {
        this.corked = false
        this.socket.uncork()
      })
    }
    this.socket.write(buf)
  }

  private wait(key: string, timeoutMs: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(key)
        reject(new Error(`no ${key} within ${timeoutMs} ms`))
      }, timeoutMs)
      this.waiters.set(key, {
        resolve: (code) => {
          clearTimeout(timer)
          resolve(code)
        },
        reject: (err) => {
          clearTimeout(timer)
          reject(err)
        }
      })
    })
  }

  private settle(key: string, code: number): void {
    const w = this.waiters.get(key)
    this.waiters.delete(key)
    w?.resolve(code)
  }

  private data(chunk: Buffer): void {
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk
    let off = 0
    for (;;) {
      if (buf.length - off < 2) break
      // Remaining length: up to 4 bytes of 7 bits.
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
          this.write(Buffer.from([0x40, 2, id >> 8, id & 0xff]))
        }
        this.onMessage(topic, body.subarray(o))
        break
      }
      case PUBACK:
        this.onPuback(body.readUInt16BE(0))
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
