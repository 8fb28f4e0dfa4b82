// One contract for the push device registry: embedded (SQLite) and MongoDB (FerretDB).
import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import Database from 'better-sqlite3'
import { mongoTestDb } from '../../../test/helpers/services.js'
import { MongoRegistry, SqliteRegistry, type RegistryStore } from '../registry.js'
import type { Registration } from '../types.js'

const backends: Array<[string, () => Promise<{ store: RegistryStore; done: () => Promise<void> }>]> = [
  [
    'embedded (SQLite)',
    async () => {
      const store = new SqliteRegistry(join(mkdtempSync(join(tmpdir(), 'parley-pushreg-')), 'push.db'))
      await store.init()
      return { store, done: () => store.close() }
    }
  ],
  [
    'MongoDB (FerretDB)',
    async () => {
      const { db, done } = await mongoTestDb('parley_push_registry')
      const store = new MongoRegistry(db)
      await store.init()
      return { store, done }
    }
  ]
]

const apns = (user: string, device: string, token: string, extra: Partial<Registration> = {}): Registration => ({
  user,
  device,
  provider: 'apns',
  token,
  topic: 'com.example.chat',
  environment: 'sandbox',
  previews: false,
  updatedAt: 1,
  ...extra
})

for (const [name, open] of backends) {
  describe(`push registry contract: ${name}`, () => {
    it('registers, updates and removes a device; a token belongs to one device only', async () => {
      const { store, done } = await open()
      try {
        await store.register(apns('bob', 'phone', 'aa01', { locale: 'de-CH' }))
        await store.register({ user: 'bob', device: 'pixel', provider: 'fcm', token: 'fcm-1', previews: true, updatedAt: 2 })
        assert.deepEqual(await store.get('bob', 'phone'), apns('bob', 'phone', 'aa01', { locale: 'de-CH' }))
        assert.deepEqual((await store.devicesOf(['bob', 'nobody'])).map((r) => r.device), ['phone', 'pixel'])

        const updated = await store.update('bob', 'phone', { previews: true, locale: null }, 5)
        assert.equal(updated?.previews, true)
        assert.equal(updated?.locale, undefined, 'locale cleared')
        assert.equal(updated?.updatedAt, 5)
        assert.equal(await store.update('bob', 'laptop', { previews: true }, 6), undefined, 'no registration, no update')

        // The app reinstalled under another account: the token moves, the old registration goes.
        await store.register(apns('carol', 'phone', 'aa01'))
        assert.equal(await store.get('bob', 'phone'), undefined)
        assert.equal((await store.get('carol', 'phone'))?.token, 'aa01')

        assert.equal(await store.removeToken('carol', 'phone', 'bb02'), false, 'not the token it holds now')
        assert.equal(await store.removeToken('carol', 'phone', 'aa01'), true)
        assert.equal(await store.get('carol', 'phone'), undefined)
        assert.equal(await store.unregister('bob', 'pixel'), true)
        assert.equal(await store.unregister('bob', 'pixel'), false)
        assert.deepEqual(await store.devicesOf(['bob', 'carol']), [])
      } finally {
        await done()
      }
    })

    it('keeps mutes per user and conversation until their time', async () => {
      const { store, done } = await open()
      try {
        await store.mute('bob', 'g:team', 2000, 1000)
        await store.mute('bob', 'dm:alice:bob', 5000, 1000)
        await store.mute('carol', 'g:team', 1500, 1000)
        assert.deepEqual(await store.mutes('bob', 1000), [
          { conversation: 'dm:alice:bob', until: 5000 },
          { conversation: 'g:team', until: 2000 }
        ])
        assert.deepEqual([...(await store.mutedAmong(['bob', 'carol', 'dave'], 'g:team', 1200))].sort(), [
          ['bob', 2000],
          ['carol', 1500]
        ])
        assert.deepEqual([...(await store.mutedAmong(['bob', 'carol'], 'g:team', 1800))], [['bob', 2000]], 'an expired mute')
        await store.mute('bob', 'g:team', 0, 1900) // unmute
        assert.deepEqual(await store.mutes('bob', 1900), [{ conversation: 'dm:alice:bob', until: 5000 }])
        assert.deepEqual(await store.mutes('bob', 6000), [])
      } finally {
        await done()
      }
    })

    it('counts pushed messages per device until the user reads them', async () => {
      const { store, done } = await open()
      try {
        await store.register(apns('bob', 'phone', 'aa01'))
        await store.register(apns('bob', 'ipad', 'aa02'))
        await store.addPushed('bob', 'phone', 'dm:alice:bob', 2, 5)
        await store.addPushed('bob', 'phone', 'dm:alice:bob', 1, 6)
        await store.addPushed('bob', 'phone', 'g:team', 3, 40)
        await store.addPushed('bob', 'ipad', 'g:team', 1, 40)
        assert.equal(await store.pushedUnread('bob', 'phone'), 6)
        assert.equal(await store.pushedUnread('bob', 'ipad'), 1)
        await store.markRead('bob', 'g:team', 38) // two of the group's newest still unread
        assert.equal(await store.pushedUnread('bob', 'phone'), 5)
        assert.equal(await store.pushedUnread('bob', 'ipad'), 1)
        await store.markRead('bob', 'dm:alice:bob', 6)
        assert.equal(await store.pushedUnread('bob', 'phone'), 2)
        await store.markRead('bob', 'g:team', 40)
        assert.equal(await store.pushedUnread('bob', 'phone'), 0)
        assert.equal(await store.pushedUnread('bob', 'ipad'), 0)
        await store.addPushed('bob', 'phone', 'g:team', 4, 44)
        await store.register(apns('bob', 'phone', 'aa03')) // a new installation
        assert.equal(await store.pushedUnread('bob', 'phone'), 0, 'a new token starts from zero')
      } finally {
        await done()
      }
    })

    it('keeps when a device registered and how its last push went, for the token it holds', async () => {
      const { store, done } = await open()
      try {
        await store.register(apns('bob', 'phone', 'aa01', { updatedAt: 10 }))
        await store.register({ user: 'bob', device: 'pixel', provider: 'fcm', token: 'fcm-1', previews: false, updatedAt: 11 })
        assert.deepEqual(
          (await store.statusOf('bob')).map((d) => [d.device, d.createdAt, d.lastResult]),
          [
            ['phone', 10, undefined],
            ['pixel', 11, undefined]
          ]
        )
        const refused = { at: 20, ok: false, via: 'apns' as const, type: 'message' as const, status: 429, reason: 'TooManyRequests' }
        await store.recordResult('bob', 'phone', 'aa01', refused)
        await store.recordResult('bob', 'pixel', 'fcm-old', { at: 21, ok: true, via: 'fcm', type: 'test' }) // not its token: ignored
        await store.update('bob', 'phone', { previews: true }, 30)
        await store.register(apns('bob', 'phone', 'aa01', { updatedAt: 40 })) // the same token again
        const [phone, pixel] = await store.statusOf('bob')
        assert.deepEqual([phone!.createdAt, phone!.updatedAt, phone!.lastResult], [10, 40, refused])
        assert.equal(pixel!.lastResult, undefined)
        assert.deepEqual(await store.get('bob', 'phone'), apns('bob', 'phone', 'aa01', { updatedAt: 40 }), 'get() shows the registration only')

        await store.register(apns('bob', 'phone', 'bb02', { updatedAt: 50 })) // a new installation
        const [renewed] = await store.statusOf('bob')
        assert.deepEqual([renewed!.createdAt, renewed!.lastResult], [10, undefined], 'the old token\'s result is gone')
        assert.deepEqual(await store.statusOf('nobody'), [])
      } finally {
        await done()
      }
    })
  })
}

describe('push registry: embedded files written before created_at and last_result', () => {
  it('gains the columns; old registrations show no creation time', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'parley-pushreg-old-')), 'push.db')
    const old = new Database(file)
    old.exec(`CREATE TABLE push_devices (
      user_id TEXT NOT NULL, device_id TEXT NOT NULL, provider TEXT NOT NULL, token TEXT NOT NULL,
      topic TEXT, environment TEXT, locale TEXT, previews INTEGER NOT NULL, updated_at INTEGER NOT NULL,
      PRIMARY KEY (user_id, device_id))`)
    old.prepare("INSERT INTO push_devices VALUES ('bob', 'phone', 'apns', 'aa01', 'com.example.chat', 'sandbox', NULL, 0, 5)").run()
    old.close()
    const store = new SqliteRegistry(file)
    await store.init()
    try {
      assert.deepEqual(await store.statusOf('bob'), [apns('bob', 'phone', 'aa01', { updatedAt: 5 })])
      await store.recordResult('bob', 'phone', 'aa01', { at: 9, ok: true, via: 'log', type: 'message' })
      assert.deepEqual((await store.statusOf('bob'))[0]!.lastResult, { at: 9, ok: true, via: 'log', type: 'message' })
    } finally {
      await store.close()
    }
  })
})
