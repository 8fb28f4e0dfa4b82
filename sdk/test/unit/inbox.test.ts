// sdk/inbox.ts: ordering, duplicates, gap syncs (one per missing range), the held cap, and a
// simulated server (gap-free store, live copies shuffled and repeated, sync answers fed back).
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Inbox, type Sequenced, type SyncRequest } from '../../inbox.js'

interface Msg extends Sequenced {
  body: string
}
const bob = { kind: 'dm', id: 'bob' } as const
const team = { kind: 'group', id: 'team' } as const
const msg = (conversation: Msg['conversation'], seq: number): Msg => ({ id: `${conversation.id}-${seq}`, seq, conversation, body: `${conversation.id} ${seq}` })

function harness(maxHeld?: number) {
  const app: Msg[] = []
  const syncs: SyncRequest[] = []
  const contiguous: Array<[string, number]> = []
  const inbox = new Inbox<Msg>({
    deliver: (m) => app.push(m),
    requestSync: (r) => syncs.push(r),
    onContiguous: (c, seq) => contiguous.push([c.id, seq]),
    ...(maxHeld === undefined ? {} : { maxHeld })
  })
  const seqs = (id = 'bob') => app.filter((m) => m.conversation.id === id).map((m) => m.seq)
  /** What the wiring does with a request: messages.sync, then every envelope back through receive. */
  const answer = (r: SyncRequest) => inbox.receiveAll(range(r.afterSeq + 1, r.untilSeq).map((s) => msg(r.conversation, s)))
  return { inbox, app, syncs, contiguous, seqs, answer }
}
const range = (from: number, to: number) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)

describe('Inbox', () => {
  it('releases in seq order and holds what arrives early', () => {
    const h = harness()
    assert.equal(h.inbox.receive(msg(bob, 3)), 'held')
    assert.equal(h.inbox.receive(msg(bob, 2)), 'held')
    assert.deepEqual(h.seqs(), [])
    assert.equal(h.inbox.contiguous(bob), 0)
    assert.equal(h.inbox.receive(msg(bob, 1)), 'released')
    assert.deepEqual(h.seqs(), [1, 2, 3])
    assert.equal(h.inbox.contiguous(bob), 3)
    assert.equal(h.inbox.heldCount(bob), 0)
    // One onContiguous per receive call, with the new high point, not one per message.
    assert.deepEqual(h.contiguous, [['bob', 3]])
  })

  it('keeps conversations apart', () => {
    const h = harness()
    h.inbox.receive(msg(team, 1))
    h.inbox.receive(msg(bob, 2))
    h.inbox.receive(msg(team, 2))
    assert.deepEqual(h.seqs('team'), [1, 2])
    assert.deepEqual(h.seqs('bob'), [])
    assert.equal(h.inbox.contiguous(bob), 0)
    assert.equal(h.inbox.contiguous(team), 2)
  })

  it('drops duplicates from a persistent-session replay overlapping a pull page', () => {
    const h = harness()
    // Live 1..3, then the session replays 2..4 (no DUP flag), then a pull page returns 1..5.
    for (const s of [1, 2, 3]) h.inbox.receive(msg(bob, s))
    const replay = [2, 3, 4].map((s) => h.inbox.receive(msg(bob, s)))
    assert.deepEqual(replay, ['duplicate', 'duplicate', 'released'])
    h.inbox.receiveAll(range(1, 5).map((s) => msg(bob, s)))
    assert.deepEqual(h.seqs(), [1, 2, 3, 4, 5])
    assert.equal(h.inbox.counters.duplicates, 6)
    // A copy of a held envelope is a duplicate too.
    h.inbox.receive(msg(bob, 9))
    assert.equal(h.inbox.receive(msg(bob, 9)), 'duplicate')
    assert.equal(h.inbox.heldCount(bob), 1)
  })

  it('asks for a sync of exactly the missing range, once per range', () => {
    const h = harness()
    h.inbox.receive(msg(bob, 1))
    h.inbox.receive(msg(bob, 5)) // hole 2..4
    assert.deepEqual(h.syncs, [{ conversation: bob, afterSeq: 1, untilSeq: 4, reason: 'gap' }])
    h.inbox.receive(msg(bob, 6)) // follows a held one: no new hole
    h.inbox.receive(msg(bob, 5)) // duplicate of a held one
    h.inbox.receive(msg(bob, 3)) // splits 2..4 into 2 and 4: both already asked for
    assert.equal(h.syncs.length, 1)
    h.inbox.receive(msg(bob, 9)) // a new hole above: 7..8
    assert.deepEqual(h.syncs[1], { conversation: bob, afterSeq: 6, untilSeq: 8, reason: 'gap' })
    assert.deepEqual(h.inbox.missing(bob), [{ from: 2, to: 2 }, { from: 4, to: 4 }, { from: 7, to: 8 }])
    // The answers fill everything; nothing more is asked.
    for (const r of [...h.syncs]) h.answer(r)
    assert.deepEqual(h.seqs(), range(1, 9))
    assert.equal(h.syncs.length, 2)
    assert.deepEqual(h.inbox.missing(bob), [])
  })

  it('after a lost sync answer, retryGaps (reconnect, failed sync) asks again for each remaining hole', () => {
    const h = harness()
    h.inbox.receive(msg(bob, 4)) // hole 1..3
    h.inbox.receive(msg(bob, 2)) // splits it: 1 and 3
    assert.equal(h.syncs.length, 1)
    // The sync answer was lost with the connection: retryGaps asks for each remaining hole.
    h.inbox.retryGaps()
    assert.deepEqual(h.syncs.slice(1), [
      { conversation: bob, afterSeq: 0, untilSeq: 1, reason: 'gap' },
      { conversation: bob, afterSeq: 2, untilSeq: 3, reason: 'gap' }
    ])
    h.answer(h.syncs[1]!)
    h.answer(h.syncs[2]!)
    assert.deepEqual(h.seqs(), [1, 2, 3, 4])
    h.inbox.retryGaps()
    assert.equal(h.syncs.length, 3, 'no hole left, nothing asked')
  })

  it('caps held envelopes: keeps the lowest, drops the excess, asks one overflow sync from the contiguous point', () => {
    const h = harness(3)
    h.inbox.receive(msg(bob, 1))
    for (const s of [3, 4, 5]) h.inbox.receive(msg(bob, s)) // hole 2, held 3..5 (the cap)
    assert.equal(h.syncs.length, 1)
    assert.equal(h.inbox.receive(msg(bob, 6)), 'dropped')
    assert.equal(h.inbox.receive(msg(bob, 7)), 'dropped')
    assert.equal(h.inbox.heldCount(bob), 3)
    assert.equal(h.inbox.counters.dropped, 2)
    // One overflow request, from the contiguous point (1) to the highest dropped seq (6 at the time).
    assert.deepEqual(h.syncs[1], { conversation: bob, afterSeq: 1, untilSeq: 6, reason: 'overflow' })
    assert.equal(h.syncs.length, 2, 'a second drop while the overflow sync runs asks nothing')
    // The overflow answer (2..6) is released; 7, dropped meanwhile, gets the next overflow request.
    h.answer(h.syncs[1])
    assert.deepEqual(h.seqs(), range(1, 6))
    assert.deepEqual(h.syncs[2], { conversation: bob, afterSeq: 6, untilSeq: 7, reason: 'overflow' })
    h.answer(h.syncs[2])
    assert.deepEqual(h.seqs(), range(1, 7))
    assert.equal(h.syncs.length, 3)
  })

  it('at the cap, a lower seq evicts the highest held one, which the overflow sync brings back', () => {
    const h = harness(2)
    h.inbox.receive(msg(bob, 5))
    h.inbox.receive(msg(bob, 9))
    assert.equal(h.inbox.receive(msg(bob, 3)), 'held') // evicts 9
    assert.equal(h.inbox.heldCount(bob), 2)
    const overflow = h.syncs.find((r) => r.reason === 'overflow')
    assert.deepEqual(overflow, { conversation: bob, afterSeq: 0, untilSeq: 9, reason: 'overflow' })
    h.answer(overflow)
    assert.deepEqual(h.seqs(), range(1, 9))
  })

  it('advanceTo skips forward (restored state, pull reset) and releases what follows', () => {
    const h = harness()
    h.inbox.receive(msg(bob, 42))
    h.inbox.receive(msg(bob, 43))
    h.inbox.receive(msg(bob, 41))
    h.inbox.advanceTo(bob, 40)
    assert.deepEqual(h.seqs(), [41, 42, 43])
    h.inbox.advanceTo(bob, 10) // never backwards
    assert.equal(h.inbox.contiguous(bob), 43)
    assert.equal(h.inbox.receive(msg(bob, 12)), 'duplicate')
  })

  it('a deliver() that throws does not stall the conversation', () => {
    const errors: unknown[] = []
    const got: number[] = []
    const inbox = new Inbox<Msg>({
      deliver: (m) => {
        if (m.seq === 2) throw new Error('app bug')
        got.push(m.seq)
      },
      requestSync: () => {},
      onError: (e) => errors.push(e)
    })
    for (const s of [3, 2, 1]) inbox.receive(msg(bob, s))
    assert.deepEqual(got, [1, 3])
    assert.equal(errors.length, 1)
    assert.equal(inbox.contiguous(bob), 3)
  })

  it('simulated server: shuffled, repeated live copies plus sync answers give exactly once, in order', () => {
    // A deterministic PRNG so a failure reproduces.
    let state = 12345
    const rand = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31)
    for (const maxHeld of [1000, 4]) {
      const h = harness(maxHeld)
      const n = 300
      // Live: each message 1-3 times, some never (QoS 0 misses), in a locally shuffled order.
      const live: Msg[] = []
      for (let s = 1; s <= n; s++) {
        const copies = rand() < 0.1 ? 0 : 1 + Math.floor(rand() * 3)
        for (let i = 0; i < copies; i++) live.push(msg(rand() < 0.5 ? bob : team, s))
      }
      for (let i = live.length - 1; i > 0; i--) {
        const j = Math.max(0, i - Math.floor(rand() * 20))
        ;[live[i], live[j]] = [live[j]!, live[i]!]
      }
      let answered = 0
      for (const m of live) {
        h.inbox.receive(m)
        // Answer pending syncs now and then, late, as the network would.
        if (rand() < 0.2) while (answered < h.syncs.length) h.answer(h.syncs[answered++]!)
      }
      while (answered < h.syncs.length) h.answer(h.syncs[answered++]!)
      // The tail after the last live copy is found by the reconnect sync (rule 3), not by a gap.
      for (const c of [bob, team]) h.answer({ conversation: c, afterSeq: h.inbox.contiguous(c), untilSeq: n, reason: 'gap' })
      for (const id of ['bob', 'team']) assert.deepEqual(h.seqs(id), range(1, n), `maxHeld ${maxHeld}, ${id}`)
      assert.equal(h.app.length, 2 * n)
      // Every request was for a range actually missing when asked (afterSeq + 1 <= untilSeq).
      for (const r of h.syncs) assert.ok(r.afterSeq < r.untilSeq)
      assert.ok(h.inbox.counters.duplicates > 0 && h.inbox.counters.held > 0 && h.syncs.length > 0)
      if (maxHeld === 4) assert.ok(h.inbox.counters.dropped > 0, 'the cap was hit')
    }
  })
})
