// Receipts coalesce marker moves: a recipient acknowledging a burst costs one marker write and one
// "delivered up to the last" receipt, and every acknowledgement still resolves once it is stored.
import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import pino from 'pino'
import type { PluginContext } from '../../../broker/plugin-api.js'
import type { GroupsApi } from '../../groups/index.js'
import { Receipts } from '../receipts.js'
import { SqliteStateStore, type MarkerMove } from '../state-store.js'
import type { MessageStore } from '../store.js'

async function setup(lastSeq: number) {
  const state = new SqliteStateStore(join(mkdtempSync(join(tmpdir(), 'parley-receipts-')), 'state.db'))
  await state.init()
  const writes: MarkerMove[][] = []
  const advanceMany = state.advanceMany.bind(state)
  state.advanceMany = async (moves) => {
    writes.push([...moves])
    return advanceMany(moves)
  }
  const published: Array<{ topic: string; payload: unknown }> = []
  const ctx = {
    publish: async (p: { topic: string; payload: string }) => void published.push({ topic: p.topic, payload: JSON.parse(p.payload) }),
    log: pino({ level: 'silent' })
  } as unknown as PluginContext<unknown>
  const lastSeqAsked: string[] = []
  const store = {
    lastSeq: async (key: string) => {
      lastSeqAsked.push(key)
      return lastSeq
    }
  } as unknown as MessageStore
  const counted: string[] = []
  const receipts = new Receipts(ctx, async () => store, async () => state, {} as GroupsApi, {
    batchMs: 1000,
    moveBatchMs: 5,
    maxRange: 100,
    systemUser: 'parley',
    metrics: { markersMoved: { inc: (l) => counted.push(`${l.marker}:${l.kind}`) }, receiptsSent: { inc: (l) => counted.push(`receipt:${l.kind}`) } }
  })
  return { state, receipts, writes, published, counted, lastSeqAsked }
}

describe('receipts: coalesced marker moves', () => {
  it('turns a burst of acknowledgements into one write and one receipt up to the highest seq', async () => {
    const { state, receipts, writes, published, counted } = await setup(20)
    try {
      const bob = { kind: 'dm', id: 'alice' } as const
      const results = await Promise.all([5, 3, 9, 7].map((seq) => receipts.move('bob', bob, 'dm:alice:bob', 'delivered', seq)))
      assert.deepEqual(results, Array(4).fill({ before: 0, after: 9 }), 'every acknowledgement resolves with the stored marker')
      assert.equal(writes.length, 1)
      assert.deepEqual(writes[0], [{ user: 'bob', conversation: 'dm:alice:bob', marker: 'delivered', seq: 9 }])
      assert.deepEqual(
        published.map((p) => p.topic),
        ['u/alice/r']
      )
      assert.deepEqual(published[0]!.payload, { kind: 'delivered', conversation: { kind: 'dm', id: 'bob' }, upToSeq: 9, by: 'bob', ts: (published[0]!.payload as { ts: number }).ts })
      assert.deepEqual(counted, ['delivered:dm', 'receipt:delivered'])
      // A later move below the marker stores nothing new and tells nobody.
      assert.deepEqual(await receipts.move('bob', bob, 'dm:alice:bob', 'delivered', 8), { before: 9, after: 9 })
      assert.equal(published.length, 1)
    } finally {
      await state.close()
    }
  })

  it('keeps moves of different users, conversations and markers apart, clamped to the last message', async () => {
    const { state, receipts, writes, published, lastSeqAsked } = await setup(6)
    try {
      const [a, b, c] = await Promise.all([
        receipts.move('bob', { kind: 'dm', id: 'alice' }, 'dm:alice:bob', 'delivered', 4),
        receipts.move('carol', { kind: 'dm', id: 'alice' }, 'dm:alice:carol', 'delivered', 50),
        receipts.move('bob', { kind: 'dm', id: 'alice' }, 'dm:alice:bob', 'read', 2)
      ])
      assert.equal(writes.length, 1, 'one write for the whole turn')
      assert.deepEqual(lastSeqAsked.sort(), ['dm:alice:bob', 'dm:alice:carol'], 'one last-seq lookup per conversation')
      assert.equal(writes[0]!.length, 3)
      assert.deepEqual([a, b, c], [
        { before: 0, after: 4 },
        { before: 0, after: 6 },
        { before: 0, after: 2 }
      ])
      assert.deepEqual(published.map((p) => p.topic).sort(), ['u/alice/r', 'u/alice/r', 'u/alice/r', 'u/bob/e'])
    } finally {
      await state.close()
    }
  })

  it('does not look up the last seq for acknowledgements of envelopes the server sent', async () => {
    const { state, receipts, writes, lastSeqAsked } = await setup(6)
    try {
      const dm = { kind: 'dm', id: 'alice' } as const
      assert.deepEqual(await receipts.move('bob', dm, 'dm:alice:bob', 'delivered', 5, false), { before: 0, after: 5 })
      assert.deepEqual(lastSeqAsked, [])
      // A device's own marker in the same turn still gets clamped (to 6 here).
      const [a, b] = await Promise.all([receipts.move('bob', dm, 'dm:alice:bob', 'delivered', 6, false), receipts.move('bob', dm, 'dm:alice:bob', 'delivered', 99)])
      assert.deepEqual([a, b], [{ before: 5, after: 6 }, { before: 5, after: 6 }])
      assert.deepEqual(lastSeqAsked, ['dm:alice:bob'])
      assert.equal(writes.at(-1)![0]!.seq, 6)
    } finally {
      await state.close()
    }
  })
})
