// The real backends (Redis, FerretDB for MongoDB, MinIO for S3) wired into a node and its plugins,
// and /readyz telling the truth about them.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { definePlugin, type Backends } from '../../broker/plugin-api.js'
import { BARE, eventually, startBroker } from '../helpers/broker-process.js'
import { connectClient, startNode, type TestNode } from '../helpers/node.js'
import { mongoUrl, redisDb, s3Settings } from '../helpers/services.js'
import { freePort } from '../../scripts/services.js'

type Readyz = { status: string; checks: Record<string, { ok: boolean; error?: string }> }
const readyz = async (port: number) => {
  const res = await fetch(`http://127.0.0.1:${port}/readyz`)
  return { code: res.status, body: (await res.json()) as Readyz }
}

describe('a node with every real backend', () => {
  let t: TestNode
  let backends: Backends | undefined
  const bucket = `parley-test-${randomBytes(3).toString('hex')}`
  before(async () => {
    const probe = definePlugin({
      name: 'backend-probe',
      register: (ctx) => {
        backends = ctx.backends
      }
    })
    const s3 = s3Settings()
    t = await startNode(
      {
        redis: { url: redisDb(2), keyPrefix: 'parley-test:' },
        mongo: { url: mongoUrl(), database: `parley_test_${randomBytes(3).toString('hex')}` },
        s3: { ...s3, bucket },
        plugins: ['backend-probe']
      },
      { 'backend-probe': async () => probe }
    )
  })
  after(async () => {
    await t?.stop()
  })

  it('is ready once Redis, MongoDB and S3 answer, and creates the bucket', async () => {
    await eventually(async () => (await readyz(t.ops)).code === 200, 15_000, 'ready')
    const { body } = await readyz(t.ops)
    assert.deepEqual(Object.keys(body.checks).sort(), ['cluster', 'mongo', 'redis', 's3'])
    assert.ok(Object.values(body.checks).every((c) => c.ok))
    assert.equal(await backends!.s3!.client.bucketExists(bucket), true)
  })

  it('hands plugins working MongoDB, S3 and Redis connections', async () => {
    const col = backends!.mongo!.collection<{ _id: string; n: number }>('probe')
    await col.insertOne({ _id: 'a', n: 1 })
    await assert.rejects(col.insertOne({ _id: 'a', n: 2 }), /E11000/, 'a real server enforces unique ids')
    assert.deepEqual(await col.findOne({ _id: 'a' }), { _id: 'a', n: 1 })

    const body = Buffer.from('media bytes')
    await backends!.s3!.client.putObject(bucket, 'c/1/obj', body, body.length, { 'Content-Type': 'text/plain' })
    const stat = await backends!.s3!.client.statObject(bucket, 'c/1/obj')
    assert.equal(stat.size, body.length)

    const key = `${backends!.redisKeyPrefix}probe`
    await backends!.redis!.set(key, 'v', 'EX', 60)
    assert.equal(await backends!.redis!.get(key), 'v')
    assert.equal(backends!.redisKeyPrefix, 'parley-test:')
  })

  it('still relays MQTT over the Redis cluster wiring', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: `b-${randomBytes(3).toString('hex')}` })
    await c.subscribeAsync('b/t', { qos: 1 })
    const got = new Promise<string>((resolve) => c.once('message', (_t, p) => resolve(p.toString())))
    await c.publishAsync('b/t', 'through redis', { qos: 1 })
    assert.equal(await got, 'through redis')
    await c.endAsync()
  })
})

describe('readiness follows the backends', () => {
  it('reports an unreachable MongoDB as not ready while MQTT keeps working', async () => {
    const deadPort = await freePort()
    const t = await startNode({ mongo: { url: `mongodb://127.0.0.1:${deadPort}/`, database: 'x' } })
    try {
      const { code, body } = await readyz(t.ops)
      assert.equal(code, 503)
      assert.equal(body.status, 'not ready')
      assert.equal(body.checks.mongo?.ok, false)
      const c = await connectClient(t.mqttUrl)
      await c.endAsync()
    } finally {
      await t.stop()
    }
  })

  it('a node whose Redis is down answers /healthz, is not ready, and becomes ready when Redis comes up', async () => {
    const port = await freePort()
    const broker = await startBroker({ env: { ...BARE, REDIS_URL: `redis://127.0.0.1:${port}/4` }, waitFor: 'ops' })
    let redis: ReturnType<typeof spawn> | undefined
    try {
      const ops = broker.ports.ops!
      assert.equal((await fetch(`http://127.0.0.1:${ops}/healthz`)).status, 200)
      const before = await readyz(ops)
      assert.equal(before.code, 503)
      assert.equal(before.body.checks.redis?.ok, false)
      assert.equal(broker.ports.tcp, undefined, 'MQTT is not served before the cluster backend is reachable')

      redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
      await eventually(() => broker.logs.some((l) => l.msg === 'ready'), 30_000, 'broker ready after Redis came up')
      await eventually(async () => (await readyz(ops)).code === 200, 10_000, '/readyz 200')
      const c = await connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`)
      await c.endAsync()
    } finally {
      assert.equal(await broker.stop(), 0)
      redis?.kill('SIGTERM')
    }
  })
})
