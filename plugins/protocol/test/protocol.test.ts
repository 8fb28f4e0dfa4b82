import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import type { MqttClient } from 'mqtt'
import { z } from 'zod'
import { definePlugin, type PluginContext } from '../../../broker/plugin-api.js'
import { eventually } from '../../../test/helpers/broker-process.js'
import { connectClient, nextMessage, startNode, type TestNode } from '../../../test/helpers/node.js'
import type { ProtocolApi } from '../index.js'
import { MembershipCache } from '../membership.js'

describe('membership cache', () => {
  it('reuses answers within the TTL, forgets on invalidation, and stays bounded', async () => {
    let asked = 0
    const cache = new MembershipCache(60_000, 3)
    cache.setSource(async (g, u) => {
      asked++
      return g === 'g1' && u === 'alice'
    })
    assert.equal(await cache.check('g1', 'alice'), true)
    assert.equal(await cache.check('g1', 'alice'), true)
    assert.equal(asked, 1, 'second answer from the cache')
    cache.invalidate('g1', 'alice')
    await cache.check('g1', 'alice')
    assert.equal(asked, 2)
    await cache.check('g1', 'bob')
    await cache.check('g2', 'alice')
    await cache.check('g3', 'alice')
    assert.equal(cache.size, 3, 'the oldest entry was evicted')
    cache.invalidate('g1')
    assert.equal(cache.size, 2, 'a whole group forgotten')
  })
})

/** Subscribes a device to its tree and records what it receives. */
async function device(t: TestNode, user: string, dev: string): Promise<{ client: MqttClient; got: Array<{ topic: string; body: unknown }> }> {
  const client = await connectClient(t.mqttUrl, { clientId: `${user}:${dev}` })
  const got: Array<{ topic: string; body: unknown }> = []
  client.on('message', (topic, payload) => got.push({ topic, body: JSON.parse(payload.toString()) as unknown }))
  await client.subscribeAsync(`u/${user}/#`, { qos: 1 })
  return { client, got }
}

describe('protocol plugin', () => {
  let t: TestNode
  let server: PluginContext | undefined
  let protocol: ProtocolApi | undefined
  const members = new Set(['team:alice'])
  let lookups = 0

  before(async () => {
    // Stands in for the groups and messages plugins that build on this API.
    const groups = definePlugin({
      name: 'test-groups',
      dependencies: ['protocol'],
      register(ctx) {
        server = ctx
        protocol = ctx.dependency('protocol')
        protocol.setMembershipSource(async (g, u) => {
          lookups++
          return members.has(`${g}:${u}`)
        })
        protocol.registerMethod('groups.count', {
          params: z.object({ group: z.string() }).strict(),
          handler: async (_device, params) => ({ members: [...members].filter((m) => m.startsWith(`${params.group}:`)).length })
        })
        protocol.registerMethod('explode', { params: z.object({}), handler: async () => Promise.reject(new Error('boom')) })
      }
    })
    t = await startNode({ plugins: ['protocol', 'test-groups'] }, { 'test-groups': async () => groups })
  })
  after(async () => t?.stop())

  it('delivers a user\'s tree to every device of that user and to nobody else', async () => {
    const phone = await device(t, 'alice', 'phone')
    const tablet = await device(t, 'alice', 'tablet')
    const bob = await device(t, 'bob', 'phone')
    const marker = nextMessage(bob.client, 'u/bob/e')
    await server!.publish({ topic: 'u/alice/m', payload: JSON.stringify({ n: 1 }), qos: 1 })
    await server!.publish({ topic: 'u/bob/e', payload: JSON.stringify({ n: 2 }), qos: 1 })
    await marker
    await eventually(() => phone.got.length === 1 && tablet.got.length === 1, 5000, 'both alice devices got u/alice/m')
    assert.deepEqual(bob.got.map((g) => g.topic), ['u/bob/e'])
    await Promise.all([phone.client.endAsync(), tablet.client.endAsync(), bob.client.endAsync()])
  })

  it('keeps device topics to their device, even on a shared wildcard subscription', async () => {
    const phone = await device(t, 'carol', 'phone')
    const tablet = await device(t, 'carol', 'tablet')
    const gotTablet = nextMessage(tablet.client, 'u/carol/d/tablet/res')
    await server!.publish({ topic: 'u/carol/d/tablet/res', payload: JSON.stringify({ id: 'x', ok: true, result: null }), qos: 1 })
    await gotTablet
    // The phone's own response proves its queue has drained past the tablet's message.
    const pong = nextMessage(phone.client, 'u/carol/d/phone/res')
    await phone.client.publishAsync('s/rpc', JSON.stringify({ id: 'p', method: 'ping' }), { qos: 1 })
    await pong
    assert.deepEqual(phone.got.map((g) => g.topic), ['u/carol/d/phone/res'])
    await Promise.all([phone.client.endAsync(), tablet.client.endAsync()])
  })

  it('dispatches requests to registered methods and answers errors precisely', async () => {
    const { client } = await device(t, 'dave', 'phone')
    const call = async (id: string, method: string, params?: object) => {
      const answer = nextMessage(client, 'u/dave/d/phone/res')
      await client.publishAsync('s/rpc', JSON.stringify({ id, method, ...(params ? { params } : {}) }), { qos: 1 })
      return JSON.parse((await answer).payload) as unknown
    }
    assert.deepEqual(await call('1', 'groups.count', { group: 'team' }), { id: '1', ok: true, result: { members: 1 } })
    assert.deepEqual(await call('2', 'groups.count', { group: 7 }), {
      id: '2',
      ok: false,
      error: { code: 'invalid_params', message: 'group: Invalid input: expected string, received number' }
    })
    assert.deepEqual(await call('3', 'nope'), { id: '3', ok: false, error: { code: 'unknown_method', message: 'no method "nope"' } })
    assert.deepEqual(await call('4', 'explode'), {
      id: '4',
      ok: false,
      error: { code: 'internal', message: 'the server could not complete the request' }
    })
    assert.throws(() => protocol!.registerMethod('ping', { params: z.object({}), handler: async () => null }), /already registered/)
    await client.endAsync()
  })

  it('opens group topics to members only, caching the lookup and invalidating it cluster-wide', async () => {
    const alice = await device(t, 'alice', 'laptop')
    const send = (cmid: string) => alice.client.publishAsync('s/g/team', JSON.stringify({ cmid, body: 'hi' }), { qos: 1 })
    members.delete('team:alice')
    await protocol!.invalidateMembership('team')
    await eventually(async () => {
      const before = alice.got.length
      await send(`probe${before}`)
      const pong = nextMessage(alice.client, 'u/alice/d/laptop/res')
      await alice.client.publishAsync('s/rpc', JSON.stringify({ id: `z${before}`, method: 'ping' }), { qos: 1 })
      await pong
      return alice.got.some((g) => (g.body as { code?: string }).code === 'not_a_member')
    }, 5000, 'a non-member is refused')
    const refused = alice.got.find((g) => (g.body as { code?: string }).code === 'not_a_member')!
    assert.equal(refused.topic, 'u/alice/d/laptop/err')
    assert.deepEqual((refused.body as { ref: object }).ref, { topic: 's/g/team', cmid: (refused.body as { ref: { cmid: string } }).ref.cmid })

    members.add('team:alice')
    const lookupsBefore = lookups
    await send('cached')
    assert.equal(lookups, lookupsBefore, 'the cached "no" is reused until invalidated')
    await protocol!.invalidateMembership('team', 'alice')
    await eventually(async () => {
      alice.got.length = 0
      await send('after')
      const pong = nextMessage(alice.client, 'u/alice/d/laptop/res')
      await alice.client.publishAsync('s/rpc', JSON.stringify({ id: 'zz', method: 'ping' }), { qos: 1 })
      await pong
      return !alice.got.some((g) => g.topic.endsWith('/err'))
    }, 5000, 'the member is accepted after invalidation')
    await alice.client.endAsync()
  })
})
