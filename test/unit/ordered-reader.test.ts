// test/helpers/ordered-reader.ts against a simulated server: a store numbered gap-free, live
// copies in any order and more than once, and sync answers the test releases when it wants.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { OrderedReader, type Sequenced, type SyncPage } from '../helpers/ordered-reader.js'

interface Msg extends Sequenced {
  body: string
}
const bob = { kind: 'dm', id: 'bob' } as const
const msg = (conversation: Msg['conversation'], seq: number): Msg => ({ id: `${conversation.id}-${seq}`, seq, conversation, body: `${conversation.id} ${seq}` })
const tick = () => new Promise((resolve) => setImmediate(resolve))

/** A server whose store holds `stored` messages per conversation; sync answers wait until released. */
function harness(options: { pageSize?: number; fail?: () => boolean } = {}) {
  const stored = new Map<string, number>()
  const pending: Array<() => void> = []
  const syncCalls: Array<[string, number]> = []
  const app: Msg[] = []
  const reader = new OrderedReader<Msg>({
    deliver: (m) => app.push(m),
    sync: (conversation, afterSeq) => {
      syncCalls.push([conversation.id, afterSeq])
      return new Promise<SyncPage<Msg>>((resolve, reject) =>
        pending.push(() => {
          if (options.fail?.()) return reject(new Error('connection lost'))
          const last = stored.get(conversation.id) ?? 0
          const size = options.pageSize ?? 100
          const messages: Msg[] = []
          for (let s = afterSeq + 1; s <= Math.min(last, afterSeq + size); s++) messages.push(msg(conversation, s))
          resolve({ messages, hasMore: afterSeq + size < last, lastSeq: last })
        })
      )
    },
    list: async () => [...stored].map(([id, lastSeq]) => ({ conversation: { kind: 'dm' as const, id }, lastSeq })),
    retryMs: 10
  })
  /** Answers every sync asked so far (and those they lead to), until none is left. */
  const answerAll = async () => {
    for (let i = 0; i < 1000; i++) {
      await tick()
      const batch = pending.splice(0)
      if (batch.length === 0 && !reader.busy) return
      batch.forEach((answer) => answer())
      if (batch.length === 0) await new Promise((r) => setTimeout(r, 15))
    }
    throw new Error('syncs never settled')
  }
  const seqs = (id: string) => app.filter((m) => m.conversation.id === id).map((m) => m.seq)
  return { stored, pending, syncCalls, app, reader, answerAll, seqs }
}

describe('OrderedReader', () => {
  it('delivers in order and once, holding what comes early and dropping copies', () => {
    const h = harness()
    for (const s of [1, 2, 2, 4, 3, 1, 5, 4]) h.reader.receive(msg(bob, s))
    assert.deepEqual(h.seqs('bob'), [1, 2, 3, 4, 5])
    assert.equal(h.reader.counters.duplicates, 3)
    assert.equal(h.reader.counters.heldOutOfOrder, 1)
    assert.equal(h.reader.counters.gapSyncs, 1, 'seq 4 before 3 is a gap: a sync was asked')
  })

  it('fills a gap with sync pages, from the last contiguous seq, while hasMore', async () => {
    const h = harness({ pageSize: 3 })
    h.stored.set('bob', 10)
    h.reader.receive(msg(bob, 1))
    h.reader.receive(msg(bob, 10))
    await h.answerAll()
    assert.deepEqual(h.seqs('bob'), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert.deepEqual(h.syncCalls, [['bob', 1], ['bob', 4], ['bob', 7]])
    assert.equal(h.reader.counters.deliveredFromSync, 8)
  })

  it('stays exactly-once and in order when live copies arrive while a sync is in flight', async () => {
    const h = harness()
    h.stored.set('bob', 6)
    h.reader.receive(msg(bob, 3)) // gap: sync from 0 asked
    h.reader.receive(msg(bob, 1)) // live, while the sync waits
    h.reader.receive(msg(bob, 2))
    h.reader.receive(msg(bob, 5))
    assert.deepEqual(h.seqs('bob'), [1, 2, 3])
    await h.answerAll() // the page repeats 1..3 (dropped), brings 4, 6, and 5 is already held
    h.reader.receive(msg(bob, 6))
    assert.deepEqual(h.seqs('bob'), [1, 2, 3, 4, 5, 6])
    assert.equal(h.app.length, 6)
  })

  it('runs one sync per conversation at a time, and goes round again when asked meanwhile', async () => {
    const h = harness()
    h.stored.set('bob', 3)
    h.reader.receive(msg(bob, 2))
    h.reader.receive(msg(bob, 3)) // still a gap: no second sync while the first runs
    assert.equal(h.syncCalls.length, 1)
    h.stored.set('bob', 5)
    h.reader.receive(msg(bob, 5))
    await h.answerAll()
    assert.deepEqual(h.seqs('bob'), [1, 2, 3, 4, 5])
    assert.ok(h.syncCalls.length <= 3, `bounded syncs: ${JSON.stringify(h.syncCalls)}`)
  })

  it('on reconnect syncs what moved, finds new conversations, and skips idle ones', async () => {
    const h = harness()
    h.stored.set('bob', 2)
    h.reader.receive(msg(bob, 1))
    h.reader.receive(msg(bob, 2))
    h.stored.set('carol', 2) // a conversation this device never heard of
    await h.reader.resync()
    await h.answerAll()
    assert.deepEqual(h.syncCalls, [['carol', 0]], 'bob had nothing new')
    assert.deepEqual(h.seqs('carol'), [1, 2])
    h.stored.set('bob', 4)
    await h.reader.resync()
    await h.answerAll()
    assert.deepEqual(h.seqs('bob'), [1, 2, 3, 4])
  })

  it('retries a sync that failed (the connection dropped) until it gets through', async () => {
    let failures = 2
    const h = harness({ fail: () => failures-- > 0 })
    h.stored.set('bob', 3)
    h.reader.receive(msg(bob, 3))
    await h.answerAll()
    assert.deepEqual(h.seqs('bob'), [1, 2, 3])
    assert.equal(h.reader.counters.syncFailures, 2)
    h.reader.close()
  })

  it('bounds what it holds; what it dropped comes back with the sync', async () => {
    const h = harness()
    const small = new OrderedReader<Msg>({
      deliver: (m) => h.app.push(m),
      sync: async (conversation, afterSeq) => ({
        messages: [2, 3, 4, 5].filter((s) => s > afterSeq).map((s) => msg(conversation, s)),
        hasMore: false,
        lastSeq: 5
      }),
      maxHeld: 2
    })
    for (const s of [3, 4, 5]) small.receive(msg(bob, s))
    assert.equal(small.counters.droppedOverflow, 1)
    small.receive(msg(bob, 1))
    await small.idle()
    assert.deepEqual(h.seqs('bob'), [1, 2, 3, 4, 5])
  })
})
