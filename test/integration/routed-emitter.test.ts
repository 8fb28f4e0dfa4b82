// The cluster emitter's routing channels against a real Redis: user trees ride exact channels,
// every subscriber still gets exactly what plain topic matching gives it.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, describe, it } from 'node:test'
import { Redis } from 'ioredis'
import mqemitterRedis from 'mqemitter-redis'
import { routeOf, routeByUser, subscriptionOf } from '../../broker/routed-emitter.js'
import { eventually } from '../helpers/broker-process.js'
import { redisDb } from '../helpers/services.js'

interface Emitter {
  on(topic: string, cb: (packet: { topic: string; payload: string }, done: () => void) => void, ready?: () => void): void
  removeListener(topic: string, cb: (packet: { topic: string }, done: () => void) => void, done?: () => void): void
  emit(packet: { topic: string; payload: string }, done?: (err?: Error) => void): void
  close(cb?: () => void): void
}

const url = redisDb(10)
const closers: Array<() => Promise<void>> = []
after(async () => {
  for (const c of closers) await c()
})

function node(): Emitter {
  const e = routeByUser(mqemitterRedis({ subConn: new Redis(url), pubConn: new Redis(url) })) as unknown as Emitter
  closers.push(() => new Promise((r) => e.close(() => r())))
  return e
}
const on = (e: Emitter, filter: string, got: string[]) =>
  new Promise<(packet: { topic: string }, done: () => void) => void>((resolve) => {
    const cb = (p: { topic: string }, done: () => void) => {
      got.push(p.topic)
      done()
    }
    e.on(filter, cb, () => resolve(cb))
  })

describe('routing channels of the cluster emitter', () => {
  it('maps user trees to one exact channel, and everything else as before', () => {
    assert.equal(routeOf('u/alice/m'), 'u/alice')
    assert.equal(routeOf('u/alice/d/phone/res'), 'u/alice')
    assert.equal(routeOf('$SYS/x/heartbeat'), '$SYS/x/heartbeat')
    assert.equal(routeOf('s/dm/bob'), 's/dm/bob')
    const original = (f: string) => f.replace(/[+#]/g, '*')
    assert.deepEqual(subscriptionOf('u/alice/#', original), { channel: 'u/alice', wildcard: false })
    assert.deepEqual(subscriptionOf('u/alice/d/+/res', original), { channel: 'u/alice', wildcard: false })
    assert.deepEqual(subscriptionOf('u/+/m', original), { channel: 'u/*', wildcard: true })
    assert.deepEqual(subscriptionOf('#', original), { channel: '*', wildcard: true })
    assert.deepEqual(subscriptionOf('$SYS/+/heartbeat', original), { channel: '$SYS/*/heartbeat', wildcard: true })
    assert.deepEqual(subscriptionOf('news/today', original), { channel: 'news/today', wildcard: false })
  })

  it('delivers across nodes exactly what topic matching says, with no Redis pattern per user', async () => {
    const [a, b] = [node(), node()]
    const user = `ann${randomBytes(3).toString('hex')}`
    const [tree, narrow, everything, anyUser] = [[], [], [], []] as string[][]
    const treeCb = await on(a, `u/${user}/#`, tree!)
    await on(a, `u/${user}/d/phone/res`, narrow!)
    await on(a, '#', everything!)
    await on(a, 'u/+/m', anyUser!)
    const sent = [`u/${user}/m`, `u/${user}/d/phone/res`, `u/${user}/d/tablet/res`, `u/other${user}/m`, 'plain/topic']
    for (const topic of sent) b.emit({ topic, payload: 'x' })
    await eventually(() => everything!.length === sent.length, 5000, 'every message on #')
    await eventually(() => tree!.length === 3 && anyUser!.length === 2, 5000, 'the user tree and u/+/m')
    assert.deepEqual(tree!.sort(), [`u/${user}/d/phone/res`, `u/${user}/d/tablet/res`, `u/${user}/m`])
    assert.deepEqual(narrow, [`u/${user}/d/phone/res`], 'a narrower filter of the same channel')
    assert.deepEqual(anyUser!.sort(), [`u/${user}/m`, `u/other${user}/m`].sort())
    assert.deepEqual(everything!.sort(), [...sent].sort(), 'once each, though two Redis subscriptions matched')

    const redis = new Redis(url)
    try {
      const channels = (await redis.call('PUBSUB', 'CHANNELS', `u/${user}*`)) as string[]
      assert.deepEqual(channels, [`u/${user}`], 'one exact channel for the whole user tree')
      // Removing one of the two filters on the channel keeps it; removing the last drops it.
      await new Promise<void>((r) => a.removeListener(`u/${user}/#`, treeCb, () => r()))
      b.emit({ topic: `u/${user}/d/phone/res`, payload: 'y' })
      await eventually(() => narrow.length === 2, 5000, 'the narrower filter still served')
      assert.equal(tree!.length, 3)
    } finally {
      redis.disconnect()
    }
  })
})
