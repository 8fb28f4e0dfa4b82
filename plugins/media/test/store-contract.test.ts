// One contract for the upload records: embedded (SQLite) and MongoDB (FerretDB).
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { mongoTestDb } from '../../../test/helpers/services.js'
import { newMediaId } from '../ids.js'
import { MongoMediaStore, SqliteMediaStore, type MediaRecord, type MediaStore } from '../store.js'

const backends: Array<[string, () => Promise<{ store: MediaStore; done: () => Promise<void> }>]> = [
  [
    'embedded (SQLite)',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'parley-media-store-'))
      const store = new SqliteMediaStore(join(dir, 'media.db'))
      await store.init()
      return {
        store,
        done: async () => {
          await store.close()
          rmSync(dir, { recursive: true, force: true })
        }
      }
    }
  ],
  [
    'MongoDB (FerretDB)',
    async () => {
      const { db, done } = await mongoTestDb('parley_media')
      const store = new MongoMediaStore(db)
      await store.init()
      return { store, done }
    }
  ]
]

const record = (over: Partial<MediaRecord> = {}): MediaRecord => ({
  id: newMediaId('dm:alice:bob'),
  conversation: 'dm:alice:bob',
  uploader: 'alice',
  kind: 'image',
  mime: 'image/png',
  size: 1234,
  createdAt: 1000,
  ...over
})

for (const [name, open] of backends) {
  describe(`media store contract: ${name}`, () => {
    it('keeps a record as created, with or without a checksum', async () => {
      const { store, done } = await open()
      try {
        const a = record({ sha256: 'ab'.repeat(32) })
        const b = record({ kind: 'file', mime: 'application/pdf', size: 1 })
        await store.create(a)
        await store.create(b)
        assert.deepEqual(await store.get(a.id), a)
        assert.deepEqual(await store.get(b.id), b)
        assert.equal(await store.get(newMediaId('x')), undefined)
        await assert.rejects(store.create(a), 'an id is created once')
      } finally {
        await done()
      }
    })

    it('lets one message reference an upload, again on its retry, and no other', async () => {
      const { store, done } = await open()
      try {
        const a = record()
        await store.create(a)
        assert.equal(await store.reference(a.id, 'c1', 5000), true)
        assert.equal(await store.reference(a.id, 'c1', 6000), true, 'the same send again')
        assert.equal(await store.reference(a.id, 'c2', 7000), false, 'another message')
        assert.deepEqual((await store.get(a.id))?.ref, { cmid: 'c1', at: 5000 })
        assert.equal(await store.reference(newMediaId('x'), 'c1', 1), false, 'no such record')
      } finally {
        await done()
      }
    })

    it('finds orphans, old records and an uploader\'s pending uploads, and removes them', async () => {
      const { store, done } = await open()
      try {
        const user = `u${Date.now()}`
        const old = record({ uploader: user, createdAt: 100 })
        const oldSent = record({ uploader: user, createdAt: 200 })
        const fresh = record({ uploader: user, createdAt: 10_000 })
        for (const r of [fresh, oldSent, old]) await store.create(r)
        await store.reference(oldSent.id, 'sent', 300)
        assert.deepEqual((await store.orphans(5000, 10)).map((r) => r.id), [old.id])
        assert.deepEqual((await store.olderThan(5000, 10)).map((r) => r.id), [old.id, oldSent.id], 'oldest first')
        assert.deepEqual((await store.olderThan(20_000, 2)).map((r) => r.id), [old.id, oldSent.id], 'at most limit')
        assert.equal(await store.pending(user, 0), 2)
        assert.equal(await store.pending(user, 5000), 1)
        assert.equal(await store.pending('nobody', 0), 0)
        assert.deepEqual(await store.existing([old.id, newMediaId('x'), fresh.id]), new Set([old.id, fresh.id]))
        assert.deepEqual(await store.existing([]), new Set())
        assert.deepEqual(await store.removeUnreferenced([old.id, oldSent.id]), [old.id], 'a referenced record stays')
        assert.equal(await store.get(old.id), undefined)
        assert.ok(await store.get(oldSent.id))
        await store.remove([oldSent.id, fresh.id])
        await store.remove([])
        assert.deepEqual(await store.existing([old.id, oldSent.id, fresh.id]), new Set())
      } finally {
        await done()
      }
    })
  })
}
