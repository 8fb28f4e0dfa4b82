// sdk/outbox.ts against a fake transport: publishes the test acknowledges (PUBACK) or cuts
// (connection lost), carbons and ErrorMessages fed back as the server sends them, a manual clock.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { newCmid } from '../../cmid.js'
import { MemoryOutboxStore, Outbox, type OutboxEntry, type OutboxState } from '../../outbox.js'

const bob = { kind: 'dm', id: 'bob' } as const
const team = { kind: 'group', id: 'team' } as const
const tick = () => new Promise((resolve) => setImmediate(resolve))

interface Publish {
  topic: string
  payload: Record<string, unknown>
  puback(): void
  cut(): void
}

function harness(options: { store?: MemoryOutboxStore; maxInFlight?: number } = {}) {
  const published: Publish[] = []
  const changes: Array<[string, OutboxState]> = []
  let now = 1_000
  const timers: Array<{ at: number; fn: () => void }> = []
  let n = 0
  const outbox = new Outbox({
    userId: 'alice',
    publish: (topic, payload) =>
      new Promise<void>((resolve, reject) => {
        published.push({ topic, payload: JSON.parse(payload) as Record<string, unknown>, puback: resolve, cut: () => reject(new Error('connection lost')) })
      }),
    onChange: (e) => changes.push([e.cmid, e.state]),
    now: () => now,
    schedule: (fn, ms) => {
      const t = { at: now + ms, fn }
      timers.push(t)
      return () => timers.splice(timers.indexOf(t), 1)
    },
    newCmid: () => `c${++n}`,
    ...(options.store ? { store: options.store } : {}),
    ...(options.maxInFlight ? { maxInFlight: options.maxInFlight } : {})
  })
  const advance = (ms: number) => {
    now += ms
    for (const t of timers.filter((x) => x.at <= now)) {
      timers.splice(timers.indexOf(t), 1)
      t.fn()
    }
  }
  const carbon = (cmid: string, seq: number) => outbox.handleEnvelope({ id: `id${seq}`, seq, cmid, from: { user: 'alice', device: 'phone' } })
  const kinds = (cmid: string) => changes.filter(([c]) => c === cmid).map(([, s]) => s.kind)
  return { outbox, published, changes, advance, carbon, kinds }
}

describe('Outbox', () => {
  it('goes queued -> sending -> acked -> stored(id, seq), publishing the payload with its cmid', async () => {
    const h = harness()
    const e = await h.outbox.send(bob, { body: 'hi' })
    assert.equal(e.cmid, 'c1')
    assert.equal(e.topic, 's/dm/bob')
    assert.equal(h.published.length, 0, 'not connected yet')
    h.outbox.connected()
    assert.equal(h.published.length, 1)
    assert.deepEqual(h.published[0]!.payload, { body: 'hi', cmid: 'c1' })
    assert.equal(h.outbox.get('c1')?.state.kind, 'sending')
    h.published[0]!.puback()
    await tick()
    assert.deepEqual(h.outbox.get('c1')?.state, { kind: 'acked' })
    assert.equal(h.carbon('c1', 7), true)
    assert.deepEqual(h.kinds('c1'), ['queued', 'sending', 'acked', 'stored'])
    assert.deepEqual(h.changes.at(-1), ['c1', { kind: 'stored', id: 'id7', seq: 7 }])
    assert.equal(h.outbox.get('c1'), undefined, 'a stored entry leaves the outbox')
  })

  it('a group send learns its id and seq from any envelope with its cmid (the QoS 0 copy, or a sync page)', async () => {
    const h = harness()
    await h.outbox.send(team, { body: 'all' })
    h.outbox.connected()
    assert.equal(h.published[0]!.topic, 's/g/team')
    h.published[0]!.puback()
    await tick()
    // Another user's envelope with the same cmid is not ours (a cmid is unique per user only).
    assert.equal(h.outbox.handleEnvelope({ id: 'x', seq: 3, cmid: 'c1', from: { user: 'bob', device: 'p' } }), false)
    assert.equal(h.outbox.get('c1')?.state.kind, 'acked')
    assert.equal(h.carbon('c1', 4), true)
    assert.equal(h.outbox.get('c1'), undefined)
  })

  it('resends with the same cmid after the connection drops before the PUBACK', async () => {
    const h = harness()
    await h.outbox.send(bob, { body: 'one' })
    await h.outbox.send(bob, { body: 'two' })
    h.outbox.connected()
    assert.deepEqual(h.published.map((p) => p.payload.cmid), ['c1', 'c2'])
    h.published[0]!.puback()
    await tick()
    h.outbox.disconnected()
    h.published[1]!.cut()
    await tick()
    assert.equal(h.outbox.get('c1')?.state.kind, 'acked', 'acked: stored, no resend')
    assert.equal(h.outbox.get('c2')?.state.kind, 'queued')
    h.outbox.connected()
    assert.equal(h.published.length, 3)
    assert.deepEqual(h.published[2]!.payload, { body: 'two', cmid: 'c2' }, 'same payload, same cmid')
    assert.equal(h.outbox.get('c2')?.attempts, 2)
    // A late PUBACK of the abandoned first attempt changes nothing; the current one does.
    h.published[1]!.puback()
    await tick()
    assert.equal(h.outbox.get('c2')?.state.kind, 'sending')
    h.published[2]!.puback()
    await tick()
    assert.equal(h.outbox.get('c2')?.state.kind, 'acked')
    // The server answered the retry with the stored message: one carbon, one seq.
    h.carbon('c2', 2)
    h.carbon('c1', 1)
    assert.deepEqual(h.outbox.pending(), [])
    assert.deepEqual(h.kinds('c2'), ['queued', 'sending', 'queued', 'sending', 'acked', 'stored'])
  })

  it('a refused send ends failed with the server error code (the error comes after the PUBACK)', async () => {
    const h = harness()
    await h.outbox.send(bob, { type: 'edit', ref: '0mjuohs009c41d2e8f7a3b6c5', body: 'late' })
    h.outbox.connected()
    h.published[0]!.puback()
    await tick()
    assert.equal(h.outbox.get('c1')?.state.kind, 'acked')
    // An error for another topic with the same cmid is not ours.
    assert.equal(h.outbox.handleError({ code: 'forbidden', message: 'x', ref: { topic: 's/dm/carol', cmid: 'c1' } }), false)
    assert.equal(h.outbox.handleError({ code: 'too_late', message: 'edit window closed', ref: { topic: 's/dm/bob', cmid: 'c1' } }), true)
    assert.deepEqual(h.outbox.get('c1')?.state, { kind: 'failed', code: 'too_late', message: 'edit window closed' })
    // Not resent on reconnect: a refusal is final until the app says otherwise.
    h.outbox.disconnected()
    h.outbox.connected()
    assert.equal(h.published.length, 1)
    assert.equal(h.outbox.pending().length, 1)
    // retry() resends the same cmid; discard() forgets it.
    h.outbox.retry('c1')
    assert.equal(h.published.length, 2)
    assert.equal(h.published[1]!.payload.cmid, 'c1')
    h.outbox.discard('c1')
    assert.equal(h.outbox.get('c1'), undefined)
  })

  it('an error handled before its PUBACK resolves stays failed (the wiring may see them in either order)', async () => {
    const h = harness()
    await h.outbox.send(bob, { body: 'x' })
    h.outbox.connected()
    h.outbox.handleError({ code: 'not_a_member', message: 'no', ref: { topic: 's/dm/bob', cmid: 'c1' } })
    h.published[0]!.puback()
    await tick()
    assert.deepEqual(h.outbox.get('c1')?.state, { kind: 'failed', code: 'not_a_member', message: 'no' })
  })

  it('a carbon wins over an error: the first attempt was stored although the retry was refused', async () => {
    const h = harness()
    await h.outbox.send(bob, { body: 'x' })
    h.outbox.connected()
    h.outbox.handleError({ code: 'too_late', message: 'late', ref: { topic: 's/dm/bob', cmid: 'c1' } })
    assert.equal(h.outbox.get('c1')?.state.kind, 'failed')
    h.carbon('c1', 9)
    assert.deepEqual(h.changes.at(-1), ['c1', { kind: 'stored', id: 'id9', seq: 9 }])
  })

  it('rate_limited is retried with the same cmid after retryAfterMs', async () => {
    const h = harness()
    await h.outbox.send(bob, { body: 'fast' })
    h.outbox.connected()
    h.published[0]!.puback()
    await tick()
    h.outbox.handleError({ code: 'rate_limited', message: 'slow down', ref: { topic: 's/dm/bob', cmid: 'c1' }, retryAfterMs: 500 })
    assert.deepEqual(h.outbox.get('c1')?.state, { kind: 'queued', notBefore: 1_500 })
    h.advance(499)
    assert.equal(h.published.length, 1)
    h.advance(1)
    assert.equal(h.published.length, 2)
    assert.equal(h.published[1]!.payload.cmid, 'c1')
  })

  it('keeps at most maxInFlight publishes waiting for a PUBACK, in creation order', async () => {
    const h = harness({ maxInFlight: 2 })
    for (const body of ['a', 'b', 'c']) await h.outbox.send(bob, { body })
    h.outbox.connected()
    assert.deepEqual(h.published.map((p) => p.payload.body), ['a', 'b'])
    h.published[0]!.puback()
    await tick()
    assert.deepEqual(h.published.map((p) => p.payload.body), ['a', 'b', 'c'])
  })

  it('survives a restart through its store: a send without PUBACK is resent with its cmid', async () => {
    const store = new MemoryOutboxStore()
    const first = harness({ store })
    await first.outbox.send(bob, { body: 'kept' })
    first.outbox.connected()
    await first.outbox.flush()
    const saved = await store.load()
    assert.deepEqual(saved.map((e: OutboxEntry) => [e.cmid, e.state.kind]), [['c1', 'sending']])
    // The app dies here. A new process, same store:
    const second = harness({ store })
    await second.outbox.start()
    assert.equal(second.outbox.get('c1')?.state.kind, 'queued')
    second.outbox.connected()
    assert.deepEqual(second.published[0]!.payload, { body: 'kept', cmid: 'c1' })
    second.published[0]!.puback()
    await tick()
    second.carbon('c1', 1)
    await second.outbox.flush()
    assert.deepEqual(await store.load(), [], 'a stored entry is removed from the store')
  })

  it('newCmid: 32 hex digits from crypto.getRandomValues, a valid protocol Id, not repeated', () => {
    const ids = new Set(Array.from({ length: 1000 }, () => newCmid()))
    assert.equal(ids.size, 1000)
    for (const id of ids) assert.match(id, /^[0-9a-f]{32}$/)
  })
})
