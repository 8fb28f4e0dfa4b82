// Fault (a): kill -9 of one of three broker nodes in the middle of a 10,000-message stream.
//
// Three real broker processes (chat plugins, anonymous clients) clustered over the test Redis (this
// file's own database), messages in the test FerretDB (a fresh database). Six users, two on each
// node, each with one device (a real mqtt.js client, clean session) that sends and reads. They
// send into one group of all six (its writers are the two users of the third node) and six
// one-to-one conversations, with a window of publishes in flight per device. When 30 % of the
// stream is acknowledged, the third node gets SIGKILL. Its devices find the node gone and connect
// to the first one; their outboxes resend every unacknowledged message with the same cmid.
// Every device follows the client rules of docs/delivery.md (test/helpers/ordered-reader.ts: order
// by seq, drop duplicates, sync on a gap and after every reconnect).
//
// Asserted: every message is acknowledged in the end, and every acknowledged message reached every
// member of its conversation (the sender's own copy included) exactly once, in seq order, with
// members agreeing on what each seq is. The counts are reported with t.diagnostic.
//
// FerretDB, the tests' MongoDB, answers every query but one by _id with a scan of the whole
// collection (test/helpers/fault.ts); the shape of this test keeps the number of scans down: one
// writing node per conversation, large store batches (the window), no conversations.list on
// reconnect, gap syncs that wait a moment for live delivery (docs/delivery.md allows it).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it, type TestContext } from 'node:test'
import type { ConversationRef } from '../../schemas/protocol.js'
import { CHAT, Ledger, exclusive, flushRedis, openDevices, report, settle, startNodes, tally, watch, type ChatDevice, type Outgoing } from '../helpers/fault.js'
import { mongoUrl, redisDb } from '../helpers/services.js'

/** This file's Redis database, used by no other test (in use elsewhere: 1-3, 5, 7, 9-15; test/fault/node-restart: 6). */
const REDIS_DB = 4
const TOTAL = 10_000
/** Publishes in flight per device. */
const WINDOW = 48
/** Share of the stream acknowledged when the third node is killed. */
const KILL_AT = 0.3
/** Each user's share of the stream: after the kill the first node also carries the third node's two devices. */
const SHARE = [0.125, 0.125, 0.225, 0.225, 0.15, 0.15]
/** One-to-one conversations, [writer, reader]: one writing node each (two nodes numbering one conversation cost rereads). */
const DMS: Array<[number, number]> = [[0, 2], [3, 0], [1, 4], [2, 5], [5, 3], [4, 0]]
/** Bounds (not timing assertions): past them the test stops waiting and the counts show how far it got. */
const STREAM_BOUND_MS = 150_000
const SETTLE_BOUND_MS = 45_000

describe('fault: kill -9 of one of three nodes during a 10,000-message stream', () => {
  it('every acknowledged message reaches every member once, in order', { timeout: 480_000 }, (t) => exclusive(() => run(t)))
})

async function run(t: TestContext): Promise<void> {
  const tag = randomBytes(3).toString('hex')
  const redisUrl = redisDb(REDIS_DB)
  await flushRedis(redisUrl)
  const nodes = await startNodes(['fa-n0', 'fa-n1', 'fa-n2'], {
    ...CHAT,
    // A store batch on FerretDB can take seconds at thousands of messages (collection scans); the
    // default 5 s would turn that slowness, not the kill, into disconnects and resends.
    PARLEY_MQTT__HOOK_TIMEOUT_MS: '20000',
    REDIS_URL: redisUrl,
    PARLEY_MONGO__URL: mongoUrl(), // mongo.maxPoolSize (25) keeps three nodes below FerretDB's deadlock
    PARLEY_MONGO__DATABASE: `parley_fault_kill_${tag}`
  })
  const devices: ChatDevice[] = []
  const ledger = new Ledger()
  const stopWatching = watch(ledger, devices, nodes)
  try {
    const users = Array.from({ length: 6 }, (_, i) => `u${tag}${i}`)
    const home = (i: number) => Math.floor(i / 2) // u0, u1 on n0; u2, u3 on n1; u4, u5 on n2
    const ports = nodes.map((n) => n.ports.tcp)
    devices.push(
      ...(await openDevices(
        users.map((user, i) => ({
          user,
          // Home node first, then the others in order: the third node's devices both go to the first.
          ports: [home(i), (home(i) + 1) % 3, (home(i) + 2) % 3].map((n) => ports[n]!),
          list: false,
          gapSyncDelayMs: 1000,
          rpcTimeoutMs: 60_000 // a sync is two collection scans on FerretDB, slow at 10,000 messages
        }))
      ))
    )
    const group = await devices[0]!.call<{ id: string }>('groups.create', { name: 'fault', members: users.slice(1) })
    const groupRef: ConversationRef = { kind: 'group', id: group.id }
    const queues: Outgoing[][] = devices.map((from, i) => {
      const peers = DMS.filter(([w]) => w === i).map(([, r]) => users[r]!)
      return Array.from({ length: Math.round(TOTAL * SHARE[i]!) }, (_, n): Outgoing => {
        const cmid = `${from.user}-${n + 1}`
        if (i >= 4 && n % 2 === 0) return { from, to: groupRef, cmid, body: `g ${cmid}`, members: users }
        const peer = peers[n % peers.length]!
        return { from, to: { kind: 'dm', id: peer }, cmid, body: `d ${cmid}`, members: [from.user, peer] }
      })
    })
    assert.equal(queues.flat().length, TOTAL)

    let killed: Promise<void> | undefined
    let ackedAtKill = 0
    const onAck = () => {
      if (!killed && ledger.acknowledged >= TOTAL * KILL_AT) {
        ackedAtKill = ledger.acknowledged
        killed = nodes[2]!.kill9()
      }
    }
    const started = Date.now()
    const results = await Promise.all(queues.map((q) => ledger.sendAll(q, WINDOW, { deadline: started + STREAM_BOUND_MS, onAck })))
    await killed
    const streamMs = Date.now() - started
    const { finalResync } = await settle(ledger, devices, SETTLE_BOUND_MS)
    const counts = tally(ledger, devices)
    const ready = await Promise.all(nodes.slice(0, 2).map((n) => n.readyz()))
    // Reported before the assertions, so a failing run shows its numbers too.
    t.diagnostic(
      report('kill -9 of 1 of 3 nodes', counts, {
        ackedAtKill,
        sendsTimedOut: results.reduce((n, r) => n + r.failed, 0),
        notSent: results.reduce((n, r) => n + r.notSent, 0),
        finalResync,
        streamSeconds: Math.round(streamMs / 1000)
      })
    )
    if (counts.problems.length) t.diagnostic(counts.problems.slice(0, 10).join('\n'))

    assert.equal(nodes[2]!.alive, false, 'the third node was killed')
    assert.equal(counts.sent, TOTAL)
    assert.equal(counts.acknowledged, TOTAL, 'every send acknowledged in the end (resent with the same cmid)')
    assert.equal(counts.lost, 0, 'no acknowledged message lost')
    assert.equal(counts.delivered, counts.expected, 'each acknowledged message handed over once per member')
    assert.deepEqual(counts.problems, [], 'in seq order, once, and the same message at each seq for every member')
    assert.equal(counts.packetsBeforeConnack, 0)
    for (const d of devices.slice(4)) assert.ok(d.wire.connectsByPort[ports[0]!], `${d.user} moved to a surviving node`)
    assert.deepEqual(ready.map((r) => r.status), [200, 200], 'the surviving nodes stay ready')
  } finally {
    stopWatching()
    devices.forEach((d) => d.close())
    await Promise.all(nodes.map((n) => n.dispose()))
  }
}
