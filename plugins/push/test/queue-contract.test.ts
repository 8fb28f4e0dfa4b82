// One contract for the durable push queue: embedded (SQLite) and Redis.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { Redis } from 'ioredis'
import { redisDb } from '../../../test/helpers/services.js'
import { RedisPushQueue, SqlitePushQueue, type NewJob, type PushQueue } from '../queue.js'

/** This suite's Redis database (others: 1-3, 5, 7, 9, 11-14); keys are prefixed per test, so no flush. */
const REDIS_DB = 15
const MARK_TTL = 60_000

const backends: Array<[string, () => Promise<{ open: () => PushQueue; done: () => Promise<void> }>]> = [
  [
    'embedded (SQLite)',
    async () => {
      const file = join(mkdtempSync(join(tmpdir(), 'parley-pushq-')), 'queue.db')
      const queues: PushQueue[] = []
      return {
        open: () => {
          // One node, one file: every "instance" is the same queue.
          if (!queues.length) queues.push(new SqlitePushQueue(file, MARK_TTL))
          return queues[0]!
        },
        done: async () => {
          for (const q of queues) await q.close()
        }
      }
    }
  ],
  [
    'Redis',
    async () => {
      const prefix = `pushtest-${randomBytes(4).toString('hex')}:`
      const conns: Redis[] = []
      return {
        open: () => {
          const redis = new Redis(redisDb(REDIS_DB), { lazyConnect: false, maxRetriesPerRequest: 2 })
          conns.push(redis)
          return new RedisPushQueue(redis, prefix, MARK_TTL)
        },
        done: async () => {
          const r = conns[0] ?? new Redis(redisDb(REDIS_DB))
          const keys = await r.keys(`${prefix}*`)
          if (keys.length) await r.del(...keys)
          await Promise.all([...conns, r].map((c) => c.quit().catch(() => undefined)))
        }
      }
    }
  ]
]

const msg = (id: string, seq: number, ts: number) => ({ id, seq, ts, from: 'alice', type: 'text', e2e: false })
const job = (device: string, conversation: string, id: string, seq: number, ts: number, user = 'bob'): NewJob => ({ user, device, conversation, message: msg(id, seq, ts) })

for (const [name, setup] of backends) {
  describe(`push queue contract: ${name}`, () => {
    it('coalesces messages per device and conversation, and claims a job only when due, once', async () => {
      const { open, done } = await setup()
      try {
        const q = open()
        await q.init()
        const t = Date.now()
        assert.equal(await q.enqueue(job('phone', 'dm:alice:bob', 'm1', 1, t), t + 1000), true)
        assert.equal(await q.enqueue(job('phone', 'dm:alice:bob', 'm2', 2, t + 1), t + 5000), true)
        assert.equal(await q.enqueue(job('phone', 'dm:alice:bob', 'm2', 2, t + 1), t + 5000), false, 'the same message twice is one')
        assert.equal(await q.enqueue(job('phone', 'g:team', 'm3', 7, t + 2), t + 1000), true)
        assert.equal(await q.enqueue(job('tablet', 'dm:alice:bob', 'm1', 1, t), t + 1000), true)
        assert.deepEqual(await q.depth(), { pending: 3, claimed: 0 })
        assert.deepEqual(await q.claim(t + 999, 10, 30_000), [], 'nothing is due yet')

        const claimed = await q.claim(t + 1000, 10, 30_000)
        assert.equal(claimed.length, 3)
        const dm = claimed.find((j) => j.device === 'phone' && j.conversation === 'dm:alice:bob')!
        assert.equal(dm.count, 2)
        assert.equal(dm.last.id, 'm2', 'the newest message')
        assert.equal(dm.firstTs, t, 'the oldest message time')
        assert.equal(dm.attempts, 0)
        assert.equal(claimed.find((j) => j.conversation === 'g:team')!.count, 1)
        assert.deepEqual(await q.claim(t + 2000, 10, 30_000), [], 'a claimed job is invisible')
        assert.deepEqual(await q.depth(), { pending: 0, claimed: 3 })
        for (const j of claimed) assert.equal(await q.ack(j.claim), true)
        assert.equal(await q.ack(dm.claim), false, 'an ack twice')
        assert.deepEqual(await q.depth(), { pending: 0, claimed: 0 })
      } finally {
        await done()
      }
    })

    it('gives every due job to exactly one of several claimers', async () => {
      const { open, done } = await setup()
      try {
        const [a, b, c] = [open(), open(), open()]
        await a.init()
        const t = Date.now()
        for (let i = 0; i < 60; i++) await a.enqueue(job(`d${i}`, 'dm:alice:bob', `m${i}`, 1, t), t)
        const results = await Promise.all([a, b, c, a, b, c].map((q) => q.claim(t + 1, 15, 30_000)))
        const keys = results.flat().map((j) => j.device)
        assert.equal(new Set(keys).size, keys.length, 'no job claimed twice')
        const rest = await a.claim(t + 1, 100, 30_000)
        assert.equal(keys.length + rest.length, 60, 'every job claimed')
      } finally {
        await done()
      }
    })

    it('returns a claim whose visibility ran out (its node died), with one more attempt; the old claim is lost', async () => {
      const { open, done } = await setup()
      try {
        const q = open()
        await q.init()
        const t = Date.now()
        await q.enqueue(job('phone', 'dm:alice:bob', 'm1', 1, t), t)
        const [first] = await q.claim(t, 10, 1000)
        assert.ok(first)
        assert.equal(await q.extend(first.claim, t + 3000), true, 'a live claim is extended')
        assert.deepEqual(await q.claim(t + 2000, 10, 1000), [], 'still invisible after the extension')
        const [again] = await q.claim(t + 3001, 10, 1000)
        assert.ok(again, 'another claimer gets it once the visibility ran out')
        assert.equal(again.last.id, 'm1')
        assert.equal(again.attempts, 1)
        assert.equal(await q.ack(first.claim), false, 'the dead node\'s claim is gone')
        assert.equal(await q.extend(first.claim, t + 9999), false)
        assert.equal(await q.ack(again.claim), true)
      } finally {
        await done()
      }
    })

    it('puts a retried job back, merged with messages that arrived meanwhile, due no earlier than asked', async () => {
      const { open, done } = await setup()
      try {
        const q = open()
        await q.init()
        const t = Date.now()
        await q.enqueue(job('phone', 'dm:alice:bob', 'm1', 1, t), t)
        const [claimed] = await q.claim(t, 10, 30_000)
        assert.ok(claimed)
        await q.enqueue(job('phone', 'dm:alice:bob', 'm2', 2, t + 10), t + 100) // arrives while the first is being sent
        assert.equal(await q.retry(claimed.claim, t + 5000, 1), true)
        assert.deepEqual(await q.depth(), { pending: 1, claimed: 0 }, 'one job')
        assert.deepEqual(await q.claim(t + 4999, 10, 30_000), [], 'not before the retry time')
        const [merged] = await q.claim(t + 5000, 10, 30_000)
        assert.ok(merged)
        assert.equal(merged.count, 2)
        assert.equal(merged.last.id, 'm2')
        assert.equal(merged.firstTs, t)
        assert.equal(merged.attempts, 1)
        assert.equal(await q.retry(merged.claim, t + 6000, 2), true)
        const [alone] = await q.claim(t + 6000, 10, 30_000)
        assert.equal(alone?.count, 2)
        assert.equal(alone?.attempts, 2)
      } finally {
        await done()
      }
    })

    it('drops a device\'s pending jobs when it connects, and refuses messages older than that', async () => {
      const { open, done } = await setup()
      try {
        const q = open()
        await q.init()
        const t = Date.now()
        await q.enqueue(job('phone', 'dm:alice:bob', 'm1', 1, t - 20), t + 1000)
        await q.enqueue(job('phone', 'g:team', 'm2', 3, t - 10), t + 1000)
        await q.enqueue(job('tablet', 'g:team', 'm2', 3, t - 10), t + 1000)
        assert.equal(await q.cancelDevice('bob', 'phone', t), 2)
        assert.equal(await q.connectedAt('bob', 'phone'), t)
        assert.equal(await q.connectedAt('bob', 'tablet'), undefined)
        assert.equal(await q.enqueue(job('phone', 'g:team', 'm0', 2, t - 5), t + 1000), false, 'stored before the device connected')
        assert.equal(await q.enqueue(job('phone', 'g:team', 'm4', 4, t + 5), t + 1000), true, 'stored after')
        const claimed = await q.claim(t + 1000, 10, 30_000)
        assert.deepEqual(claimed.map((j) => `${j.device}/${j.last.id}`).sort(), ['phone/m4', 'tablet/m2'])
      } finally {
        await done()
      }
    })
  })
}
