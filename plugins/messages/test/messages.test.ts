// The messages plugin end to end: real mqtt.js devices, an in-process node, the embedded store and
// the MongoDB-compatible server (behind a proxy the test can cut, for the store-failure case).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { Transform } from 'node:stream'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type mqtt from 'mqtt';
import { type MqttClient } from 'mqtt'
import type { MessageEnvelope } from '../../../schemas/protocol.js'
import { eventually, within } from '../../../test/helpers/broker-process.js'
import { connectClient, startNode, type TestNode } from '../../../test/helpers/node.js'
import { mongoUrl } from '../../../test/helpers/services.js'

interface Dev {
  client: MqttClient
  messages: MessageEnvelope[]
  rpc(method: string, params: object): Promise<{ ok: boolean; result?: unknown; error?: { code: string } }>
  send(peer: string, cmid: string, body: string): Promise<void>
}

let rpcIds = 0
async function device(url: string, user: string, dev: string, options: mqtt.IClientOptions = {}): Promise<Dev> {
  const client = await connectClient(url, { clientId: `${user}:${dev}`, ...options })
  const messages: MessageEnvelope[] = []
  const waiting = new Map<string, (r: { ok: boolean; result?: unknown; error?: { code: string } }) => void>()
  client.on('message', (topic, payload) => {
    const body = JSON.parse(payload.toString()) as { id: string; ok: boolean }
    if (topic === `u/${user}/m`) messages.push(body as unknown as MessageEnvelope)
    if (topic === `u/${user}/d/${dev}/res`) waiting.get(body.id)?.(body)
  })
  await client.subscribeAsync(`u/${user}/#`, { qos: 1 })
  return {
    client,
    messages,
    rpc: (method, params) => {
      const id = `r${++rpcIds}`
      const answered = new Promise<{ ok: boolean; result?: unknown; error?: { code: string } }>((resolve) => waiting.set(id, resolve))
      void client.publishAsync('s/rpc', JSON.stringify({ id, method, params }), { qos: 1 })
      return within(answered, 10_000, `${user}:${dev} answer to ${method}`)
    },
    send: async (peer, cmid, body) => {
      await client.publishAsync(`s/dm/${peer}`, JSON.stringify({ cmid, body }), { qos: 1 })
    }
  }
}

const ids = (m: MessageEnvelope[]) => m.map((e) => `${e.seq}:${e.body}`)

describe('messages on the embedded store', () => {
  let t: TestNode
  let dataDir: string
  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'parley-messages-'))
    t = await startNode({ dataDir, plugins: ['protocol', 'groups', 'messages'] })
  })
  after(async () => t?.stop())

  it('stores, numbers and delivers a message to every device of both users', async () => {
    const [alicePhone, aliceTablet, bobPhone, bobTablet, carol] = await Promise.all([
      device(t.mqttUrl, 'alice', 'phone'),
      device(t.mqttUrl, 'alice', 'tablet'),
      device(t.mqttUrl, 'bob', 'phone'),
      device(t.mqttUrl, 'bob', 'tablet'),
      device(t.mqttUrl, 'carol', 'phone')
    ])
    await alicePhone.send('bob', 'a1', 'hello bob')
    await bobTablet.send('alice', 'b1', 'hi alice')
    for (const d of [alicePhone, aliceTablet, bobPhone, bobTablet]) {
      await eventually(() => d.messages.length === 2, 5000, 'both messages on every device')
      assert.deepEqual(ids(d.messages), ['1:hello bob', '2:hi alice'])
    }
    const seen = bobPhone.messages[0]!
    assert.deepEqual(seen.conversation, { kind: 'dm', id: 'alice' }, 'bob sees the conversation with alice')
    assert.deepEqual(aliceTablet.messages[0]!.conversation, { kind: 'dm', id: 'bob' }, 'alice sees it with bob')
    assert.deepEqual(seen.from, { user: 'alice', device: 'phone' }, 'the sender comes from the session')
    assert.equal(seen.cmid, 'a1')
    assert.ok(seen.ts > 0 && seen.id.length > 9)
    assert.equal(carol.messages.length, 0)
    await Promise.all([alicePhone, aliceTablet, bobPhone, bobTablet, carol].map((d) => d.client.endAsync()))
  })

  it('answers a retried send with the same id and seq, storing nothing new', async () => {
    const dan = await device(t.mqttUrl, 'dan', 'phone')
    await dan.send('erin', 'd1', 'once')
    await dan.send('erin', 'd1', 'once')
    await dan.send('erin', 'd2', 'twice')
    await eventually(() => dan.messages.length === 3, 5000, 'carbons')
    assert.deepEqual(dan.messages.map((m) => [m.cmid, m.seq]), [['d1', 1], ['d1', 1], ['d2', 2]])
    assert.equal(dan.messages[0]!.id, dan.messages[1]!.id)
    const sync = await dan.rpc('messages.sync', { conversation: { kind: 'dm', id: 'erin' }, afterSeq: 0 })
    assert.deepEqual(ids((sync.result as { messages: MessageEnvelope[] }).messages), ['1:once', '2:twice'])
    await dan.client.endAsync()
  })

  it('syncs after a cursor and pages history, in order', async () => {
    const fay = await device(t.mqttUrl, 'fay', 'phone')
    for (let i = 1; i <= 7; i++) await fay.send('gus', `f${i}`, `m${i}`)
    const conversation = { kind: 'dm', id: 'gus' }
    const page1 = (await fay.rpc('messages.sync', { conversation, afterSeq: 2, limit: 3 })).result as { messages: MessageEnvelope[]; hasMore: boolean; lastSeq: number }
    assert.deepEqual([ids(page1.messages), page1.hasMore, page1.lastSeq], [['3:m3', '4:m4', '5:m5'], true, 7])
    const page2 = (await fay.rpc('messages.sync', { conversation, afterSeq: 5, limit: 3 })).result as { messages: MessageEnvelope[]; hasMore: boolean }
    assert.deepEqual([ids(page2.messages), page2.hasMore], [['6:m6', '7:m7'], false])
    const older = (await fay.rpc('messages.history', { conversation, beforeSeq: 4, limit: 2 })).result as { messages: MessageEnvelope[]; hasMore: boolean }
    assert.deepEqual([ids(older.messages), older.hasMore], [['2:m2', '3:m3'], true])
    const group = await fay.rpc('messages.sync', { conversation: { kind: 'group', id: 'secret' }, afterSeq: 0 })
    assert.deepEqual([group.ok, group.error?.code], [false, 'not_a_member'])
    await fay.client.endAsync()
  })

  it('keeps messages across a restart of the node', async () => {
    await t.node.stop()
    t = await startNode({ dataDir, plugins: ['protocol', 'groups', 'messages'] })
    const alice = await device(t.mqttUrl, 'alice', 'laptop')
    const sync = await alice.rpc('messages.sync', { conversation: { kind: 'dm', id: 'bob' }, afterSeq: 0 })
    assert.deepEqual(ids((sync.result as { messages: MessageEnvelope[] }).messages), ['1:hello bob', '2:hi alice'])
    await alice.client.endAsync()
  })
})

describe('read markers, receipts and unread counts', () => {
  let t: TestNode
  before(async () => {
    t = await startNode({ plugins: ['protocol', 'groups', 'messages'] })
  })
  after(async () => t?.stop())

  it('counts unread, moves markers forward only, and tells the sender and the reader\'s devices', async () => {
    const [alice, bobPhone, bobTablet] = await Promise.all([
      device(t.mqttUrl, 'ann', 'phone'),
      device(t.mqttUrl, 'ben', 'phone'),
      device(t.mqttUrl, 'ben', 'tablet')
    ])
    const seen = { receipts: [] as unknown[], events: [] as unknown[] }
    alice.client.on('message', (topic, payload) => topic === 'u/ann/r' && seen.receipts.push(JSON.parse(payload.toString())))
    bobTablet.client.on('message', (topic, payload) => topic === 'u/ben/e' && seen.events.push(JSON.parse(payload.toString())))
    for (let i = 1; i <= 3; i++) await alice.send('ben', `r${i}`, `note ${i}`)
    const list = async (d: Dev) =>
      (await d.rpc('conversations.list', {})).result as { conversations: Array<{ conversation: object; unread: number; lastSeq: number; readSeq: number; last?: MessageEnvelope }>; totalUnread: number }
    await eventually(async () => (await list(bobPhone)).conversations.length === 1, 5000, 'the conversation is listed')
    const before = await list(bobPhone)
    assert.deepEqual(before.conversations.map((c) => [c.conversation, c.unread, c.lastSeq, c.last?.body]), [[{ kind: 'dm', id: 'ann' }, 3, 3, 'note 3']])
    // The sender's own marker trails the PUBACK (it is bookkeeping, not the message).
    await eventually(async () => (await list(alice)).conversations[0]?.readSeq === 3, 5000, 'what you send counts as read')
    assert.equal((await list(alice)).totalUnread, 0)

    const read = (d: Dev, seq: number) => d.client.publishAsync('s/read', JSON.stringify({ conversation: { kind: 'dm', id: 'ann' }, seq }), { qos: 1 })
    await read(bobPhone, 2)
    await eventually(() => seen.receipts.length === 1 && seen.events.length === 1, 5000, 'receipt and event')
    assert.deepEqual(seen.receipts[0], { ...(seen.receipts[0] as object), kind: 'read', conversation: { kind: 'dm', id: 'ben' }, upToSeq: 2, by: 'ben' })
    assert.deepEqual(seen.events[0], { type: 'read', conversation: { kind: 'dm', id: 'ann' }, seq: 2 })
    assert.equal((await list(bobTablet)).totalUnread, 1)

    await read(bobTablet, 1) // an older marker changes nothing
    await read(bobTablet, 99) // beyond the conversation: up to its last message
    await eventually(() => seen.receipts.length === 2, 5000, 'second receipt')
    assert.equal((seen.receipts[1] as { upToSeq: number }).upToSeq, 3)
    assert.equal(seen.events.length, 2, 'no event for the marker that did not move')
    assert.equal((await list(bobPhone)).totalUnread, 0)

    const created = await alice.rpc('groups.create', { name: 'Pair', members: ['ben'] })
    const group = (created.result as { id: string }).id
    await bobPhone.client.publishAsync(`s/g/${group}`, JSON.stringify({ cmid: 'g1', body: 'group hello' }), { qos: 1 })
    await bobPhone.client.publishAsync(`s/g/${group}`, JSON.stringify({ cmid: 'g2', body: 'group again' }), { qos: 1 })
    await eventually(async () => (await list(alice)).totalUnread === 2, 5000, 'group messages unread for ann')
    const annList = await list(alice)
    assert.deepEqual(annList.conversations[0]!.conversation, { kind: 'group', id: group }, 'most recent first')
    await Promise.all([alice, bobPhone, bobTablet].map((d) => d.client.endAsync()))
  })
})

/** A TCP proxy to the database that the test can cut and restore, or slow down: a database outage on demand. */
class Cuttable {
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  port = 0
  /** Each chunk the database answers waits this long (0: none): a slow store. */
  answerDelayMs = 0
  constructor(private readonly target: { host: string; port: number }) {}

  async open(): Promise<void> {
    this.server = createServer((inbound) => {
      const outbound = createConnection(this.target)
      for (const s of [inbound, outbound]) {
        this.sockets.add(s)
        s.on('error', () => undefined)
        s.on('close', () => {
          this.sockets.delete(s)
          inbound.destroy()
          outbound.destroy()
        })
      }
      const answers = new Transform({
        transform: (chunk: Buffer, _enc, cb) => (this.answerDelayMs ? setTimeout(() => cb(null, chunk), this.answerDelayMs) : cb(null, chunk))
      })
      inbound.pipe(outbound).pipe(answers).pipe(inbound)
    })
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject) // e.g. the port was taken while the proxy was cut
      this.server!.listen(this.port, '127.0.0.1', resolve)
    })
    this.port = (this.server.address() as { port: number }).port
  }

  async cut(): Promise<void> {
    // Stop accepting, and cut what is open (close() alone would wait for those connections).
    const closed = new Promise<void>((resolve) => this.server!.close(() => resolve()))
    for (const s of this.sockets) s.destroy()
    await closed
  }
}

describe('messages on MongoDB when the database fails', () => {
  let t: TestNode
  let proxy: Cuttable
  before(async () => {
    const target = new URL(mongoUrl())
    proxy = new Cuttable({ host: target.hostname, port: Number(target.port) })
    await proxy.open()
    t = await startNode({
      mongo: { url: `mongodb://127.0.0.1:${proxy.port}/`, database: `parley_msg_${randomBytes(3).toString('hex')}` },
      mqtt: { hookTimeoutMs: 3000 },
      plugins: ['protocol', 'groups', 'messages']
    })
    await eventually(async () => (await fetch(`http://127.0.0.1:${t.ops}/readyz`)).status === 200, 15_000, 'store ready')
  })
  after(async () => {
    await within(t?.stop() ?? Promise.resolve(), 20_000, 'stopping the node')
    await proxy?.cut().catch(() => undefined)
  })

  it('gives no PUBACK while the store is down, and stores the retry once it is back', { timeout: 90_000 }, async (tc) => {
    const receiver = await device(t.mqttUrl, 'hal', 'phone')
    // A persistent session: mqtt.js resends an unacknowledged QoS 1 publish after reconnecting.
    const sender = await device(t.mqttUrl, 'ivy', 'phone', { clean: false, reconnectPeriod: 300 })
    await sender.send('hal', 'i1', 'before the outage')
    await eventually(() => receiver.messages.length === 1, 5000, 'first message')

    await within(proxy.cut(), 5000, 'cutting the database proxy')
    const outageStarted = Date.now()
    let acked = false
    const closed = new Promise<void>((resolve) => sender.client.once('close', () => resolve()))
    const send = sender.send('hal', 'i2', 'during the outage').then(() => {
      acked = true
    })
    await within(closed, 15_000, 'the broker closing the sender whose send could not be stored')
    assert.equal(acked, false, 'the store failed: no PUBACK, the connection was closed')
    assert.equal(receiver.messages.length, 1, 'nothing was delivered')
    const readyz = async () => (await fetch(`http://127.0.0.1:${t.ops}/readyz`)).status
    await eventually(async () => (await readyz()) === 503, 10_000, '/readyz: not ready while the store is down')
    assert.equal((await fetch(`http://127.0.0.1:${t.ops}/healthz`)).status, 200, 'the node stays up')
    // A ten-second outage (issue 5): the sender keeps retrying meanwhile, and is refused each time.
    await new Promise((r) => setTimeout(r, Math.max(0, outageStarted + 10_000 - Date.now())))
    assert.equal(acked, false, 'still no PUBACK after ten seconds down')

    await within(proxy.open(), 5000, 'reopening the database proxy')
    await eventually(async () => (await readyz()) === 200, 20_000, '/readyz: ready again once the store is back')
    await within(send, 30_000, 'the PUBACK of the resent message') // mqtt.js resent it after reconnecting; the PUBACK now means stored
    await eventually(() => receiver.messages.length === 2, 15_000, 'the retried message')
    assert.deepEqual(ids(receiver.messages), ['1:before the outage', '2:during the outage'])
    const sync = await receiver.rpc('messages.sync', { conversation: { kind: 'dm', id: 'ivy' }, afterSeq: 0 })
    assert.deepEqual(ids((sync.result as { messages: MessageEnvelope[] }).messages), ['1:before the outage', '2:during the outage'], 'stored once')
    const delivered = new Set(receiver.messages.map((m) => m.id)).size
    tc.diagnostic(
      `fault (c), store down 10 s: sent 2, acknowledged 2, delivered ${delivered}, duplicated ${receiver.messages.length - delivered}, lost ${2 - delivered}`
    )
    sender.client.end(true)
    await within(receiver.client.endAsync(), 5000, 'receiver disconnect')
  })

  it('holds publishers while the store is slower than the hook timeout, instead of disconnecting them', { timeout: 90_000 }, async (tc) => {
    const receiver = await device(t.mqttUrl, 'hal', 'laptop')
    const senders = await Promise.all(['jon', 'kim', 'lea'].map((user) => device(t.mqttUrl, user, 'phone', { clean: false, reconnectPeriod: 300 })))
    let closes = 0
    for (const s of senders) s.client.on('close', () => closes++)
    const timeoutsBefore = await hookTimeouts()
    // Every answer of the database takes 2 s: storing a message (look up the cmid, insert) takes
    // over 4 s, beyond mqtt.hookTimeoutMs (3 s here) but within mqtt.publishTimeoutMs (20 s).
    proxy.answerDelayMs = 2000
    const started = Date.now()
    try {
      await within(Promise.all(senders.map((s, i) => s.send('hal', `slow-${i}`, `slow store ${i}`))), 60_000, 'PUBACKs from the slow store')
    } finally {
      proxy.answerDelayMs = 0
    }
    const elapsed = Date.now() - started
    assert.equal(closes, 0, 'no publisher was disconnected: they waited for their PUBACK')
    assert.equal((await hookTimeouts()) - timeoutsBefore, 0, 'no publish check timed out')
    await eventually(() => receiver.messages.filter((m) => m.body?.startsWith('slow store')).length === 3, 15_000, 'the three messages')
    assert.equal(new Set(receiver.messages.map((m) => m.id)).size, receiver.messages.length, 'each once')
    tc.diagnostic(`slow store: 3 sends acknowledged after ${elapsed} ms (hook timeout 3000 ms), 0 disconnects`)
    await Promise.all([receiver, ...senders].map((d) => within(d.client.endAsync(), 5000, 'disconnect')))
  })

  /** Hook timeouts so far, from the node's /metrics. */
  async function hookTimeouts(): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${t.ops}/metrics`)).text()
    return text
      .split('\n')
      .filter((line) => line.startsWith('parley_hook_denials_total{') && line.includes('outcome="timeout"'))
      .reduce((sum, line) => sum + Number(line.split(' ').pop()), 0)
  }
})
