// Fault (d): a node stopped (SIGKILL, or SIGTERM) and started again with the same configuration.
//
// Two broker processes clustered over the test Redis (this file's own database), messages in the
// test FerretDB (a fresh database). Node A has alice and dave, node B has bob (persistent session)
// and carol (clean session); bob's and carol's devices know only node B. They exchange one-to-one
// and group messages; then node B goes down. While it is down, alice writes to bob (his
// persistent session queues it, in Redis) and dave writes to the group. Node B is started again
// with the same environment, ports and data directory; bob and carol reconnect to it.
//
// Asserted: B is ready again (a new broker id, as every start), bob's CONNACK says his session was
// there and every message queued for him while B was down arrives over that session, clients on A
// and on B exchange messages again, and every acknowledged message reaches every member once and in
// order (the OrderedReader rules). Counts are reported with t.diagnostic.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it, type TestContext } from 'node:test'
import type { ConversationRef } from '../../schemas/protocol.js'
import { eventually } from '../helpers/broker-process.js'
import { CHAT, assertNothingLost, Ledger, exclusive, flushRedis, openDevices, report, settle, sleep, startNodes, tally, watch, type ChatDevice, type Outgoing } from '../helpers/fault.js'
import { mongoUrl, redisDb } from '../helpers/services.js'

/** This file's Redis database, used by no other test (in use elsewhere: 1-3, 5, 7, 9-15; test/fault/node-kill: 4). */
const REDIS_DB = 6
const WINDOW = 4
const DOWN_MS = 8000

async function run(t: TestContext, signal: 'SIGKILL' | 'SIGTERM'): Promise<void> {
  const tag = randomBytes(3).toString('hex')
  const redisUrl = redisDb(REDIS_DB)
  await flushRedis(redisUrl)
  const nodes = await startNodes([`rd-a-${signal}`, `rd-b-${signal}`], {
    ...CHAT,
    REDIS_URL: redisUrl,
    PARLEY_MONGO__URL: mongoUrl(), // mongo.maxPoolSize (25) keeps three nodes below FerretDB's deadlock
    PARLEY_MONGO__DATABASE: `parley_fault_restart_${tag}`
  })
  const [a, b] = nodes as [(typeof nodes)[0], (typeof nodes)[0]]
  const devices: ChatDevice[] = []
  const ledger = new Ledger()
  const stopWatching = watch(ledger, devices, nodes)
  try {
    const [alice, bob, carol, dave] = ['alice', 'bob', 'carol', 'dave'].map((u) => `${u}${tag}`) as [string, string, string, string]
    devices.push(
      ...(await openDevices([
        { user: alice, ports: [a.ports.tcp], gapSyncDelayMs: 500 },
        { user: bob, ports: [b.ports.tcp], persistent: true, gapSyncDelayMs: 500 },
        { user: carol, ports: [b.ports.tcp], gapSyncDelayMs: 500 },
        { user: dave, ports: [a.ports.tcp], persistent: true, gapSyncDelayMs: 500 }
      ]))
    )
    const [onA, bobs, carols, daves] = devices as [ChatDevice, ChatDevice, ChatDevice, ChatDevice]
    const group = await onA.call<{ id: string }>('groups.create', { name: 'fault', members: [bob, carol, dave] })
    const groupRef: ConversationRef = { kind: 'group', id: group.id }
    const everyone = [alice, bob, carol, dave]
    let n = 0
    const dm = (from: ChatDevice, to: string, count: number): Outgoing[] =>
      Array.from({ length: count }, () => ({ from, to: { kind: 'dm', id: to }, cmid: `${from.user}-${++n}`, body: `d ${n}`, members: [from.user, to] }))
    const toGroup = (from: ChatDevice, count: number): Outgoing[] =>
      Array.from({ length: count }, () => ({ from, to: groupRef, cmid: `${from.user}-${++n}`, body: `g ${n}`, members: everyone }))
    const exchange = async (queues: Outgoing[][]) => {
      const deadline = Date.now() + 60_000
      const results = await Promise.all(queues.map((q) => ledger.sendAll(q, WINDOW, { deadline })))
      return results.reduce((k, r) => k + r.failed, 0)
    }
    const rounds = () => [dm(onA, bob, 10), dm(bobs, alice, 10), toGroup(carols, 10), dm(daves, carol, 10)]

    let timedOut = await exchange(rounds())
    const firstId = b.process!.brokerId

    // B goes down; its devices keep trying B only.
    await (signal === 'SIGKILL' ? b.kill9() : b.stop())
    await eventually(() => !bobs.connected && !carols.connected, 15_000, 'bob and carol disconnected')
    const queued = dm(onA, bob, 30)
    timedOut += await exchange([queued, toGroup(daves, 10)])
    const bobConnects = bobs.wire.connects
    // Down long enough for A to take B for dead (no heartbeat for 3 x 2 s), as after a real crash.
    await sleep(DOWN_MS)

    // B again, same configuration.
    await b.start()
    const ready = await b.readyz()
    await eventually(() => bobs.connected && carols.connected, 30_000, 'bob and carol back on B')
    const sessionPresent = bobs.wire.sessionPresent.at(-1)
    timedOut += await exchange(rounds())
    const { finalResync } = await settle(ledger, devices, 30_000)
    const counts = tally(ledger, devices)
    // Messages queued for bob while B was down, and which of them came over his session (not only from a sync).
    const queuedCmids = new Set(queued.map((o) => o.cmid))
    const queuedAtBob = bobs.app.filter((m) => m.from.user === alice && queuedCmids.has(m.cmid))
    const overSession = queuedAtBob.filter((m) => bobs.liveIds.has(m.id))
    t.diagnostic(
      report(`node ${signal} and restart`, counts, {
        queuedForBob: queued.length,
        queuedArrivedOverSession: overSession.length,
        bobReconnects: bobs.wire.connects - bobConnects,
        sendsTimedOut: timedOut,
        finalResync
      })
    )
    if (counts.problems.length) t.diagnostic(counts.problems.slice(0, 10).join('\n'))

    assert.equal(ready.status, 200, 'B ready after its restart')
    assert.equal((await a.readyz()).status, 200, 'A stayed ready')
    assert.notEqual(b.process!.brokerId, firstId, 'a new broker id for the new process')
    assert.equal(sessionPresent, true, "bob's session was still there")
    assert.equal(queuedAtBob.length, queued.length, 'bob got every message sent to him while B was down')
    assert.equal(overSession.length, queued.length, 'over his persistent session')
    assertNothingLost(counts)
  } finally {
    stopWatching()
    devices.forEach((d) => d.close())
    await Promise.all(nodes.map((node) => node.dispose()))
  }
}

describe('fault: a node restarted with the same configuration', () => {
  it('after SIGKILL: rejoins, the queued persistent session is delivered', { timeout: 420_000 }, (t) => exclusive(() => run(t, 'SIGKILL')))
  it('after SIGTERM: rejoins, the queued persistent session is delivered', { timeout: 420_000 }, (t) => exclusive(() => run(t, 'SIGTERM')))
})
