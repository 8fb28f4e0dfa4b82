// One contract, two message stores: the embedded SQLite store and the MongoDB store (against the
// real MongoDB-compatible server of the test harness).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { MongoClient } from 'mongodb'
import { mongoUrl } from '../../../test/helpers/services.js'
import { MongoMessageStore } from '../mongo-store.js'
import { SqliteMessageStore } from '../sqlite-store.js'
import { dmKey, groupKey, type MessageStore, type NewMessage } from '../store.js'

interface Backend {
  name: string
  /** A store; calling it twice gives two stores over the same data, like two nodes. */
  open(): Promise<MessageStore>
  cleanup(): Promise<void>
}

const sqlite = (): Backend => {
  const file = join(mkdtempSync(join(tmpdir(), 'parley-store-')), 'messages.db')
  const opened: MessageStore[] = []
  return {
    name: 'embedded (SQLite)',
    open: async () => {
      const s = new SqliteMessageStore(file)
      await s.init()
      opened.push(s)
      return s
    },
    cleanup: async () => {
      await Promise.all(opened.map((s) => s.close()))
    }
  }
}

const mongo = (): Backend => {
  const clients: MongoClient[] = []
  const database = `parley_contract_${randomBytes(4).toString('hex')}`
  return {
    name: 'MongoDB (FerretDB)',
    open: async () => {
      const client = new MongoClient(mongoUrl(), { serverSelectionTimeoutMS: 5000 })
      clients.push(client)
      const s = new MongoMessageStore(client.db(database))
      await s.init()
      return s
    },
    cleanup: async () => {
      await clients[0]?.db(database).dropDatabase().catch(() => undefined)
      await Promise.all(clients.map((c) => c.close()))
    }
  }
}

let n = 0
const msg = (conversation: string, user: string, extra: Partial<NewMessage> = {}): NewMessage => ({
  conversation,
  sender: { user, device: 'phone' },
  cmid: `c${++n}`,
  type: 'text',
  body: `message ${n}`,
  e2e: false,
  ts: Date.now(),
  ...extra
})

for (const make of [sqlite, mongo]) {
  const backend = make()
  describe(`message store contract: ${backend.name}`, () => {
    after(() => backend.cleanup())

    it('numbers each conversation from 1 without gaps, and keeps every field', async () => {
      const store = await backend.open()
      const ab = dmKey('alice', 'bob')
      const team = groupKey(`team-${randomBytes(3).toString('hex')}`)
      const results = await store.append([
        msg(ab, 'alice', { replyTo: 'x1', e2e: true }),
        msg(team, 'alice'),
        msg(ab, 'bob'),
        msg(ab, 'alice')
      ])
      assert.deepEqual(results.map((r) => [r.message.conversation, r.message.seq, r.duplicate]), [
        [ab, 1, false],
        [team, 1, false],
        [ab, 2, false],
        [ab, 3, false]
      ])
      assert.equal(new Set(results.map((r) => r.message.id)).size, 4)
      const stored = await store.after(ab, 0, 10)
      assert.deepEqual(stored, results.filter((r) => r.message.conversation === ab).map((r) => r.message))
      assert.equal(stored[0]!.replyTo, 'x1')
      assert.equal(stored[0]!.e2e, true)
      assert.equal(stored[1]!.replyTo, undefined)
      assert.equal(await store.lastSeq(ab), 3)
      assert.equal(await store.lastSeq(dmKey('nobody', 'else')), 0)
    })

    it('keeps media references, edits, deletes and notices, finds a message by id and deletes content for everyone', async () => {
      const store = await backend.open()
      const conv = groupKey(`kinds-${randomBytes(3).toString('hex')}`)
      const media = { id: 'm-1.jpg', mime: 'image/jpeg', size: 2048, width: 640, height: 480 }
      const [photo, notice] = await store.append([
        msg(conv, 'gus', { type: 'media', media, body: 'a caption' }),
        msg(conv, 'gus', { type: 'system', body: '', notice: { change: 'added', by: 'gus', users: ['hal'] } })
      ])
      const [edit] = await store.append([msg(conv, 'gus', { type: 'edit', ref: photo!.message.id, body: 'a better caption' })])
      assert.deepEqual(await store.get(conv, photo!.message.id), photo!.message)
      assert.deepEqual((await store.get(conv, notice!.message.id))?.notice, { change: 'added', by: 'gus', users: ['hal'] })
      assert.equal((await store.get(conv, edit!.message.id))?.ref, photo!.message.id)
      assert.equal(await store.get(groupKey('elsewhere'), photo!.message.id), undefined, 'only within its conversation')
      assert.equal(await store.get(conv, 'nope'), undefined)

      await store.redact(conv, photo!.message.id)
      await store.redact(conv, photo!.message.id) // idempotent
      const gone = await store.get(conv, photo!.message.id)
      assert.deepEqual([gone?.deleted, gone?.body, gone?.media, gone?.seq, gone?.type], [true, '', undefined, 1, 'media'], 'content gone, place kept')
      assert.deepEqual((await store.after(conv, 0, 10)).map((m) => [m.type, m.deleted ?? false, m.body]), [
        ['media', true, ''],
        ['system', false, ''],
        ['edit', true, '']
      ], 'the edits of a deleted message lose their text too')
      assert.deepEqual((await store.findSent('gus', edit!.message.cmid))?.id, edit!.message.id)
      assert.equal(await store.findSent('gus', 'never-sent'), undefined)
    })

    it('stores a retried send once and answers it with the same id and seq', async () => {
      const store = await backend.open()
      const conv = dmKey('carol', `dave${randomBytes(2).toString('hex')}`)
      const first = msg(conv, 'carol', { cmid: `retry-${randomBytes(3).toString('hex')}` })
      const [original] = await store.append([first])
      const [again] = await store.append([{ ...first, body: 'a retry may differ; the first wins', ts: first.ts + 5 }])
      assert.equal(again!.duplicate, true)
      assert.deepEqual(again!.message, original!.message)
      const twice = await store.append([msg(conv, 'dave', { cmid: first.cmid }), msg(conv, 'carol', { cmid: first.cmid })])
      assert.deepEqual(twice.map((r) => r.duplicate), [false, true], 'the same cmid from another sender is another message')
      const inBatch = msg(conv, 'carol')
      const pair = await store.append([inBatch, { ...inBatch }])
      assert.deepEqual(pair.map((r) => [r.duplicate, r.message.seq]), [[false, 3], [true, 3]], 'a repeat inside one batch')
      assert.equal(await store.lastSeq(conv), 3)
    })

    it('pages forward after a cursor and backward before a seq, in order', async () => {
      const store = await backend.open()
      const conv = groupKey(`paging-${randomBytes(3).toString('hex')}`)
      await store.append(Array.from({ length: 25 }, () => msg(conv, 'erin')))
      assert.deepEqual((await store.after(conv, 0, 10)).map((m) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
      assert.deepEqual((await store.after(conv, 20, 10)).map((m) => m.seq), [21, 22, 23, 24, 25])
      assert.deepEqual(await store.after(conv, 25, 10), [])
      assert.deepEqual((await store.before(conv, 26, 3)).map((m) => m.seq), [23, 24, 25])
      assert.deepEqual((await store.before(conv, 3, 10)).map((m) => m.seq), [1, 2])
    })

    it('hands out every seq exactly once when two nodes append to one conversation at once', async () => {
      const [a, b] = [await backend.open(), await backend.open()]
      const conv = groupKey(`race-${randomBytes(3).toString('hex')}`)
      const burst = (store: MessageStore, user: string) =>
        Promise.all(Array.from({ length: 20 }, () => store.append(Array.from({ length: 10 }, () => msg(conv, user)))))
      const [fromA, fromB] = await Promise.all([burst(a, 'node-a-user'), burst(b, 'node-b-user')])
      const seqs = [...fromA, ...fromB].flat().map((r) => r.message.seq).sort((x, y) => x - y)
      assert.deepEqual(seqs, Array.from({ length: 400 }, (_, i) => i + 1), '1..400, no gap, no repeat')
      const all = await a.after(conv, 0, 1000)
      assert.equal(all.length, 400)
      assert.deepEqual(all.map((m) => m.seq), seqs)
    })

    it('leaves no seq unused when the same sends are retried on two nodes at once', async () => {
      const [a, b] = [await backend.open(), await backend.open()]
      const conv = groupKey(`retry-race-${randomBytes(3).toString('hex')}`)
      // Each round: both nodes get the same 10 sends (a retry that reached two nodes), each behind
      // a message of its own, so a batch can lose a number to the other node's copy of a send.
      const rounds = 15
      for (let r = 0; r < rounds; r++) {
        const shared = Array.from({ length: 10 }, () => msg(conv, 'retrier'))
        const [fromA, fromB] = await Promise.all([
          a.append([msg(conv, 'node-a-user'), ...shared]),
          b.append([msg(conv, 'node-b-user'), ...shared])
        ])
        // both nodes answer every shared send with the one stored copy
        shared.forEach((_, i) => assert.equal(fromA[i + 1]!.message.id, fromB[i + 1]!.message.id))
      }
      const stored = await a.after(conv, 0, 1000)
      assert.equal(stored.length, rounds * 12, 'each shared send stored once, plus each node\'s own')
      assert.deepEqual(
        stored.map((m) => m.seq),
        Array.from({ length: rounds * 12 }, (_, i) => i + 1),
        'gap-free: readers never wait for a number nobody holds'
      )
    })

    it('keeps what it stored across a restart', async () => {
      const first = await backend.open()
      const conv = dmKey('frank', `gina${randomBytes(2).toString('hex')}`)
      await first.append([msg(conv, 'frank'), msg(conv, 'gina')])
      await first.close()
      const second = await backend.open()
      assert.deepEqual((await second.after(conv, 0, 10)).map((m) => [m.seq, m.sender.user]), [
        [1, 'frank'],
        [2, 'gina']
      ])
    })
  })
}
