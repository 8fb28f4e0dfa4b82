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
        assert.deepEqual(await store.advance('bob', 'dm:alice:bob', 'read', 5), { before: 0, after: 5 })
        assert.deepEqual(await store.advance('bob', 'dm:alice:bob', 'read', 3), { before: 5, after: 5 }, 'an older marker does not move it back')
        assert.deepEqual(await store.advance('bob', 'dm:alice:bob', 'read', 8), { before: 5, after: 8 })
        assert.deepEqual(await store.advance('dave', 'g:team', 'read', 2), { before: 0, after: 2 }, 'a marker creates the row')
        assert.equal((await store.get('alice', 'dm:alice:bob'))?.readSeq, 0, 'markers are per user')
        assert.equal(await store.get('nobody', 'dm:x:y'), undefined)
      } finally {
        await done()
      }
    })

    it('keeps delivered at or above read, and lists every user\'s markers of a conversation', async () => {
      const { store, done } = await open()
      try {
        assert.deepEqual(await store.advance('ann', 'g:club', 'delivered', 4), { before: 0, after: 4 })
        assert.deepEqual(await store.advance('ann', 'g:club', 'delivered', 2), { before: 4, after: 4 })
        assert.deepEqual(await store.advance('ann', 'g:club', 'read', 3), { before: 0, after: 3 })
        assert.deepEqual(await store.advance('ben', 'g:club', 'read', 6), { before: 0, after: 6 }, 'reading without a delivered marker')
        assert.equal((await store.get('ben', 'g:club'))?.deliveredSeq, 6, 'reading counts as delivered')
        assert.deepEqual(await store.advance('ben', 'g:club', 'delivered', 5), { before: 6, after: 6 })
        const markers = (await store.markers('g:club')).map((m) => [m.user, m.deliveredSeq, m.readSeq]).sort()
        assert.deepEqual(markers, [
          ['ann', 4, 3],
          ['ben', 6, 6]
        ])
        assert.deepEqual(await store.markers('g:none'), [])
      } finally {
        await done()
      }
    })

    it('keeps privacy choices, with read receipts shared by default', async () => {
      const { store, done } = await open()
      try {
        await store.setPrivacy('cam', { readReceipts: false })
        const privacy = await store.privacy(['cam', 'dee'])
        assert.deepEqual(Object.fromEntries(privacy), { cam: { readReceipts: false }, dee: { readReceipts: true } })
        await store.setPrivacy('cam', { readReceipts: true })
        assert.deepEqual((await store.privacy(['cam'])).get('cam'), { readReceipts: true })
      } finally {
        await done()
      }
    })

    it('keeps device cursors per device, forward only, and knows a device that never synced', async () => {
      const { store, done } = await open()
      try {
        assert.equal(await store.cursors('eve', 'phone'), undefined)
        await store.advanceCursors('eve', 'phone', new Map())
        assert.deepEqual(await store.cursors('eve', 'phone'), new Map(), 'synced once, no positions yet')
        await store.advanceCursors('eve', 'phone', new Map([['dm:eve:fox', 5], ['g:club', 2]]))
        await store.advanceCursors('eve', 'phone', new Map([['dm:eve:fox', 3], ['g:club', 9]]))
        assert.deepEqual(await store.cursors('eve', 'phone'), new Map([['dm:eve:fox', 5], ['g:club', 9]]))
        assert.equal(await store.cursors('eve', 'laptop'), undefined, 'cursors are per device')
      } finally {
        await done()
      }
    })

    it('applies a batch of touches and marker moves like the same calls one by one', async () => {
      const { store, done } = await open()
      try {
        await store.touchMany([
          { users: ['gus', 'hal'], conversation: 'dm:gus:hal', ts: 10 },
          { users: ['gus'], conversation: 'g:band', ts: 30 },
          { users: ['gus', 'hal'], conversation: 'dm:gus:hal', ts: 20 }
        ])
        await store.touchMany([])
        assert.deepEqual((await store.list('gus', 10)).map((c) => [c.conversation, c.ts]), [
          ['g:band', 30],
          ['dm:gus:hal', 20]
        ])
        const moved = await store.advanceMany([
          { user: 'gus', conversation: 'dm:gus:hal', marker: 'delivered', seq: 4 },
          { user: 'hal', conversation: 'dm:gus:hal', marker: 'read', seq: 3 },
          { user: 'gus', conversation: 'g:band', marker: 'read', seq: 2 },
          { user: 'gus', conversation: 'dm:gus:hal', marker: 'delivered', seq: 2 }
        ])
        assert.deepEqual(moved, [
          { before: 0, after: 4 },
          { before: 0, after: 3 },
          { before: 0, after: 2 },
          { before: 4, after: 4 }
        ])
        assert.deepEqual(await store.advanceMany([]), [])
        const hal = await store.get('hal', 'dm:gus:hal')
        assert.equal(hal?.readSeq, 3)
        assert.equal(hal?.deliveredSeq, 3, 'reading also delivers')
      } finally {
        await done()
      }
    })
  })
}
