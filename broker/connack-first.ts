// CONNACK first: holds the server-to-client MQTT frames written before the CONNACK, and writes
// them right after it. MQTT 3.1.1 [MQTT-3.2.0-1]: the first packet the server sends MUST be CONNACK.
//
// Why Aedes 1.2.0 breaks that rule (node_modules/aedes):
// - lib/handlers/connect.js:23-33 runs the CONNECT as a series: authenticate, setKeepAlive,
//   fetchSubs, restoreSubs, storeWill, registerClient, cleanIncoming, doConnack, emptyQueue.
// - restoreSubs (connect.js:203-211) re-subscribes a persistent session (clean=false) to the
//   emitter, so from then on every matching publish reaches client.deliverQoS
//   (lib/client.js:128-162), which writes the PUBLISH on the next setImmediate.
// - lib/write.js:5 writes whenever `client.connecting || client.connected`, and `connecting` is
//   set at connect.js:48, before the series starts.
// - Between restoreSubs and doConnack (connect.js:234) Aedes waits for the persistence
//   (storeWill: delWill, then putWill; cleanIncoming). With aedes-persistence-redis those are
//   Redis round trips, so a message published in that window is written before the CONNACK.
//   (In memory they finish within microtasks, before deliverQoS's setImmediate: we measured 0 of
//   100 reconnects there, against 27 and 29 of 100 over Redis; docs/delivery.md.)
// mqtt.js 5 then deadlocks: it emits the PUBLISH, queues its PUBACK until it is connected
// (client.js _sendPacket stores packets while !connected) and parses the next packet only once
// that PUBACK is sent, so it never reads the CONNACK and fails with "connack timeout" (after 30 s
// by default); it reconnects, and the same can happen again.
//
// The fix is in our layer: every connection's stream is wrapped before broker.handle(). Until the
// CONNACK frame has been written, write() parses MQTT fixed headers (packet type: high nibble of
// byte 0; remaining length: the MQTT varint), passes the CONNACK through and holds every other
// frame; right after the CONNACK it writes what it held, in order. Frames may be split across
// writes (mqtt-packet writes a PUBLISH field by field) or combined in one. Then the stream's own
// write() and end() are put back: after the CONNACK it is a pure passthrough, no per-write cost.
// The stream object stays the same (remoteAddress, setNoDelay, destroy... are untouched).
import type { Duplex } from 'node:stream'

type WriteCallback = (err?: Error | null) => void
type WriteFn = (chunk: unknown, encoding?: BufferEncoding | WriteCallback, cb?: WriteCallback) => boolean
type EndFn = (chunk?: unknown, encoding?: BufferEncoding | WriteCallback, cb?: WriteCallback) => Duplex

const CONNACK = 2
// Where the parser is in the current frame.
const HEADER = 0
const LENGTH = 1
const BODY = 2

function toBuffer(chunk: unknown, encoding: BufferEncoding | undefined): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk
  if (typeof chunk === 'string') return Buffer.from(chunk, encoding ?? 'utf8')
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  throw new TypeError('connack-first: a byte stream carries strings, Buffers or Uint8Arrays only')
}

/**
 * Makes `stream` (the server side of one MQTT connection) send the CONNACK before any other
 * packet. Returns the same stream. Frames held before the CONNACK count against the stream's
 * writableHighWaterMark: past it write() returns false and 'drain' follows the CONNACK, as a
 * socket would do. If the stream ends or is destroyed before a CONNACK, the held frames are
 * dropped (a client without CONNACK cannot use them) and their write callbacks get an error.
 */
export function connackFirst<S extends Duplex>(stream: S): S {
  const target = stream as unknown as { write: WriteFn; end: EndFn }
  const ownWrite = Object.prototype.hasOwnProperty.call(stream, 'write') ? target.write : undefined
  const ownEnd = Object.prototype.hasOwnProperty.call(stream, 'end') ? target.end : undefined
  const originalWrite = target.write
  const originalEnd = target.end

  let state = HEADER
  let remaining = 0
  let multiplier = 1
  let lengthBytes = 0
  let inConnack = false
  const connack: Buffer[] = []
  const held: Buffer[] = []
  let heldBytes = 0
  const callbacks: WriteCallback[] = []
  let askedToWait = false
  let finished = false

  /** The pre-CONNACK bytes of one frame go to the CONNACK or to the held frames. */
  const take = (bytes: Buffer) => {
    if (bytes.length === 0) return
    if (inConnack) connack.push(bytes)
    else {
      held.push(bytes)
      heldBytes += bytes.length
    }
  }

  /** Takes the bytes of `buf`; returns the offset just after the CONNACK frame, or -1 when it has not ended. */
  const scan = (buf: Buffer): number => {
    let from = 0
    let i = 0
    while (i < buf.length) {
      if (state === HEADER) {
        take(buf.subarray(from, i))
        from = i
        inConnack = buf[i]! >> 4 === CONNACK
        state = LENGTH
        remaining = 0
        multiplier = 1
        lengthBytes = 0
        i++
        continue
      }
      if (state === LENGTH) {
        const b = buf[i++]!
        remaining += (b & 0x7f) * multiplier
        multiplier *= 128
        if (b & 0x80) {
          if (++lengthBytes === 4) throw new Error('malformed MQTT remaining length before CONNACK')
          continue
        }
        state = BODY
      } else {
        const n = Math.min(remaining, buf.length - i)
        i += n
        remaining -= n
      }
      if (remaining === 0) {
        state = HEADER
        if (inConnack) {
          take(buf.subarray(from, i))
          return i
        }
      }
    }
    take(buf.subarray(from))
    return -1
  }

  const restore = () => {
    finished = true
    stream.off('close', onClose)
    if (ownWrite) target.write = ownWrite
    else delete (target as Partial<typeof target>).write
    if (ownEnd) target.end = ownEnd
    else delete (target as Partial<typeof target>).end
  }

  const settle = (pending: WriteCallback[], err: Error | null) => {
    for (const cb of pending) process.nextTick(cb, err)
  }

  /** Writes the CONNACK, the held frames and the rest of the current chunk as one write, and restores the stream. */
  const release = (rest: Buffer, cb: WriteCallback | undefined): boolean => {
    restore()
    const pending = callbacks.splice(0)
    if (cb) pending.push(cb)
    const out = Buffer.concat([...connack.splice(0), ...held.splice(0), rest])
    heldBytes = 0
    // The stream calls back in order, with an error if it is destroyed before the bytes are out.
    const ok = originalWrite.call(stream, out, pending.length ? (err?: Error | null) => settle(pending, err ?? null) : undefined)
    // We said "wait" ourselves: the stream emits 'drain' only if it is full too.
    if (askedToWait && ok) process.nextTick(() => stream.emit('drain'))
    return ok
  }

  const onClose = () => {
    if (finished) return
    restore()
    connack.length = 0
    held.length = 0
    heldBytes = 0
    settle(callbacks.splice(0), new Error('connection closed before CONNACK'))
  }
  stream.once('close', onClose)

  target.write = (chunk, encoding, cb) => {
    if (typeof encoding === 'function') {
      cb = encoding
      encoding = undefined
    }
    if (stream.destroyed || stream.writableEnded) return originalWrite.call(stream, chunk, encoding, cb)
    const buf = toBuffer(chunk, encoding)
    let end: number
    try {
      end = scan(buf)
    } catch (err) {
      // Our own server wrote something that is not MQTT: close rather than guess.
      if (cb) callbacks.push(cb)
      stream.destroy(err as Error)
      return false
    }
    if (end >= 0) return release(buf.subarray(end), cb)
    if (cb) callbacks.push(cb)
    if (heldBytes < stream.writableHighWaterMark) return true
    askedToWait = true
    return false
  }

  target.end = (chunk, encoding, cb) => {
    if (typeof chunk === 'function') return originalEnd.call(stream, chunk)
    if (typeof encoding === 'function') {
      cb = encoding
      encoding = undefined
    }
    if (chunk !== undefined && chunk !== null) target.write(chunk, encoding)
    // Without a CONNACK, what is held is dropped (onClose settles its callbacks).
    return originalEnd.call(stream, cb)
  }

  return stream
}
