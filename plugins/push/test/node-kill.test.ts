// A node killed (SIGKILL) with pushes pending loses none: one push is in flight on it (the APNs
// fake holds the request unanswered), another waits in the queue. Real broker processes over the
// test Redis (the queue) and FerretDB (registry, messages); a second node started after the kill
// sends both: the waiting one when due, the one in flight once its claim's visibility runs out.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { Redis } from 'ioredis'
import { MongoClient } from 'mongodb'
import { eventually, startBroker, type BrokerProcess } from '../../../test/helpers/broker-process.js'
import { testDevice, type TestDevice } from '../../../test/helpers/device.js'
import { mongoUrl, redisDb } from '../../../test/helpers/services.js'
import { startApnsFake, type ApnsFake } from './fakes/apns-fake.js'
import { fakeProviderConfig, makeTestCredentials, type TestCredentials } from './fakes/certs.js'

/** Shared with queue-contract.test.ts; every key here has its own prefix, so nothing is flushed. */
const REDIS_DB = 15
const VISIBILITY_MS = 2000

describe('push: a node killed with pushes pending', () => {
  let creds: TestCredentials | undefined
  let apns: ApnsFake | undefined
  let redis: Redis | undefined
  const nodes: BrokerProcess[] = []
  const devices: TestDevice[] = []
  let cleanup: (() => Promise<void>) | undefined

  after(async () => {
    devices.forEach((d) => d.client.end(true))
    await Promise.all(nodes.map((n) => n.stop('SIGKILL')))
    await apns?.close()
    await cleanup?.().catch(() => undefined)
    await redis?.quit().catch(() => undefined)
    if (creds) rmSync(creds.dir, { recursive: true, force: true })
  })

  it('loses none: the other node sends the waiting push and the one that was in flight', { timeout: 90_000 }, async () => {
    const tag = randomBytes(3).toString('hex')
    const prefix = `pk${tag}:`
    cleanup = async () => {
      const keys = (await redis?.keys(`${prefix}*`)) ?? []
      if (keys.length) await redis?.del(...keys)
      const client = new MongoClient(mongoUrl(), { serverSelectionTimeoutMS: 5000 })
      await client.db(`parley_push_kill_${tag}`).dropDatabase().catch(() => undefined)
      await client.close()
    }
    creds = makeTestCredentials()
    apns = await startApnsFake({ cert: creds.cert, key: creds.key, publicKey: creds.apns.publicKey, keyId: creds.apns.keyId, teamId: creds.apns.teamId })
    const config = join(creds.dir, 'parley.yaml')
    writeFileSync(
      config,
      [
        'mqtt: { allowAnonymous: true }',
        `redis: { url: "${redisDb(REDIS_DB)}", keyPrefix: "${prefix}" }`,
        `mongo: { url: "${mongoUrl()}", database: parley_push_kill_${tag} }`,
        'plugins:',
        '  - protocol',
        '  - groups',
        '  - messages',
        '  - presence',
        '  - use: push',
        `    config: ${JSON.stringify({ graceMs: 1000, worker: { pollMs: 100, visibilityMs: VISIBILITY_MS }, ...fakeProviderConfig(creds, { apns: apns.port }) })}`
      ].join('\n')
    )
    const a = await startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: 'push-kill-a' } })
    nodes.push(a)
    const url = `mqtt://127.0.0.1:${a.ports.tcp}`
    const device = async (user: string) => {
      const d = await testDevice(url, user, 'phone', { reconnectPeriod: 0 })
      d.client.on('error', () => undefined)
      devices.push(d)
      return d
    }
    const [alice, bob, carol] = ['alice', 'bob', 'carol'].map((n) => `${n}${tag}`) as [string, string, string]
    const tokens: Record<string, string> = {}
    for (const user of [bob, carol]) {
      tokens[user] = randomBytes(32).toString('hex')
      const d = await device(user)
      await d.call('push.register', { provider: 'apns', token: tokens[user] })
      await d.end()
    }
    apns.script(tokens[bob]!, ['stall'])

    const sender = await device(alice)
    await sender.send({ dm: bob }, { cmid: 'k1', body: 'to bob' })
    await eventually(() => apns!.requests.some((r) => r.token === tokens[bob] && r.status === 'stalled'), 15_000, 'bob\'s push in flight on node a')
    await sender.send({ dm: carol }, { cmid: 'k2', body: 'to carol' })
    redis = new Redis(redisDb(REDIS_DB))
    await eventually(async () => (await redis!.zcard(`${prefix}push:due`)) === 1, 10_000, 'carol\'s push waiting in the queue')
    assert.equal(await redis.zcard(`${prefix}push:inflight`), 1, 'bob\'s push claimed by node a')

    await a.stop('SIGKILL')
    sender.client.end(true)
    const b = await startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: 'push-kill-b' } })
    nodes.push(b)

    await eventually(() => apns!.accepted(tokens[bob]!).length === 1 && apns!.accepted(tokens[carol]!).length === 1, 30_000, 'both pushes sent by node b')
    await new Promise((r) => setTimeout(r, 1500))
    const toBob = apns.requests.filter((r) => r.token === tokens[bob])
    assert.deepEqual(
      toBob.map((r) => r.status),
      ['reset', 200],
      'the request node a had in flight died with it; node b sent it once'
    )
    assert.equal(apns.requests.filter((r) => r.token === tokens[carol]).length, 1)
    assert.equal((toBob[1]!.payload.parley as { count: number }).count, 1)
    assert.equal(await redis.zcard(`${prefix}push:due`), 0)
    assert.equal(await redis.zcard(`${prefix}push:inflight`), 0)
    const metrics = await (await fetch(`http://127.0.0.1:${b.ports.ops}/metrics`)).text()
    assert.match(metrics, /parley_push_sent_total\{provider="apns",type="message"\} 2/)
  })
})
