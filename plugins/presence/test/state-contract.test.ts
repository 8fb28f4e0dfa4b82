// One contract for the presence state (memory and Redis) and one for the contacts/privacy store
// (SQLite and MongoDB).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { Redis } from 'ioredis'
import { mongoTestDb, redisDb } from '../../../test/helpers/services.js'
import { MemoryPresenceState, RedisPresenceState, connectionToken, type PresenceState } from '../state.js'
import { MongoPresenceStore, SqlitePresenceStore, type PresenceStore } from '../store.js'

const timing = { graceMs: 1000, offlineAfterMs: 1000 }
const redisConnections: Redis[] = []
after(() => redisConnections.forEach((r) => r.disconnect()))

const states: Array<[string, (brokerId: string, prefix: string) => PresenceState]> = [
  ['memory', () => new MemoryPresenceState(timing)],
  [
    'Redis',
    (brokerId, prefix) => {
      const redis = new Redis(redisDb(13))
      redisConnections.push(redis)
      return new RedisPresenceState(redis, prefix, brokerId, timing)
    }
  ]
]

for (const [name, make] of states) {
  describe(`presence state contract: ${name}`, () => {
    it('is online from the first device to the last, offline only after the grace period, versioned', async () => {
      const s = make('node-a', `t${randomBytes(3).toString('hex')}:`)
      const a = connectionToken('node-a', '1')
      const b = connectionToken('node-a', '2')
      await s.heartbeat(0)
      assert.deepEqual(await s.connect('ann', 'phone', a, 100), { user: 'ann', online: true, at: 100, version: 1 })
      assert.equal(await s.connect('ann', 'laptop', b, 110), undefined, 'already online')
      assert.deepEqual(await s.devices('ann'), ['laptop', 'phone'])
      await s.disconnect('ann', 'phone', a, 200)
      assert.deepEqual(await s.sweep(5000), [], 'a device is left')
      await s.disconnect('ann', 'laptop', b, 300)
      assert.deepEqual(await s.sweep(1299), [], 'within the grace period')
      assert.deepEqual(await s.sweep(1300), [{ user: 'ann', online: false, at: 300, version: 2 }], 'last seen: when the last device left')
      assert.deepEqual(await s.sweep(9000), [], 'once')
      assert.deepEqual(await s.get(['ann', 'nobody']), [
        { user: 'ann', online: false, lastSeen: 300, version: 2 },
        { user: 'nobody', online: false, version: 0 }
      ])
    })

    it('makes no flap when a device comes back within the grace period, and keeps a device taken over', async () => {
      const s = make('node-a', `t${randomBytes(3).toString('hex')}:`)
      const first = connectionToken('node-a', 'first')
      const second = connectionToken('node-a', 'second')
      await s.connect('bo', 'phone', first, 0)
      await s.disconnect('bo', 'phone', first, 10)
      assert.equal(await s.connect('bo', 'phone', second, 500), undefined, 'back within grace: no online event')
      assert.deepEqual(await s.sweep(5000), [], 'and no offline')
      // A takeover: the new connection registers before the old one's disconnect arrives.
      const third = connectionToken('node-a', 'third')
      await s.connect('bo', 'phone', third, 6000)
      await s.disconnect('bo', 'phone', second, 6001)
      assert.deepEqual(await s.sweep(99_000), [], 'the stale disconnect did not remove the new connection')
      assert.equal((await s.get(['bo']))[0]!.online, true)
    })
  })
}

describe('presence state over Redis: a dead node', () => {
  it('takes the devices of a node that stopped heartbeating offline, from another node', async () => {
    const prefix = `t${randomBytes(3).toString('hex')}:`
    const dying = make2('dying', prefix)
    const survivor = make2('survivor', prefix)
    await dying.heartbeat(Date.now())
    await survivor.heartbeat(Date.now())
    await dying.connect('cy', 'phone', connectionToken('dying', 'x'), Date.now())
    await survivor.connect('di', 'phone', connectionToken('survivor', 'y'), Date.now())
    assert.deepEqual(await survivor.sweep(Date.now()), [], 'the other node is alive')
    await new Promise((r) => setTimeout(r, timing.offlineAfterMs + 200)) // its liveness key expires
    await survivor.heartbeat(Date.now())
    const gone = await survivor.sweep(Date.now())
    assert.deepEqual(gone.map((t) => [t.user, t.online]), [['cy', false]], 'only the dead node\'s user')
  })

  function make2(brokerId: string, prefix: string): PresenceState {
    const redis = new Redis(redisDb(13))
    redisConnections.push(redis)
    return new RedisPresenceState(redis, prefix, brokerId, timing)
  }
})

const stores: Array<[string, () => Promise<{ store: PresenceStore; done: () => Promise<void> }>]> = [
  [
    'embedded (SQLite)',
    async () => {
      const store = new SqlitePresenceStore(join(mkdtempSync(join(tmpdir(), 'parley-presence-')), 'presence.db'))
      await store.init()
      return { store, done: () => store.close() }
    }
  ],
  [
    'MongoDB (FerretDB)',
    async () => {
      const { db, done } = await mongoTestDb('parley_presence')
      const store = new MongoPresenceStore(db)
      await store.init()
      return { store, done }
    }
  ]
]

for (const [name, open] of stores) {
  describe(`presence store contract: ${name}`, () => {
    it('keeps contact lists and privacy choices', async () => {
      const { store, done } = await open()
      try {
        assert.equal(await store.addContacts('eve', ['fay', 'gus']), 2)
        assert.equal(await store.addContacts('eve', ['gus', 'hal']), 3, 'adding twice is once')
        await store.removeContacts('eve', ['fay', 'nobody'])
        assert.deepEqual(await store.contacts('eve'), ['gus', 'hal'])
        assert.deepEqual(await store.contacts('fay'), [], 'lists are per owner')
        await store.setPrivacy('eve', { online: 'contacts', lastSeen: 'nobody' })
        assert.deepEqual(Object.fromEntries(await store.privacy(['eve', 'fay'])), {
          eve: { online: 'contacts', lastSeen: 'nobody' },
          fay: { online: 'everyone', lastSeen: 'everyone' }
        })
      } finally {
        await done()
      }
    })
  })
}
