// One contract for the conversation state stores: embedded (SQLite) and MongoDB (FerretDB).
import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { mongoTestDb } from '../../../test/helpers/services.js'
import { MongoStateStore, SqliteStateStore, type StateStore } from '../state-store.js'

const backends: Array<[string, () => Promise<{ store: StateStore; done: () => Promise<void> }>]> = [
  [
    'embedded (SQLite)',
    async () => {
      const store = new SqliteStateStore(join(mkdtempSync(join(tmpdir(), 'parley-state-')), 'state.db'))
      await store.init()
      return { store, done: () => store.close() }
    }
  ],
  [
    'MongoDB (FerretDB)',
    async () => {
      const { db, done } = await mongoTestDb('parley_state')
      const store = new MongoStateStore(db)
      await store.init()
      return { store, done }
    }
  ]
]

for (const [name, open] of backends) {
  describe(`conversation state contract: ${name}`, () => {
    it('lists a user\'s conversations by activity and keeps read markers monotonic', async () => {
      const { store, done } = await open()
      try {
        await store.touch(['alice', 'bob'], 'dm:alice:bob', 100)
        await store.touch(['alice', 'carol'], 'dm:alice:carol', 200)
        await store.touch(['alice', 'bob'], 'dm:alice:bob', 150)
        assert.deepEqual((await store.list('alice', 10)).map((c) => [c.conversation, c.ts, c.readSeq]), [
          ['dm:alice:carol', 200, 0],
          ['dm:alice:bob', 150, 0]
        ])
        assert.deepEqual((await store.list('alice', 1)).map((c) => c.conversation), ['dm:alice:carol'])
        await store.touch(['alice'], 'dm:alice:bob', 120)
        assert.equal((await store.get('alice', 'dm:alice:bob'))?.ts, 150, 'activity time only moves forward')
        assert.equal(await store.markRead('bob', 'dm:alice:bob', 5), 5)
        assert.equal(await store.markRead('bob', 'dm:alice:bob', 3), 5, 'an older marker does not move it back')
        assert.equal(await store.markRead('bob', 'dm:alice:bob', 8), 8)
        assert.equal(await store.markRead('dave', 'g:team', 2), 2, 'a marker creates the row')
        assert.equal((await store.get('alice', 'dm:alice:bob'))?.readSeq, 0, 'markers are per user')
        assert.equal(await store.get('nobody', 'dm:x:y'), undefined)
      } finally {
        await done()
      }
    })
  })
}
