// Fault (b): the cluster's Redis restarted in the middle of a stream.
//
// A dedicated redis-server (append-only file, fsync on every write, so persistent sessions and
// their queues survive a restart) and two broker processes clustered over it; messages in the test
// FerretDB (a fresh database). Four users, two on each node, one device each with a persistent
// session (clean=false), send into one-to-one conversations and a group. When a third of the stream
// is acknowledged, Redis is stopped (SIGTERM, or SIGKILL in the second case), and started again on
// the same port and files once both nodes say they are not ready.
//
// Asserted: /readyz turns 503 on both nodes while Redis is down and back to 200 without a restart
// of either node (same processes); a device that reconnects afterwards finds its session; every
// acknowledged message reaches every member once and in order (the OrderedReader rules). Counts
// are reported with t.diagnostic. rpcTimeouts counts messages.sync answers that never came
// although the connection stayed up. It was a few per run until patches/aedes+1.2.0.patch: Aedes
// dropped a QoS 1 packet to a persistent session when a later QoS 0 packet of the same broker
// overtook it (its per-client dedupe by broker counter); now 0. Not asserted: a slow answer under
// load counts too, and the reader asks again either way.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, type TestContext } from 'node:test'
import type { ConversationRef } from '../../schemas/protocol.js'
import { startRedis } from '../../scripts/services.js'
import { eventually } from '../helpers/broker-process.js'
import { CHAT, Ledger, exclusive, openDevices, progress, report, settle, sleep, startNodes, tally, watch, type ChatDevice, type Outgoing, type ReadyAnswer } from '../helpers/fault.js'
import { mongoUrl } from '../helpers/services.js'

const TOTAL = 800
const WINDOW = 8
const STOP_AT = 0.35
/** One-to-one conversations, [writer, reader]; users 0 and 1 are on the first node, 2 and 3 on the second. */
const DMS: Array<[number, number]> = [[0, 2], [1, 3], [2, 1], [3, 0]]

async function run(t: TestContext, signal: 'SIGTERM' | 'SIGKILL'): Promise<void> {
  const tag = randomBytes(3).toString('hex')
  const dir = mkdtempSync(join(tmpdir(), 'parley-fault-redis-'))
  const redis = await startRedis({ dir, appendonly: true })
  const nodes = await startNodes(['rb-n0', 'rb-n1'], {
    ...CHAT,
    REDIS_URL: redis.url,
    PARLEY_MONGO__URL: mongoUrl(), // mongo.maxPoolSize (25) keeps three nodes below FerretDB's deadlock
    PARLEY_MONGO__DATABASE: `parley_fault_redis_${tag}`
  }).catch(async (err: unknown) => {
    await redis.stop()
    throw err
  })
  const devices: ChatDevice[] = []
  const ledger = new Ledger()
  const stopWatching = watch(ledger, devices, nodes)
  try {
    const pids = nodes.map((n) => n.pid)
    const users = Array.from({ length: 4 }, (_, i) => `r${tag}${i}`)
    const ports = nodes.map((n) => n.ports.tcp)
    devices.push(...(await openDevices(users.map((user, i) => ({ user, persistent: true, ports: i < 2 ? ports : [...ports].reverse(), gapSyncDelayMs: 500 })))))
    const group = await devices[0]!.call<{ id: string }>('groups.create', { name: 'fault', members: users.slice(1) })
    const groupRef: ConversationRef = { kind: 'group', id: group.id }
    const queues = devices.map((from, i) =>
      Array.from({ length: TOTAL / users.length }, (_, n): Outgoing => {
        const cmid = `${from.user}-${n + 1}`
        // The group is written from the first node only (users 0 and 1).
        if (i < 2 && n % 2 === 0) return { from, to: groupRef, cmid, body: `g ${cmid}`, members: users }
        const peer = users[DMS.find(([w]) => w === i)![1]]!
        return { from, to: { kind: 'dm', id: peer }, cmid, body: `d ${cmid}`, members: [from.user, peer] }
      })
    )

    const outage: { ackedAtStop: number; notReady: ReadyAnswer[]; readyAgain: ReadyAnswer[]; error?: unknown } = { ackedAtStop: 0, notReady: [], readyAgain: [] }
    let outageDone: Promise<void> | undefined
    const bothAre = async (status: number, into: ReadyAnswer[], timeoutMs: number, what: string) => {
      await eventually(
        async () => {
          const answers = await Promise.all(nodes.map((n) => n.readyz()))
          if (!answers.every((a) => a.status === status)) return false
          into.push(...answers)
          return true
        },
        timeoutMs,
        what
      )
    }
    const onAck = () => {
      if (outageDone || ledger.acknowledged < TOTAL * STOP_AT) return
      outage.ackedAtStop = ledger.acknowledged
      outageDone = (async () => {
        progress(`Redis ${signal}`)
        await (signal === 'SIGTERM' ? redis.stop() : redis.kill9())
        await bothAre(503, outage.notReady, 20_000, 'both nodes not ready while Redis is down')
        progress('both nodes 503')
        await sleep(2000)
        await redis.restart()
        progress('Redis restarted')
        await bothAre(200, outage.readyAgain, 60_000, 'both nodes ready again')
        progress('both nodes 200')
      })().catch((err: unknown) => {
        outage.error = err
      })
    }
    const results = await Promise.all(queues.map((q) => ledger.sendAll(q, WINDOW, { deadline: Date.now() + 90_000, onAck })))
    await outageDone

    // The sessions live in Redis: a device that reconnects now must find its own.
    const d = devices[2]!
    const connects = d.wire.connects
    d.cut()
    await eventually(() => d.wire.connects > connects && d.connected, 20_000, 'the cut device reconnected')
    const { finalResync } = await settle(ledger, devices, 45_000)
    const counts = tally(ledger, devices)
    t.diagnostic(
      report(`Redis ${signal} and restart`, counts, {
        ackedAtStop: outage.ackedAtStop,
        sendsTimedOut: results.reduce((n, r) => n + r.failed, 0),
        finalResync
      })
    )
    if (counts.problems.length) t.diagnostic(counts.problems.slice(0, 10).join('\n'))

    assert.equal(outage.error, undefined, String(outage.error))
    assert.ok(outage.notReady.length > 0 && outage.notReady.every((a) => a.status === 503), 'both nodes said 503 while Redis was down')
    assert.ok(outage.notReady.every((a) => a.body.checks?.redis?.ok === false || a.body.checks?.cluster?.ok === false), 'and named Redis')
    assert.deepEqual(outage.readyAgain.map((a) => a.status), [200, 200], 'both ready again')
    assert.deepEqual(nodes.map((n) => n.pid), pids, 'by themselves: the same processes, never restarted')
    assert.deepEqual(nodes.map((n) => n.starts), [1, 1])
    assert.equal(d.wire.sessionPresent.at(-1), true, 'the persistent session survived the Redis restart')
    assert.equal(counts.acknowledged, TOTAL, 'every send acknowledged in the end')
    assert.equal(counts.lost, 0, 'no acknowledged message lost')
    assert.equal(counts.delivered, counts.expected)
    assert.deepEqual(counts.problems, [])
    assert.equal(counts.packetsBeforeConnack, 0)
  } finally {
    stopWatching()
    devices.forEach((dev) => dev.close())
    await Promise.all(nodes.map((n) => n.dispose()))
    await redis.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

describe('fault: Redis restarted in the middle of a stream', () => {
  it('SIGTERM: nodes recover by themselves, nothing acknowledged is lost', { timeout: 420_000 }, (t) => exclusive(() => run(t, 'SIGTERM')))
  it('SIGKILL: nodes recover by themselves, nothing acknowledged is lost', { timeout: 420_000 }, (t) => exclusive(() => run(t, 'SIGKILL')))
})
