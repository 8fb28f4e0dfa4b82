// patches/aedes+1.2.0.patch: Aedes's per-client dedupe by broker counter.
// Unpatched, Aedes 1.2.0 drops a QoS 1 packet to a persistent session whenever a later QoS 0 packet
// of the same broker reaches the client first (the QoS 1 one waits for its offline-queue write,
// slow over Redis). These tests slow the queue write down the way Redis does and check that both
// packets arrive, and that a packet matching two subscriptions of one client still arrives once.
import assert from 'node:assert/strict'
import { createServer, type AddressInfo } from 'node:net'
import { describe, it } from 'node:test'
import { Aedes } from 'aedes'
import * as memoryPersistenceModule from 'aedes-persistence'
import mqtt from 'mqtt'
import { within } from '../helpers/broker-process.js'

type Persistence = Record<string, unknown> & { outgoingEnqueueCombi(subs: unknown, packet: unknown): Promise<void> }
const memoryPersistence = ((memoryPersistenceModule as { default?: unknown }).default ??
  memoryPersistenceModule) as unknown as () => Persistence

/** The in-memory persistence with offline-queue writes delayed by `delayMs`, as over a network. */
function slowQueuePersistence(delayMs: number): Persistence {
  const persistence = memoryPersistence()
  const enqueue = persistence.outgoingEnqueueCombi.bind(persistence)
  persistence.outgoingEnqueueCombi = async (subs, packet) => {
    await new Promise((resolve) => setTimeout(resolve, delayMs))
    await enqueue(subs, packet)
  }
  return persistence
}

async function startBroker(persistence: Persistence) {
  const aedes = await Aedes.createBroker({ persistence: persistence as never })
  const server = createServer(aedes.handle)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    aedes,
    url,
    stop: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
    }
  }
}

async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 10))
}

const publish = (aedes: Aedes, topic: string, payload: string, qos: 0 | 1) =>
  new Promise<void>((resolve, reject) =>
    aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(payload), qos, retain: false, dup: false } as never, (err) =>
      err ? reject(err) : resolve()
    )
  )

describe('Aedes dedupe (patched)', () => {
  it('a QoS 1 packet overtaken by a later QoS 0 packet still reaches a persistent session', { timeout: 20_000 }, async () => {
    const broker = await startBroker(slowQueuePersistence(30))
    const client = mqtt.connect(broker.url, { clientId: 'dedupe-persistent', clean: false, reconnectPeriod: 0 })
    try {
      await within(new Promise((resolve) => client.once('connect', resolve)), 5000, 'connect')
      await within(client.subscribeAsync('t/#', { qos: 1 }), 5000, 'subscribe')
      const received: string[] = []
      client.on('message', (_topic, payload) => received.push(payload.toString()))
      const rounds = 50
      // Not awaited in turn: each QoS 1 packet's queue write is still pending when its QoS 0 follower goes out.
      const sent: Array<Promise<void>> = []
      for (let i = 0; i < rounds; i++) {
        sent.push(publish(broker.aedes, 't/a', `q1-${i}`, 1))
        sent.push(publish(broker.aedes, 't/a', `q0-${i}`, 0))
      }
      await within(Promise.all(sent), 5000, 'publishes')
      await within(until(() => received.length >= 2 * rounds), 5000, `all ${2 * rounds} packets live`)
      const qos1 = received.filter((p) => p.startsWith('q1-'))
      assert.equal(qos1.length, rounds, 'every QoS 1 packet delivered live, none dropped as a duplicate')
      assert.equal(new Set(received).size, received.length, 'no packet twice')
      // the QoS 0 ones overtook: the order differs from the publish order (what the unpatched dedupe punished)
      assert.ok(received.indexOf('q0-0') < received.indexOf('q1-0'), `QoS 0 first, as over Redis: ${received.slice(0, 4).join(',')}`)
    } finally {
      await client.endAsync(true)
      await broker.stop()
    }
  })

  it('a packet matching two subscriptions of one client is delivered once', { timeout: 20_000 }, async () => {
    const broker = await startBroker(memoryPersistence())
    const client = mqtt.connect(broker.url, { clientId: 'dedupe-overlap', clean: true, reconnectPeriod: 0 })
    try {
      await within(new Promise((resolve) => client.once('connect', resolve)), 5000, 'connect')
      await within(client.subscribeAsync({ 'o/#': { qos: 1 }, 'o/x': { qos: 1 } }), 5000, 'subscribe')
      const received: string[] = []
      client.on('message', (_topic, payload) => received.push(payload.toString()))
      for (let i = 0; i < 300; i++) await publish(broker.aedes, 'o/x', `m${i}`, i % 2 === 0 ? 1 : 0)
      await within(until(() => received.length >= 300), 5000, 'all 300 delivered')
      await new Promise((resolve) => setTimeout(resolve, 200))
      assert.equal(received.length, 300, 'each packet once although two subscriptions match it')
    } finally {
      await client.endAsync(true)
      await broker.stop()
    }
  })
})
