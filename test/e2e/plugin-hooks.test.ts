// The plugin host's hooks driven by real MQTT clients against an in-process node.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import type { MqttClient } from 'mqtt'
import { ConnackCode, definePlugin, type PluginContext } from '../../broker/plugin-api.js'
import { eventually } from '../helpers/broker-process.js'
import { connackCode, connectClient, nextMessage, startNode, type TestNode } from '../helpers/node.js'

describe('hooks over real MQTT', () => {
  let t: TestNode
  const events: string[] = []
  let ctxRef: PluginContext | undefined
  let healthy = true

  const auth = definePlugin({
    name: 'test-auth',
    register(ctx) {
      ctx.hook('connect', (_client, packet) => {
        if (packet.clientId.startsWith('dropme')) throw new Error('refused before authentication')
      })
      ctx.hook('authenticate', (client, { username, password }) => {
        if (username === 'crash') throw new Error('identity provider down')
        if (username === 'slow') return new Promise(() => undefined)
        if (username === 'anon') return undefined
        if (password?.toString() !== 'right') return { ok: false, code: ConnackCode.BadUsernameOrPassword, reason: 'wrong password' }
        return { ok: true, principal: { subject: username ?? client.id, attributes: { device: client.id } } }
      })
    }
  })

  const observer = definePlugin({
    name: 'test-observer',
    dependencies: ['test-auth'],
    register(ctx) {
      ctxRef = ctx
      ctx.hook('authorizePublish', (client, packet) => {
        // The principal set by test-auth is visible to later hooks.
        const who = ctx.principal(client)
        if (packet.topic === 'whoami') packet.payload = Buffer.from(`${who?.subject}/${String(who?.attributes.device)}`)
      })
      ctx.hook('authorizePublish', (_client, packet) =>
        packet.topic.startsWith('reject/') ? { reject: 'test_code', message: 'rejected for the test' } : undefined
      )
      ctx.hook('publishRejected', (client, packet, rejection) =>
        void events.push(`rejected:${client.id}:${packet.topic}:${rejection.reject}:${rejection.plugin}`)
      )
      ctx.hook('authorizeSubscribe', (_client, sub) => (sub.topic === 'hang' ? new Promise(() => undefined) : undefined))
      ctx.hook('clientReady', (client) => void events.push(`ready:${client.id}`))
      ctx.hook('subscribed', (client, subs) => void events.push(`subscribed:${client.id}:${subs.map((s) => `${s.topic}@${s.qos}`).join(',')}`))
      ctx.hook('deliveryAck', (client, packet) => void events.push(`ack:${client.id}:${packet && 'topic' in packet ? packet.topic : '?'}`))
      ctx.hook('published', (packet, client) => {
        if (client && !packet.topic.startsWith('$')) events.push(`published:${client.id}:${packet.topic}`)
      })
      ctx.hook('clientDisconnect', async (client) => {
        await new Promise((r) => setTimeout(r, 20))
        events.push(`disconnect:${client.id}`)
      })
      ctx.hook('shutdown', () => void events.push('shutdown'))
      ctx.readiness('downstream', async () => {
        if (!healthy) throw new Error('downstream unavailable')
      })
      ctx.route({ method: 'GET', url: '/plugins/test-observer/events', handler: async () => ({ events }) })
    }
  })

  before(async () => {
    t = await startNode(
      { mqtt: { allowAnonymous: false, hookTimeoutMs: 200 }, plugins: ['test-observer', 'test-auth'] },
      { 'test-auth': async () => auth, 'test-observer': async () => observer }
    )
  })
  after(async () => {
    if (t) await t.stop()
  })

  it('answers CONNECT with the code the authenticate chain decides', async () => {
    assert.equal(await connackCode(t.mqttUrl, { clientId: 'c-ok', username: 'alice', password: 'right' }), 0)
    assert.equal(await connackCode(t.mqttUrl, { clientId: 'c-bad', username: 'alice', password: 'wrong' }), 4)
    assert.equal(await connackCode(t.mqttUrl, { clientId: 'c-crash', username: 'crash', password: 'x' }), 3, 'a throw fails closed')
    assert.equal(await connackCode(t.mqttUrl, { clientId: 'c-slow', username: 'slow', password: 'x' }), 3, 'a timeout fails closed')
    assert.equal(await connackCode(t.mqttUrl, { clientId: 'c-anon', username: 'anon' }), 5, 'nobody vouched and anonymous is off')
    assert.equal(await connackCode(t.mqttUrl, { clientId: 'dropme-1', username: 'alice', password: 'right' }), 'closed', 'connect hook drops the socket')
    assert.equal(
      await connackCode(t.mqttUrl, {
        clientId: 'c-will',
        username: 'alice',
        password: 'right',
        will: { topic: '$parley/deliver', payload: Buffer.from('{}'), qos: 0, retain: false }
      }),
      5,
      'a will on a reserved topic is refused at CONNECT'
    )
  })

  it('shows later hooks the principal the authenticate chain established', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: 'phone-1', username: 'alice', password: 'right' })
    await c.subscribeAsync('whoami')
    const got = nextMessage(c)
    await c.publishAsync('whoami', 'ignored', { qos: 1 })
    assert.equal((await got).payload, 'alice/phone-1')
    await c.endAsync()
  })

  it('denies a subscription whose hook does not answer in time, and keeps the client', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: 'sub-1', username: 'bob', password: 'right' })
    await assert.rejects(c.subscribeAsync('hang'), /Subscribe error/)
    assert.deepEqual((await c.subscribeAsync('fine', { qos: 1 })).map((g) => g.qos), [1])
    await c.endAsync()
  })

  it('notifies ready, subscribed, published, delivery ack and disconnect', async () => {
    const sub = await connectClient(t.mqttUrl, { clientId: 'obs-sub', username: 'bob', password: 'right', clean: false })
    const pub = await connectClient(t.mqttUrl, { clientId: 'obs-pub', username: 'carol', password: 'right' })
    await sub.subscribeAsync('obs/t', { qos: 1 })
    const got = nextMessage(sub)
    await pub.publishAsync('obs/t', 'm', { qos: 1 })
    await got
    await Promise.all([sub.endAsync(), pub.endAsync()])
    for (const e of [
      'ready:obs-sub',
      'subscribed:obs-sub:obs/t@1',
      'published:obs-pub:obs/t',
      'ack:obs-sub:obs/t',
      'disconnect:obs-sub',
      'disconnect:obs-pub'
    ]) {
      await eventually(() => events.includes(e), 5000, e)
    }
    const res = await fetch(`http://127.0.0.1:${t.ops}/plugins/test-observer/events`)
    assert.ok(((await res.json()) as { events: string[] }).events.includes('ready:obs-sub'), 'plugin route served')
  })

  it('acknowledges a rejected publish, delivers it nowhere, and reports it', async () => {
    const watcher = await connectClient(t.mqttUrl, { clientId: 'rej-watch', username: 'w', password: 'right' })
    await watcher.subscribeAsync('reject/#', { qos: 1 })
    await watcher.subscribeAsync('marker', { qos: 1 })
    let leaked = 0
    watcher.on('message', (topic) => {
      if (topic.startsWith('reject/')) leaked++
    })
    const c = await connectClient(t.mqttUrl, { clientId: 'rej-pub', username: 'r', password: 'right' })
    await c.publishAsync('reject/this', 'x', { qos: 1 }) // resolves on PUBACK: the client will not retry
    await c.publishAsync('reject/retained', 'x', { qos: 0, retain: true })
    const marker = nextMessage(watcher, 'marker')
    await c.publishAsync('marker', 'after', { qos: 1 })
    await marker
    assert.equal(leaked, 0, 'no subscriber received the rejected publishes')
    assert.equal(c.connected, true, 'the publisher stays connected')
    await eventually(() => events.includes('rejected:rej-pub:reject/this:test_code:test-observer'), 5000, 'publishRejected')
    const late = await connectClient(t.mqttUrl, { clientId: 'rej-late', username: 'l', password: 'right' })
    let retained = 0
    late.on('message', () => retained++)
    await late.subscribeAsync('reject/#', { qos: 1 })
    const m2 = nextMessage(late, 'marker')
    await late.subscribeAsync('marker', { qos: 1 })
    await c.publishAsync('marker', 'again', { qos: 1 })
    await m2
    assert.equal(retained, 1, 'only the marker arrived: a rejected retained publish is not stored')
    await Promise.all([watcher.endAsync(), c.endAsync(), late.endAsync()])
  })

  it('publishes as the broker for plugins', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: 'listener', username: 'dan', password: 'right' })
    await c.subscribeAsync('announce/#', { qos: 1 })
    const got = nextMessage(c)
    await ctxRef!.publish({ topic: 'announce/all', payload: 'from a plugin', qos: 1 })
    assert.deepEqual(await got, { topic: 'announce/all', payload: 'from a plugin' })
    await c.endAsync()
  })

  it('reports a plugin readiness check on /readyz', async () => {
    healthy = false
    const down = await fetch(`http://127.0.0.1:${t.ops}/readyz`)
    const body = (await down.json()) as { status: string; checks: Record<string, { ok: boolean; error?: string }> }
    assert.equal(down.status, 503)
    assert.equal(body.status, 'not ready')
    assert.equal(body.checks['test-observer:downstream']?.ok, false)
    assert.equal(body.checks['test-observer:downstream']?.error, 'downstream unavailable')
    healthy = true
    assert.equal((await fetch(`http://127.0.0.1:${t.ops}/readyz`)).status, 200)
  })

  it('waits for disconnect handlers before running shutdown hooks', async () => {
    const c: MqttClient = await connectClient(t.mqttUrl, { clientId: 'last-one', username: 'eve', password: 'right' })
    c.on('error', () => undefined)
    await t.stop()
    t = undefined as unknown as TestNode
    const i = events.indexOf('disconnect:last-one')
    assert.ok(i >= 0, 'the disconnect hook ran')
    assert.ok(events.indexOf('shutdown') > i, 'shutdown came after it')
    c.end(true)
  })
})
