// Two broker processes clustered through a real Redis (mqemitter-redis + aedes-persistence-redis).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import mqtt from 'mqtt'
import { definePlugin } from '../../broker/plugin-api.js'
import { BARE, eventually, startBroker, type BrokerProcess } from '../helpers/broker-process.js'
import { connectClient, nextMessage, startNode, type TestNode } from '../helpers/node.js'
import type { Receipt } from '../../schemas/protocol.js'
import { testDevice } from '../helpers/device.js'
import { mongoUrl, redisDb } from '../helpers/services.js'

const uid = () => randomBytes(4).toString('hex')

describe('two broker processes over Redis', () => {
  const redisUrl = redisDb(1)
  let a: BrokerProcess
  let b: BrokerProcess
  before(async () => {
    ;[a, b] = await Promise.all([
      startBroker({ env: { ...BARE, REDIS_URL: redisUrl, PARLEY_NODE_NAME: 'node-a' } }),
      startBroker({ env: { ...BARE, REDIS_URL: redisUrl, PARLEY_NODE_NAME: 'node-b' } })
    ])
  })
  after(async () => {
    await Promise.all([a.stop(), b.stop()])
  })

  it('are ready only with their cluster connections up, and say so', async () => {
    for (const node of [a, b]) {
      const res = await fetch(`http://127.0.0.1:${node.ports.ops}/readyz`)
      const body = (await res.json()) as { status: string; checks: Record<string, { ok: boolean }> }
      assert.equal(res.status, 200, JSON.stringify(body))
      assert.equal(body.checks.redis?.ok, true)
      assert.equal(body.checks.cluster?.ok, true)
    }
    assert.notEqual(a.brokerId, b.brokerId)
  })

  it('deliver a message published on one node to a subscriber on the other, both ways', async () => {
    const t = `cluster/${uid()}`
    const onA = await connectClient(`mqtt://127.0.0.1:${a.ports.tcp}`, { clientId: `a-${uid()}` })
    const onB = await connectClient(`ws://127.0.0.1:${b.ports.ws}/mqtt`, { clientId: `b-${uid()}` })
    await onA.subscribeAsync(`${t}/to-a`, { qos: 1 })
    await onB.subscribeAsync(`${t}/to-b`, { qos: 1 })
    const gotA = nextMessage(onA)
    await onB.publishAsync(`${t}/to-a`, 'from b', { qos: 1 })
    assert.deepEqual(await gotA, { topic: `${t}/to-a`, payload: 'from b' })
    const gotB = nextMessage(onB)
    await onA.publishAsync(`${t}/to-b`, 'from a', { qos: 1 })
    assert.deepEqual(await gotB, { topic: `${t}/to-b`, payload: 'from a' })
    await Promise.all([onA.endAsync(), onB.endAsync()])
  })

  it('keep a persistent session in Redis: queued on one node, delivered on reconnect to the other', async () => {
    const clientId = `persistent-${uid()}`
    const topic = `queue/${uid()}`
    const first = await connectClient(`mqtt://127.0.0.1:${a.ports.tcp}`, { clientId, clean: false })
    await first.subscribeAsync(topic, { qos: 1 })
    await first.endAsync()

    const pub = await connectClient(`mqtt://127.0.0.1:${b.ports.tcp}`, { clientId: `pub-${uid()}` })
    await pub.publishAsync(topic, 'while you were away', { qos: 1 })
    await pub.endAsync()

    // Listen before connecting: the queued message may arrive right after CONNACK.
    const again = mqtt.connect(`mqtt://127.0.0.1:${b.ports.tcp}`, { clientId, clean: false, manualConnect: true, reconnectPeriod: 0 })
    const got = nextMessage(again)
    const connack = new Promise<boolean>((resolve) => again.once('connect', (p) => resolve(p.sessionPresent)))
    again.connect()
    assert.equal(await connack, true, 'the session is known on the other node')
    assert.deepEqual(await got, { topic, payload: 'while you were away' })
    await again.endAsync()
  })

  it('close the old connection when the same client id connects to another node', async () => {
    const clientId = `takeover-${uid()}`
    const old = await connectClient(`mqtt://127.0.0.1:${a.ports.tcp}`, { clientId })
    const oldClosed = new Promise<void>((resolve) => old.once('close', () => resolve()))
    const fresh = await connectClient(`mqtt://127.0.0.1:${b.ports.tcp}`, { clientId })
    await oldClosed
    assert.equal(fresh.connected, true)
    old.end(true)
    await fresh.endAsync()
  })
})

describe('plugin deliver() across nodes', () => {
  let a: TestNode
  let b: TestNode
  let sendFromB: (clientId: string, payload: string) => Promise<string>
  let broadcastFromB: (data: unknown) => Promise<void>
  const heard: Array<{ node: string; data: unknown }> = []
  before(async () => {
    const redis = { url: redisDb(3) }
    // Node a runs its own 'courier' (same plugin name, so same channels) and an unrelated plugin
    // that uses the same channel name.
    const courierA = definePlugin({
      name: 'courier',
      register: (ctx) => ctx.cluster.subscribe('news', (data) => void heard.push({ node: 'a', data }))
    })
    const other = definePlugin({
      name: 'other',
      register: (ctx) => ctx.cluster.subscribe('news', (data) => void heard.push({ node: 'a:other', data }))
    })
    a = await startNode({ redis, plugins: ['courier', 'other'] }, { courier: async () => courierA, other: async () => other })
    const courier = definePlugin({
      name: 'courier',
      register: (ctx) => {
        sendFromB = (clientId, payload) => ctx.deliver(clientId, { topic: `direct/${clientId}`, payload, qos: 1 })
        broadcastFromB = (data) => ctx.cluster.broadcast('news', data)
        ctx.cluster.subscribe('news', (data) => void heard.push({ node: 'b', data }))
      }
    })
    b = await startNode({ redis, plugins: ['courier'] }, { courier: async () => courier })
  })
  after(async () => {
    await Promise.all([a.stop(), b.stop()])
  })

  it('carries cluster channel broadcasts to every node, sender included, scoped by plugin', async () => {
    await broadcastFromB({ group: 'g1', change: 'member-added' })
    await eventually(() => heard.length >= 2, 5000, 'both nodes heard')
    // A marker broadcast proves nothing else is still on its way.
    await broadcastFromB('marker')
    await eventually(() => heard.length >= 4, 5000, 'marker heard')
    assert.deepEqual(heard.map((h) => h.node).sort(), ['a', 'a', 'b', 'b'], 'the same channel name in another plugin is another channel')
    assert.deepEqual(heard.find((h) => h.node === 'a')?.data, { group: 'g1', change: 'member-added' })
  })

  it('reaches a client connected to another node, and only that client', async () => {
    const target = `target-${uid()}`
    const bystander = `bystander-${uid()}`
    const onA = await connectClient(a.mqttUrl, { clientId: target })
    const other = await connectClient(a.mqttUrl, { clientId: bystander })
    await onA.subscribeAsync(`direct/${target}`, { qos: 1 })
    await other.subscribeAsync('#', { qos: 1 })
    let bystanderGot = 0
    other.on('message', () => bystanderGot++)
    // deliver() sends to the client itself, whatever it subscribed to.
    const got = nextMessage(onA)
    assert.equal(await sendFromB(target, 'just for you'), 'forwarded')
    assert.deepEqual(await got, { topic: `direct/${target}`, payload: 'just for you' })

    const local = await connectClient(b.mqttUrl, { clientId: `local-${uid()}` })
    const gotLocal = nextMessage(local)
    assert.equal(await sendFromB(local.options.clientId!, 'same node'), 'local')
    assert.equal((await gotLocal).payload, 'same node')
    // A marker through normal publish proves the bystander's subscription works and came after.
    const marker = nextMessage(other, 'marker')
    await local.publishAsync('marker', 'm', { qos: 1 })
    await marker
    assert.equal(bystanderGot, 1, 'the bystander saw only the marker, not the direct deliveries')
    await Promise.all([onA.endAsync(), other.endAsync(), local.endAsync()])
  })
})

describe('messages across two nodes (Redis cluster, MongoDB store)', () => {
  let a: TestNode
  let b: TestNode
  before(async () => {
    const shared = {
      redis: { url: redisDb(5) },
      mongo: { url: mongoUrl(), database: `parley_cluster_${uid()}` },
      plugins: ['protocol', 'groups', 'messages']
    }
    ;[a, b] = await Promise.all([startNode(shared), startNode(shared)])
  })
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()])
  })

  it('stores once and delivers to the recipient and the sender\'s other device on the other node', async () => {
    const alice = `alice${uid()}`
    const bob = `bob${uid()}`
    const onA = await connectClient(a.mqttUrl, { clientId: `${alice}:phone` })
    const aliceTablet = await connectClient(b.mqttUrl, { clientId: `${alice}:tablet` })
    const bobPhone = await connectClient(b.mqttUrl, { clientId: `${bob}:phone` })
    await aliceTablet.subscribeAsync(`u/${alice}/#`, { qos: 1 })
    await bobPhone.subscribeAsync(`u/${bob}/#`, { qos: 1 })
    const toBob = nextMessage(bobPhone, `u/${bob}/m`)
    const carbon = nextMessage(aliceTablet, `u/${alice}/m`)
    await onA.publishAsync(`s/dm/${bob}`, JSON.stringify({ cmid: 'x1', body: 'across nodes' }), { qos: 1 })
    const [got, copy] = [JSON.parse((await toBob).payload) as { seq: number; body: string; conversation: object }, JSON.parse((await carbon).payload) as { seq: number; conversation: object }]
    assert.deepEqual([got.seq, got.body, got.conversation], [1, 'across nodes', { kind: 'dm', id: alice }])
    assert.deepEqual([copy.seq, copy.conversation], [1, { kind: 'dm', id: bob }])
    // Bob answers from node B: the same conversation continues at seq 2, whichever node stores it.
    const reply = nextMessage(aliceTablet, `u/${alice}/m`)
    await bobPhone.publishAsync(`s/dm/${alice}`, JSON.stringify({ cmid: 'y1', body: 'got it' }), { qos: 1 })
    assert.equal((JSON.parse((await reply).payload) as { seq: number }).seq, 2)
    await Promise.all([onA.endAsync(), aliceTablet.endAsync(), bobPhone.endAsync()])
  })

  it('carries receipts, read markers, group messages and answers to the right device across nodes', async () => {
    const [cy, di, ed] = [`cy${uid()}`, `di${uid()}`, `ed${uid()}`]
    const cyPhone = await testDevice(a.mqttUrl, cy, 'phone')
    const cyLaptop = await testDevice(b.mqttUrl, cy, 'laptop')
    const diPhone = await testDevice(b.mqttUrl, di, 'phone', { clean: false })
    const edPhone = await testDevice(a.mqttUrl, ed, 'phone')
    await cyPhone.send({ dm: di }, { cmid: 'c1', body: 'hi from node A' })
    // Delivered from di's PUBACK on node B, read marker on node B: both reach cy's devices on A and B.
    await eventually(() => cyPhone.receipts.some((r) => r.kind === 'delivered' && r.upToSeq === 1), 10_000, 'delivered receipt on A')
    await diPhone.publish('s/read', { conversation: { kind: 'dm', id: cy }, seq: 1 })
    for (const d of [cyPhone, cyLaptop]) await eventually(() => d.receipts.some((r: Receipt) => r.kind === 'read'), 10_000, 'read receipt on both nodes')
    const { id: group } = await cyLaptop.call<{ id: string }>('groups.create', { name: 'Across', members: [di, ed] })
    await edPhone.send({ g: group }, { cmid: 'e1', body: 'group from A' })
    for (const d of [cyPhone, cyLaptop, diPhone]) await eventually(() => d.messages.some((m) => m.body === 'group from A'), 10_000, 'group message on every node')
    // Requests from two devices of one user on two nodes: each answer reaches only its asker.
    const [onA, onB] = await Promise.all([
      cyPhone.call<{ conversations: unknown[] }>('conversations.list'),
      cyLaptop.call<{ fresh?: boolean }>('messages.pull')
    ])
    assert.equal(onA.conversations.length, 2)
    assert.equal(onB.fresh, true)
    await Promise.all([cyPhone, cyLaptop, diPhone, edPhone].map((d) => d.end()))
  })
})
