// broker/connack-first.ts: server-to-client frames written before the CONNACK go out right after it.
// Frames are made and written with mqtt-packet, the writer Aedes itself uses (field by field).
import assert from 'node:assert/strict'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { Duplex } from 'node:stream'
import { describe, it } from 'node:test'
import mqtt from 'mqtt'
import * as mqttPacket from 'mqtt-packet'
import { connackFirst } from '../../broker/connack-first.js'
import { within } from '../helpers/broker-process.js'

const connack = mqttPacket.generate({ cmd: 'connack', returnCode: 0, sessionPresent: true })
const publish = (messageId: number, size: number) =>
  mqttPacket.generate({ cmd: 'publish', topic: 'u/alice/m', payload: Buffer.alloc(size, messageId), qos: 1, messageId, retain: false, dup: false })
const puback = mqttPacket.generate({ cmd: 'puback', messageId: 7 })

/** The server side of a connection: records what reaches the wire; `hold` delays write callbacks (a slow client). */
function sink(options: { highWaterMark?: number; hold?: boolean } = {}) {
  const out: Buffer[] = []
  const held: Array<() => void> = []
  const stream = new Duplex({
    highWaterMark: options.highWaterMark ?? 16 * 1024,
    read() {},
    write(chunk: Buffer, _enc, cb) {
      out.push(chunk)
      if (options.hold) held.push(() => cb())
      else cb()
    }
  })
  return {
    stream,
    bytes: () => Buffer.concat(out),
    release: () => held.splice(0).forEach((cb) => cb())
  }
}

/** The packets in `bytes`, in order, as the client's parser sees them. */
function packets(bytes: Buffer): Array<{ cmd: string; messageId?: number; length: number }> {
  const parser = mqttPacket.parser()
  const seen: Array<{ cmd: string; messageId?: number; length: number }> = []
  parser.on('packet', (p: mqttPacket.Packet) => seen.push({ cmd: p.cmd, messageId: p.messageId, length: p.length ?? 0 }))
  parser.parse(bytes)
  return seen
}

/** mqtt-packet corks the stream and uncorks it on the next tick. */
const uncorked = () => new Promise((resolve) => setImmediate(resolve))
const ownMethods = (s: Duplex) => ['write', 'end'].filter((k) => Object.prototype.hasOwnProperty.call(s, k))

describe('connackFirst', () => {
  it('passes a CONNACK written first straight through, then steps aside', async () => {
    const { stream, bytes } = sink()
    connackFirst(stream)
    assert.deepEqual(ownMethods(stream), ['write', 'end'])
    mqttPacket.writeToStream({ cmd: 'connack', returnCode: 0, sessionPresent: false }, stream)
    assert.deepEqual(ownMethods(stream), [], 'after the CONNACK the stream has its own write() and end() back')
    assert.ok(Object.is(Reflect.get(stream, 'write'), Reflect.get(Duplex.prototype, 'write')), 'the prototype write()')
    stream.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff])) // not parsed any more: even garbage passes
    await uncorked()
    assert.deepEqual(bytes(), Buffer.concat([mqttPacket.generate({ cmd: 'connack', returnCode: 0, sessionPresent: false }), Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff])]))
  })

  it('holds frames written field by field before the CONNACK and writes them right after it, in order', async () => {
    const { stream, bytes } = sink()
    connackFirst(stream)
    const p1 = { cmd: 'publish', topic: 'u/alice/m', payload: Buffer.alloc(10, 1), qos: 1, messageId: 1, retain: false, dup: false } as const
    const p2 = { ...p1, payload: Buffer.alloc(300, 2), messageId: 2 } // two-byte remaining length
    mqttPacket.writeToStream(p1, stream)
    mqttPacket.writeToStream(p2, stream)
    await uncorked()
    assert.equal(bytes().length, 0, 'nothing reaches the client before the CONNACK')
    mqttPacket.writeToStream({ cmd: 'connack', returnCode: 0, sessionPresent: true }, stream)
    mqttPacket.writeToStream({ ...p1, messageId: 3 }, stream)
    await uncorked()
    assert.deepEqual(
      packets(bytes()).map((p) => [p.cmd, p.messageId]),
      [['connack', undefined], ['publish', 1], ['publish', 2], ['publish', 3]]
    )
  })

  it('finds the CONNACK wherever the writes split the frames, down to single bytes', () => {
    const before = [publish(1, 5), publish(2, 200), publish(3, 20_000)] // 1-, 2- and 3-byte remaining lengths
    const after = publish(4, 3)
    const wire = Buffer.concat([...before, connack, after])
    const expected = Buffer.concat([connack, ...before, after])
    for (const size of [1, 2, 3, 5, 7, 64, 1000, wire.length]) {
      const { stream, bytes } = sink()
      connackFirst(stream)
      for (let i = 0; i < wire.length; i += size) stream.write(wire.subarray(i, i + size))
      assert.deepEqual(bytes(), expected, `writes of ${size} bytes`)
    }
  })

  it('splits one write that holds frames before, the CONNACK, and frames after', () => {
    const { stream, bytes } = sink()
    connackFirst(stream)
    const pingresp = mqttPacket.generate({ cmd: 'pingresp' }) // a frame with no body
    stream.write(Buffer.concat([publish(1, 4), pingresp, puback, connack, publish(2, 4)]))
    assert.deepEqual(packets(bytes()).map((p) => p.cmd), ['connack', 'publish', 'pingresp', 'puback', 'publish'])
    assert.deepEqual(ownMethods(stream), [])
  })

  it('handles a four-byte remaining length, and string chunks', () => {
    const { stream, bytes } = sink()
    connackFirst(stream)
    const big = publish(1, 2_100_000)
    assert.equal(big[4]! & 0x80, 0, 'a four-byte remaining length')
    assert.equal(big[3]! & 0x80, 0x80)
    stream.write(big.subarray(0, 3))
    stream.write(big.subarray(3))
    stream.write(Buffer.from([0x30, 0x03])) // a QoS 0 PUBLISH whose topic is written as a string, as mqtt-packet does
    stream.write('\u0000\u0001a', 'utf8')
    stream.write(connack)
    assert.deepEqual(bytes(), Buffer.concat([connack, big, Buffer.from([0x30, 0x03, 0x00, 0x01, 0x61])]))
  })

  it('propagates backpressure: asks the writer to wait past the high-water mark, drains after the CONNACK', async () => {
    const { stream, bytes, release } = sink({ highWaterMark: 100, hold: true })
    connackFirst(stream)
    const calledBack: number[] = []
    assert.equal(stream.write(publish(1, 40), () => calledBack.push(1)), true)
    assert.equal(stream.write(publish(2, 80), () => calledBack.push(2)), false, 'over the high-water mark: wait')
    const drained = new Promise<void>((resolve) => stream.once('drain', resolve))
    stream.write(connack)
    await new Promise((r) => setImmediate(r))
    assert.deepEqual(calledBack, [], 'held frames are called back once they are really written')
    release()
    await within(drained, 2000, "'drain' after the held frames went out")
    await new Promise((r) => setImmediate(r))
    assert.deepEqual(calledBack, [1, 2])
    assert.deepEqual(packets(bytes()).map((p) => p.messageId ?? 0), [0, 1, 2])
  })

  it("emits 'drain' itself when it asked the writer to wait and the stream took everything at once", async () => {
    const { stream, bytes } = sink({ highWaterMark: 100 })
    connackFirst(stream)
    assert.equal(stream.write(publish(1, 120)), false)
    let drains = 0
    stream.on('drain', () => drains++)
    assert.equal(stream.write(connack), true)
    await within(new Promise((r) => stream.once('drain', r)), 2000, "'drain'")
    assert.equal(drains, 1)
    assert.deepEqual(packets(bytes()).map((p) => p.cmd), ['connack', 'publish'])
  })

  it('drops what it holds when the connection is destroyed before a CONNACK, with errors to the callbacks', async () => {
    const { stream, bytes } = sink()
    connackFirst(stream)
    const errors: Array<Error | null | undefined> = []
    stream.write(publish(1, 10), (err) => errors.push(err))
    stream.destroy()
    await within(new Promise((r) => stream.once('close', r)), 2000, 'close')
    await new Promise((r) => setImmediate(r))
    assert.equal(errors.length, 1)
    assert.match(String(errors[0]?.message), /closed before CONNACK/)
    assert.equal(bytes().length, 0)
    assert.deepEqual(ownMethods(stream), [])
  })

  it('passes end() through, before and after the CONNACK', async () => {
    const a = sink()
    connackFirst(a.stream)
    a.stream.write(publish(1, 3))
    a.stream.end(connack) // the CONNACK in end(): held frames follow it, then the stream ends
    await within(new Promise((r) => a.stream.once('finish', r)), 2000, 'finish')
    assert.deepEqual(packets(a.bytes()).map((p) => p.cmd), ['connack', 'publish'])

    const b = sink()
    connackFirst(b.stream)
    b.stream.write(connack)
    b.stream.end(publish(2, 3))
    await within(new Promise((r) => b.stream.once('finish', r)), 2000, 'finish')
    assert.deepEqual(packets(b.bytes()).map((p) => p.cmd), ['connack', 'publish'])

    const c = sink()
    connackFirst(c.stream)
    c.stream.write(publish(3, 3))
    c.stream.end() // no CONNACK ever: nothing is sent
    await within(new Promise((r) => c.stream.once('finish', r)), 2000, 'finish')
    assert.equal(c.bytes().length, 0)
  })

  it('closes the connection on a malformed frame before the CONNACK', async () => {
    const { stream } = sink()
    connackFirst(stream)
    const closed = new Promise<Error | undefined>((resolve) => stream.once('error', resolve))
    stream.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff]))
    assert.match(String((await within(closed, 2000, 'error'))?.message), /malformed/)
  })

  it('lets mqtt.js connect when the server writes a PUBLISH before the CONNACK; without it mqtt.js deadlocks', async () => {
    // A server doing what Aedes does on a persistent-session reconnect with Redis persistence.
    let wrap = false
    const server = createServer((socket: Socket) => {
      const conn = wrap ? connackFirst(socket) : socket
      socket.once('data', () => {
        mqttPacket.writeToStream({ cmd: 'publish', topic: 'u/alice/m', payload: Buffer.from('early'), qos: 1, messageId: 9, retain: false, dup: false }, conn)
        mqttPacket.writeToStream({ cmd: 'connack', returnCode: 0, sessionPresent: true }, conn)
      })
      socket.on('error', () => undefined)
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`
    const attempt = (connectTimeout: number) => {
      const client = mqtt.connect(url, { clientId: 'alice:phone', clean: false, reconnectPeriod: 0, connectTimeout })
      const outcome = new Promise<{ connected: boolean; messages: string[]; error?: string }>((resolve) => {
        const messages: string[] = []
        client.on('message', (_t, payload) => messages.push(payload.toString()))
        client.once('connect', () => setImmediate(() => resolve({ connected: true, messages })))
        client.once('error', (err) => resolve({ connected: false, messages, error: err.message }))
      })
      return outcome.finally(() => client.end(true))
    }
    try {
      const without = await within(attempt(300), 5000, 'mqtt.js against the unwrapped server')
      assert.deepEqual(without, { connected: false, messages: ['early'], error: 'connack timeout' }, 'the bug: it saw the PUBLISH, never the CONNACK')
      wrap = true
      const withFix = await within(attempt(5000), 5000, 'mqtt.js against the wrapped server')
      assert.deepEqual(withFix, { connected: true, messages: ['early'] })
    } finally {
      server.close()
    }
  })
})
