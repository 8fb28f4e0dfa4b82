// Operating a cluster: the cluster view in Redis, wills of a killed node, draining on stop, and the
// bound on persistent sessions' queues (in memory and over Redis).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import mqtt, { type MqttClient } from 'mqtt'
import type { NodeRecord } from '../../broker/cluster-view.js'
import { BARE, eventually, startBroker, within, type BrokerProcess } from '../helpers/broker-process.js'
import { connectClient, startNode } from '../helpers/node.js'
import { redisDb } from '../helpers/services.js'

const uid = () => randomBytes(4).toString('hex')
const url = (b: BrokerProcess) => `mqtt://127.0.0.1:${b.ports.tcp}`
const cluster = async (b: BrokerProcess) =>
  (await (await fetch(`http://127.0.0.1:${b.ports.ops}/cluster`)).json()) as { self: string; nodes: NodeRecord[]; clients: number }

describe('a cluster as operators see it', () => {
  const redisUrl = redisDb(11)
  let a: BrokerProcess
  let b: BrokerProcess
  const clients: MqttClient[] = []
  before(async () => {
    ;[a, b] = await Promise.all([
      startBroker({ env: { ...BARE, REDIS_URL: redisUrl, PARLEY_NODE_NAME: 'view-a' } }),
      startBroker({ env: { ...BARE, REDIS_URL: redisUrl, PARLEY_NODE_NAME: 'view-b' } })
    ])
  })
  after(async () => {
    clients.forEach((c) => c.end(true))
    await Promise.all([a.stop(), b.stop()])
  })

  it('lists every live node with its clients, on every node', async () => {
    clients.push(await connectClient(url(a), { clientId: `va-${uid()}` }), await connectClient(url(a), { clientId: `va-${uid()}` }))
    clients.push(await connectClient(url(b), { clientId: `vb-${uid()}` }))
    const counts = async (node: BrokerProcess) => Object.fromEntries((await cluster(node)).nodes.map((n) => [n.nodeName, n.clients]))
    // Records are rewritten every heartbeat (2 s by default).
    await eventually(async () => JSON.stringify(await counts(b)) === JSON.stringify({ 'view-b': 1, 'view-a': 2 }), 15_000, 'b sees both nodes and their clients')
    const fromA = await cluster(a)
    assert.equal(fromA.self, a.brokerId)
    assert.deepEqual(fromA.nodes.map((n) => [n.brokerId, n.accepting]), [
      [a.brokerId, true],
      [b.brokerId, true]
    ])
    assert.equal(fromA.nodes[1]!.listeners.find((l) => l.name === 'tcp')?.port, b.ports.tcp)
  })

  it('publishes the wills of a killed node\'s clients from another node, and drops the node from the view', async () => {
    const willTopic = `wills/${uid()}`
    const watcher = await connectClient(url(a), { clientId: `watch-${uid()}` })
    clients.push(watcher)
    await watcher.subscribeAsync(willTopic, { qos: 1 })
    const will = new Promise<string>((resolve) => watcher.on('message', (topic, payload) => topic === willTopic && resolve(payload.toString())))
    const doomed = await connectClient(url(b), { clientId: `doomed-${uid()}`, reconnectPeriod: 0, will: { topic: willTopic, payload: Buffer.from('gone'), qos: 1, retain: false } })
    doomed.on('error', () => undefined)
    b.child.kill('SIGKILL')
    await b.exited
    // Aedes' heartbeat default is 60 s (wills after minutes); Parley's 2 s gives about 12 s.
    assert.equal(await within(will, 40_000, 'the will of a client of the killed node'), 'gone')
    await eventually(async () => (await cluster(a)).nodes.length === 1, 15_000, 'the dead node leaves the view')
    doomed.end(true)
  })

  it('takes back a node restarted with the same configuration, with the messages queued while it was down', async () => {
    // view-b was killed by the test before; a persistent session of it waits on the survivor meanwhile.
    const topic = `rejoin/${uid()}`
    const clientId = `persistent-${uid()}`
    const session = await connectClient(url(a), { clientId, clean: false })
    await session.subscribeAsync(topic, { qos: 1 })
    await session.endAsync()
    const sender = await connectClient(url(a), { clientId: `sender-${uid()}` })
    clients.push(sender)
    for (const n of [1, 2, 3]) await sender.publishAsync(topic, `queued ${n}`, { qos: 1 })

    b = await startBroker({ env: { ...BARE, REDIS_URL: redisUrl, PARLEY_NODE_NAME: 'view-b' } })
    await eventually(async () => (await cluster(a)).nodes.some((n) => n.brokerId === b.brokerId), 15_000, 'the restarted node joins the view')
    const got: string[] = []
    const back = mqtt.connect(url(b), { clientId, clean: false, reconnectPeriod: 0 })
    clients.push(back)
    back.on('message', (t, p) => t === topic && got.push(p.toString()))
    await eventually(() => got.length >= 3, 10_000, 'the queued messages, on the restarted node')
    assert.deepEqual([...new Set(got)].sort(), ['queued 1', 'queued 2', 'queued 3'])
    // And live traffic crosses between the survivor and the restarted node both ways.
    const live = `live/${uid()}`
    const onB = await connectClient(url(b), { clientId: `live-b-${uid()}` })
    clients.push(onB)
    await onB.subscribeAsync(live, { qos: 1 })
    const arrived = new Promise<string>((resolve) => onB.on('message', (_t, p) => resolve(p.toString())))
    await sender.publishAsync(live, 'from the survivor', { qos: 1 })
    assert.equal(await within(arrived, 10_000, 'a live message across nodes'), 'from the survivor')
  })
})

describe('draining a node on stop', () => {
  it('moves its clients away at the configured rate, then stops', async () => {
    const node = await startBroker({
      env: { ...BARE, REDIS_URL: redisDb(11), PARLEY_NODE_NAME: 'drainer', PARLEY_SHUTDOWN__DRAIN_RATE_PER_SECOND: '20' }
    })
    const closed: string[] = []
    const devices = await Promise.all(
      Array.from({ length: 10 }, async (_, i) => {
        const c = await connectClient(url(node), { clientId: `drain-${i}-${uid()}`, reconnectPeriod: 0 })
        c.on('close', () => closed.push(c.options.clientId!))
        return c
      })
    )
    const code = await node.stop('SIGTERM')
    assert.equal(code, 0)
    assert.equal(closed.length, 10, 'every client was disconnected')
    const drained = node.logs.find((l) => l.msg === 'drained')
    assert.deepEqual([drained?.moved, drained?.left], [10, 0], 'the drain moved them all before Aedes closed')
    devices.forEach((d) => d.end(true))
  })
})

describe('persistent session queues are bounded', () => {
  for (const [name, redis] of [
    ['in memory', undefined],
    ['over Redis', redisDb(12)]
  ] as const) {
    it(`queues at most mqtt.maxQueuedMessages for a device that is away (${name})`, async () => {
      const t = await startNode({ mqtt: { maxQueuedMessages: 5 }, ...(redis ? { redis: { url: redis } } : {}) })
      try {
        const topic = `queue/${uid()}`
        // A chat-style id: aedes-persistence-redis URI-encodes ":" in its keys, which the bound must follow.
        const clientId = `away${uid()}:phone`
        const away = await connectClient(t.mqttUrl, { clientId, clean: false })
        await away.subscribeAsync(topic, { qos: 1 })
        await away.endAsync()
        // Away for the broker too: a client it still holds would get them live, not queued.
        await eventually(() => t.node.connectedClients === 0, 5000, 'the broker saw the device leave')
        const sender = await connectClient(t.mqttUrl, { clientId: `sender-${uid()}` })
        for (let i = 1; i <= 8; i++) await sender.publishAsync(topic, `m${i}`, { qos: 1 })
        await sender.endAsync()
        // Aedes queues after the PUBACK: wait for the last three to be turned away before the device
        // comes back (a device that is back drains its queue, and then newer messages fit again).
        const dropped = async () => /parley_offline_queue_dropped_total 3\b/.test(await (await fetch(`http://127.0.0.1:${t.ops}/metrics`)).text())
        await eventually(dropped, 10_000, 'three messages not queued')

        const got: string[] = []
        const back = mqtt.connect(t.mqttUrl, { clientId, clean: false, reconnectPeriod: 0 })
        back.on('message', (_t, p) => got.push(p.toString()))
        await eventually(() => got.length >= 5, 10_000, 'the queued messages')
        // Then the queue is empty again: new messages are queued (and delivered) as usual.
        const again = await connectClient(t.mqttUrl, { clientId: `sender2-${uid()}` })
        await again.publishAsync(topic, 'after', { qos: 1 })
        await eventually(() => got.includes('after'), 10_000, 'a message after the drop')
        assert.deepEqual(got, ['m1', 'm2', 'm3', 'm4', 'm5', 'after'], 'the first five kept, the newer three not queued')
        assert.equal(await dropped(), true, 'and no more')
        await Promise.all([back.endAsync(), again.endAsync()])
      } finally {
        await t.stop()
      }
    })
  }
})
