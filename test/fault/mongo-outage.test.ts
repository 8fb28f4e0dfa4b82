// Fault (c): the MongoDB-compatible message store stopped for ten seconds.
//
// A dedicated FerretDB (its own SQLite directory, a fixed port) and one broker process with the chat
// plugins storing messages in it (no Redis: the node's own sessions). Three users, one device each
// with a persistent session, exchange one-to-one and group messages. Then FerretDB is stopped; the
// devices keep sending; after ten seconds FerretDB is started again on the same port and files.
//
// Asserted: /readyz says 503 while the store is down (and 200 again after), the node process stays
// up, no publish is acknowledged between the moment the node reported the outage and the restart
// (PUBACK means stored), every send made during the outage is acknowledged afterwards (the
// devices resend with the same cmid), and every acknowledged message reaches every member once and
// in order. Counts are reported with t.diagnostic.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it, type TestContext } from 'node:test'
import type { ConversationRef } from '../../schemas/protocol.js'
import { startFerretDb } from '../../scripts/services.js'
import { eventually, within } from '../helpers/broker-process.js'
import { CHAT, assertNothingLost, FaultNode, Ledger, exclusive, openDevices, report, settle, sleep, tally, watch, type ChatDevice, type Outgoing } from '../helpers/fault.js'

const OUTAGE_MS = 10_000
const WINDOW = 4

describe('fault: the message store (FerretDB) stopped for ten seconds', () => {
  it('no PUBACK while it is down, /readyz 503, the node stays up, retries succeed after', { timeout: 420_000 }, (t) => exclusive(() => run(t)))
})

async function run(t: TestContext): Promise<void> {
  const tag = randomBytes(3).toString('hex')
  const dir = mkdtempSync(join(tmpdir(), 'parley-fault-ferretdb-'))
  const ferret = await startFerretDb({ dir: join(dir, 'data') })
  const node = await FaultNode.start('mc-n0', { ...CHAT, PARLEY_MONGO__URL: ferret.url, PARLEY_MONGO__DATABASE: `parley_fault_mongo_${tag}` }).catch(async (err: unknown) => {
    await ferret.stop()
    throw err
  })
  const devices: ChatDevice[] = []
  const ledger = new Ledger()
  const stopWatching = watch(ledger, devices, [node])
  try {
    const users = Array.from({ length: 3 }, (_, i) => `m${tag}${i}`)
    devices.push(...(await openDevices(users.map((user) => ({ user, persistent: true, ports: [node.ports.tcp], gapSyncDelayMs: 500 })))))
    const group = await devices[0]!.call<{ id: string }>('groups.create', { name: 'fault', members: users.slice(1) })
    const groupRef: ConversationRef = { kind: 'group', id: group.id }
    let n = 0
    /** count messages from every device: to the next user, and every third one to the group. */
    const batch = (count: number): Outgoing[][] =>
      devices.map((from, i) =>
        Array.from({ length: count }, (): Outgoing => {
          const cmid = `${from.user}-${++n}`
          if (n % 3 === 0) return { from, to: groupRef, cmid, body: `g ${cmid}`, members: users }
          const peer = users[(i + 1) % users.length]!
          return { from, to: { kind: 'dm', id: peer }, cmid, body: `d ${cmid}`, members: [from.user, peer] }
        })
      )
    const sendAll = async (queues: Outgoing[][]) => {
      const deadline = Date.now() + 60_000
      const results = await Promise.all(queues.map((q) => ledger.sendAll(q, WINDOW, { deadline })))
      return results.reduce((k, r) => k + r.failed, 0)
    }

    // Before: the store works.
    let timedOut = await sendAll(batch(40))
    assert.equal(ledger.acknowledged, ledger.sent, 'all acknowledged before the outage')
    const before = (await node.readyz()).status

    // Down: FerretDB stopped (and gone) until OUTAGE_MS later.
    const stoppedAt = Date.now()
    await ferret.stop()
    let notReadyAt = 0
    await eventually(async () => (await node.readyz()).status === 503 && (notReadyAt = Date.now()) > 0, 15_000, '/readyz 503 with the store down')
    const notReady = await node.readyz()
    const ackedBeforeOutage = ledger.acknowledged
    const during = ledger.sent
    const outageSends = sendAll(batch(10))
    const statuses: number[] = []
    const health: number[] = []
    while (Date.now() < stoppedAt + OUTAGE_MS) {
      statuses.push((await node.readyz()).status)
      health.push(await fetch(`http://127.0.0.1:${node.ports.ops}/healthz`).then((r) => r.status, () => 0))
      await sleep(500)
    }
    const aliveDuring = node.alive
    const restartedAt = Date.now()
    const acksWhileDown = ledger.acks.filter((a) => a.at >= notReadyAt && a.at < restartedAt).length
    const ackedWhileDown = ledger.acknowledged - ackedBeforeOutage

    // Up again: same port, same files.
    await ferret.restart()
    await eventually(async () => (await node.readyz()).status === 200, 60_000, '/readyz 200 with the store back')
    timedOut += await within(outageSends, 70_000, 'the sends of the outage acknowledged')
    const outageRecords = ledger.records.slice(during)
    timedOut += await sendAll(batch(20))
    const { finalResync } = await settle(ledger, devices, 30_000)
    const counts = tally(ledger, devices)
    t.diagnostic(
      report('FerretDB stopped 10 s', counts, {
        sentDuringOutage: outageRecords.length,
        acksWhileDown,
        ackedWhileDown,
        readyzWhileDown: `${statuses.filter((s) => s === 503).length} of ${statuses.length} polls 503`,
        sendsTimedOut: timedOut,
        finalResync
      })
    )
    if (counts.problems.length) t.diagnostic(counts.problems.slice(0, 10).join('\n'))

    assert.equal(before, 200)
    assert.equal(notReady.body.checks?.mongo?.ok, false, `/readyz names the store: ${JSON.stringify(notReady.body.checks)}`)
    assert.ok(statuses.every((s) => s === 503), `/readyz 503 all through the outage: ${statuses.join(',')}`)
    assert.ok(health.every((s) => s === 200), 'the process answers /healthz all through')
    assert.equal(aliveDuring, true, 'the node process stayed up')
    assert.equal(node.alive, true)
    assert.equal(node.starts, 1)
    assert.equal(acksWhileDown, 0, 'no PUBACK while the store was down')
    assert.ok(outageRecords.length > 0 && outageRecords.every((r) => r.ackedAt !== undefined && r.ackedAt >= restartedAt), 'the outage sends acknowledged after the restart')
    assertNothingLost(counts)
  } finally {
    stopWatching()
    devices.forEach((d) => d.close())
    await node.dispose()
    await ferret.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}
