// A minimal MQTT 3.1.1 client over node:net for the benchmarks: CONNECT (clean or persistent
// session, optional source address), SUBSCRIBE, PUBLISH (QoS 0/1), PUBACK, PINGREQ, DISCONNECT, and
// RPC over s/rpc (answers on u/<user>/d/<device>/res); nothing else. mqtt.js keeps an in-flight
// store, a packet id allocator and per-packet callbacks, which costs several times more CPU per
// message than the broker under test on this 2-core machine; this client does only what the
// benchmarks need, so the load generator is not what the numbers measure, and one process can hold
// ~19,000 of them. (mqtt.js stays available to relay scenarios: `--client mqttjs`.)
import { connect, type Socket } from 'node:net'

const CONNACK = 2
const PUBLISH = 3
const PUBACK = 4
const SUBACK = 9
const PINGRESP = 13

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
  /** Source address: each 127.x address has its own ~28,000 ephemeral ports. */
  localAddress?: string
}

/** An answer on u/<user>/d/<device>/res (docs/protocol.md). */
export interface RpcAnswer {
  id: string
  ok: boolean
  result?: unknown
  error?: { code?: string; message?: string }
}

interface Waiter<T> {
  resolve: (value: T) => void
  reject: (err: Error) => void
}

export class RawClient {
  /** Called for every PUBLISH received (QoS 1 ones are acknowledged right after). */
  onMessage: (topic: string, payload: Buffer) => void = () => {}
  /** Called for every PUBACK received, with its packet id. */
  onPuback: (id: number) => void = () => {}
  /** Called once when the socket closes: `asked` when close() or destroy() did it; `reason` is the socket error's code, if any. */
  onClose: (asked: boolean, reason: string | undefined) => void = () => {}
  private pending: Buffer | undefined
  private nextId = 1
  private nextRpc = 1
  private waiters = new Map<string, Waiter<number>>()
  private rpcs = new Map<string, Waiter<RpcAnswer>>()
  private corked = false
  private asked = false
  private reason: string | undefined
  /** Where RPC answers for this client's device arrive (client ids are <user>:<device>). */
  private readonly resTopic: string | undefined
  closed = false
  /** CONNACK's session-present flag. */
  sessionPresent = false

  private constructor(
    private readonly socket: Socket,
    readonly clientId: string
  ) {
    const [user, device] = clientId.split(':')
    this.resTopic = device ? `u/${user}/d/${device}/res` : undefined
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => this.data(chunk))
    const fail = (err: Error) => {
      this.closed = true
      for (const w of [...this.waiters.values(), ...this.rpcs.values()]) w.reject(err)
      this.waiters.clear()
      this.rpcs.clear()
    }
    socket.on('error', (err) => {
      this.reason ??= (err as NodeJS.ErrnoException).code ?? err.message
      fail(err)
    })
    socket.on('close', () => {
      fail(new Error(`connection closed${this.reason ? ` (${this.reason})` : ''}`))
      this.onClose(this.asked, this.reason)
    })
  }

  static async connect(o: RawClientOptions): Promise<RawClient> {
    const socket = connect({ host: o.host, port: o.port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) })
    const client = new RawClient(socket, o.clientId)
    const flags = o.clean === false ? 0x00 : 0x02 // clean session or not; no will, no credentials
    const keepalive = Buffer.alloc(2)
    keepalive.writeUInt16BE(o.keepalive ?? 300, 0)
    const connack = client.wait('connack', o.timeoutMs ?? 30_000)
    socket.write(packet(0x10, str('MQTT'), Buffer.from([4, flags]), keepalive, str(o.clientId)))
    const code = await connack.catch((err: unknown) => {
      socket.destroy() // no CONNACK in time: do not leave the socket open
      throw err
    })
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
  publish(topic: Buffer | string, payload: Buffer | string, qos: 0 | 1): number {
    if (typeof topic === 'string') topic = Buffer.from(topic)
    if (typeof payload === 'string') payload = Buffer.from(payload)
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

  /** A QoS 1 PUBLISH; resolves at its PUBACK. */
  async publishAcked(topic: Buffer | string, payload: Buffer | string, timeoutMs = 60_000): Promise<void> {
    if (this.closed) throw new Error('connection closed')
    // The PUBACK cannot arrive before the waiter is set: both happen in this tick.
    await this.wait(`puback:${this.publish(topic, payload, 1)}`, timeoutMs)
  }

  /** One request on s/rpc; resolves with the answer (ok or not), rejects when none comes in time. */
  rpc(method: string, params: Record<string, unknown>, timeoutMs = 60_000): Promise<RpcAnswer> {
    const id = `r${this.nextRpc++}`
    const answer = this.await(this.rpcs, id, timeoutMs, `${this.clientId} ${method}: no answer`)
    this.publish('s/rpc', JSON.stringify({ id, method, params }), 1)
    return answer
  }

  /** Like rpc(), but an answer that is not ok throws. */
  async call<T>(method: string, params: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    const a = await this.rpc(method, params, timeoutMs)
    if (!a.ok) throw new Error(`${this.clientId} ${method}: ${a.error?.code ?? '?'} ${a.error?.message ?? ''}`)
    return a.result as T
  }

  /** PINGREQ; resolves at its PINGRESP. */
  async ping(timeoutMs = 30_000): Promise<void> {
    const pong = this.wait('pingresp', timeoutMs)
    this.socket.write(Buffer.from([0xc0, 0]))
    await pong
  }

  /** Ends the session with DISCONNECT and closes the socket (a persistent session stays on the broker). */
  async close(timeoutMs = 2000): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.asked = true
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.socket.destroy()
        resolve()
      }, timeoutMs)
      this.socket.once('close', () => {
        clearTimeout(timer)
        resolve()
      })
      this.socket.end(Buffer.from([0xe0, 0]))
    })
  }

  /** Closes the socket at once, without DISCONNECT. */
  destroy(): void {
    this.closed = true
    this.asked = true
    this.socket.destroy()
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
    return this.await(this.waiters, key, timeoutMs, `${this.clientId}: no ${key.split(':')[0]}`)
  }

  private await<T>(map: Map<string, Waiter<T>>, key: string, timeoutMs: number, what: string): Promise<T> {
    if (this.closed) return Promise.reject(new Error('connection closed'))
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        map.delete(key)
        reject(new Error(`${what} within ${timeoutMs} ms`))
      }, timeoutMs)
      map.set(key, {
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

  private answer(payload: Buffer): void {
    try {
      const a = JSON.parse(payload.toString()) as RpcAnswer
      const w = this.rpcs.get(a.id)
      this.rpcs.delete(a.id)
      w?.resolve(a)
    } catch {
      // not an answer of ours
    }
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
        if (topic === this.resTopic) this.answer(body.subarray(o))
        else this.onMessage(topic, body.subarray(o))
        break
      }
      case PUBACK: {
        const id = body.readUInt16BE(0)
        if (this.waiters.size) this.settle(`puback:${id}`, 0)
        this.onPuback(id)
        break
      }
      case CONNACK:
        this.sessionPresent = (body[0]! & 1) === 1
        this.settle('connack', body[1]!)
        break
      case PINGRESP:
        this.settle('pingresp', 0)
        break
      case SUBACK:
        this.settle(`suback:${body.readUInt16BE(0)}`, body[2]!)
        break
      default:
        break
    }
  }
}
