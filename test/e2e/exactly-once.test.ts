// Exactly once and in order for the application (docs/delivery.md), end to end: a real broker
// process with the chat plugins, real mqtt.js clients over TCP. Four senders each send 500
// one-to-one messages to one reader (QoS 1, each awaiting its PUBACK); the reader has a persistent
// session (clean=false) and is cut off roughly every second, and the senders now and then, all
// through the stream. Aedes delivers around those reconnects out of order and more than once; the
// reader follows the documented rules (test/helpers/ordered-reader.ts) and its application must see
// seqs 1..500 of every conversation exactly once, in order, with the bodies that were sent.
// Run over in-memory persistence and over Redis (emitter and persistence). The counters are
// reported with t.diagnostic (docs/delivery.md quotes them); nothing here asserts on timing.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it, type TestContext } from 'node:test'
import { Redis } from 'ioredis'
import mqtt, { type MqttClient } from 'mqtt'
import type { MessageEnvelope } from '../../schemas/protocol.js'
import { eventually, startBroker, within, type BrokerProcess } from '../helpers/broker-process.js'
import { OrderedReader, type SyncPage } from '../helpers/ordered-reader.js'
import { redisDb } from '../helpers/services.js'

const SENDERS = 4
const PER_SENDER = 500
/** This file's Redis database (others: 1, 2, 3, 5). */
const REDIS_DB = 9

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

interface RpcAnswer {
  id: string
  ok: boolean
  result?: unknown
  error?: { code: string; message?: string }
}

/** The reader device: mqtt.js with its own reconnects, the delivery rules, and what it saw on the wire. */
function readerDevice(url: string, user: string, device: string) {
  const client = mqtt.connect(url, { clientId: `${user}:${device}`, clean: false, reconnectPeriod: 300, connectTimeout: 5000, keepalive: 30 })
  const app: MessageEnvelope[] = []
  const wire = { connects: 0, liveMessages: 0, packetsBeforeConnack: 0, connackTimeouts: 0, rpcLost: 0, otherErrors: {} as Record<string, number> }
  const waiting = new Map<string, { resolve: (a: RpcAnswer) => void; reject: (err: Error) => void }>()
  let rpcIds = 0

  const rpc = async (method: string, params: object): Promise<RpcAnswer> => {
    if (!client.connected) throw new Error('not connected')
    const id = `q${++rpcIds}`
    const answered = new Promise<RpcAnswer>((resolve, reject) => waiting.set(id, { resolve, reject }))
    client.publish('s/rpc', JSON.stringify({ id, method, params }), { qos: 1 })
    try {
      return await within(answered, 10_000, `answer to ${method} ${id}`)
    } finally {
      waiting.delete(id)
    }
  }

  const reader = new OrderedReader<MessageEnvelope>({
    deliver: (m) => app.push(m),
    sync: async (conversation, afterSeq) => {
      const answer = await rpc('messages.sync', { conversation, afterSeq, limit: 100 })
      if (!answer.ok) throw new Error(`messages.sync: ${answer.error?.code}`)
      return answer.result as SyncPage<MessageEnvelope>
    },
    list: async () => {
      const answer = await rpc('conversations.list', { limit: 100 })
      if (!answer.ok) throw new Error(`conversations.list: ${answer.error?.code}`)
      return (answer.result as { conversations: Array<{ conversation: MessageEnvelope['conversation']; lastSeq: number }> }).conversations
    },
    retryMs: 300,
    onError: () => undefined // syncs cut by a reconnect: counted in reader.counters.syncFailures, retried
  })

  // MQTT 3.1.1: CONNACK is the first packet of every connection. mqtt.js hangs when it is not.
  let sawConnack = false
  client.on('packetreceive', (packet) => {
    if (packet.cmd === 'connack') sawConnack = true
    else if (!sawConnack) wire.packetsBeforeConnack++
  })
  client.on('close', () => {
    sawConnack = false
    // A response goes to the live connection only: one that was on its way is lost with it.
    for (const w of waiting.values()) w.reject(new Error('connection lost'))
    wire.rpcLost += waiting.size
    waiting.clear()
  })
  client.on('error', (err) => {
    if (err.message === 'connack timeout') wire.connackTimeouts++
    else wire.otherErrors[err.message] = (wire.otherErrors[err.message] ?? 0) + 1
  })
  client.on('message', (topic, payload) => {
    if (topic === `u/${user}/m`) {
      wire.liveMessages++
      reader.receive(JSON.parse(payload.toString()) as MessageEnvelope)
    } else if (topic === `u/${user}/d/${device}/res`) {
      const answer = JSON.parse(payload.toString()) as RpcAnswer
      waiting.get(answer.id)?.resolve(answer)
    }
  })
  client.on('connect', () => {
    wire.connects++
    void reader.resync()
  })
  return { client, reader, app, wire }
}

async function sendAll(url: string, user: string, peer: string, clients: MqttClient[]): Promise<void> {
  const client = await within(
    mqtt.connectAsync(url, { clientId: `${user}:phone`, clean: false, reconnectPeriod: 200, connectTimeout: 5000 }),
    10_000,
    `${user} connecting`
  )
  clients.push(client)
  client.on('error', () => undefined) // mqtt.js reconnects by itself
  for (let i = 1; i <= PER_SENDER; i++) {
    // PUBACK means stored; after a cut, mqtt.js resends it, and the retry is answered (and delivered) again.
    const body = JSON.stringify({ cmid: `${user}-${i}`, body: `${user} #${i}` })
    await within(client.publishAsync(`s/dm/${peer}`, body, { qos: 1 }), 20_000, `${user}: PUBACK of message ${i}`)
    if (i % 5 === 0) await sleep(80) // spreads the stream over about ten seconds of reconnects
  }
}

/** Cuts a client's TCP connection every `everyMs` (± 30 %) until stopped; mqtt.js reconnects. */
function cutter(clients: () => MqttClient[], everyMs: number) {
  let cuts = 0
  let timer: NodeJS.Timeout | undefined
  let i = 0
  const next = () => {
    timer = setTimeout(
      () => {
        const list = clients()
        const c = list[i++ % Math.max(1, list.length)]
        if (c?.connected) {
          cuts++
          c.stream.destroy()
        }
        next()
      },
      everyMs * (0.7 + Math.random() * 0.6)
    )
  }
  next()
  return {
    get cuts() {
      return cuts
    },
    stop: () => clearTimeout(timer)
  }
}

async function stopBroker(broker: BrokerProcess): Promise<void> {
  await within(broker.stop(), 15_000, 'broker stop').catch(async () => broker.stop('SIGKILL'))
}

async function run(t: TestContext, mode: 'memory' | 'redis'): Promise<void> {
  const env: NodeJS.ProcessEnv = { PARLEY_PLUGINS: 'protocol,groups,messages', PARLEY_MQTT__ALLOW_ANONYMOUS: 'true' }
  if (mode === 'redis') {
    env.REDIS_URL = redisDb(REDIS_DB)
    const redis = new Redis(env.REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 })
    await within(redis.connect().then(() => redis.flushdb()), 10_000, 'emptying the test Redis database')
    redis.disconnect()
  }
  const broker = await startBroker({ env, timeoutMs: 20_000 })
  const tag = randomBytes(3).toString('hex') // fresh users, so no session of an earlier run is in play
  const readerUser = `r${tag}`
  const senders = Array.from({ length: SENDERS }, (_, i) => `s${tag}${i + 1}`)
  const url = `mqtt://127.0.0.1:${broker.ports.tcp}`
  const r = readerDevice(url, readerUser, 'phone')
  const senderClients: MqttClient[] = []
  let cutReader: ReturnType<typeof cutter> | undefined
  let cutSenders: ReturnType<typeof cutter> | undefined
  try {
    await within(new Promise((resolve) => r.client.once('connect', resolve)), 10_000, 'reader connecting')
    await within(r.client.subscribeAsync(`u/${readerUser}/#`, { qos: 1 }), 10_000, 'reader subscribing')
    cutReader = cutter(() => [r.client], 1000)
    cutSenders = cutter(() => senderClients, 2500)

    await within(Promise.all(senders.map((s) => sendAll(url, s, readerUser, senderClients))), 45_000, 'senders done')
    const count = (s: string) => r.app.filter((m) => m.conversation.id === s).length
    await eventually(() => senders.every((s) => count(s) >= PER_SENDER), 20_000, 'every message handed to the application')
    cutReader.stop()
    cutSenders.stop()

    // One more reconnect after the stream: its resync and any redelivered copies must add nothing.
    await eventually(() => r.client.connected, 10_000, 'reader connected')
    const connects = r.wire.connects
    r.client.stream.destroy()
    await eventually(() => r.wire.connects > connects && !r.reader.busy, 15_000, 'reader reconnected and resynced')

    // Reported before the assertions, so a failing run shows its numbers too.
    t.diagnostic(
      `${mode}: ` +
        JSON.stringify({
          readerCuts: cutReader.cuts + 1,
          senderCuts: cutSenders.cuts,
          readerConnects: r.wire.connects,
          liveMessages: r.wire.liveMessages,
          ...r.reader.counters,
          rpcLost: r.wire.rpcLost,
          packetsBeforeConnack: r.wire.packetsBeforeConnack,
          connackTimeouts: r.wire.connackTimeouts,
          otherErrors: r.wire.otherErrors
        })
    )
    const conversations = new Set(r.app.map((m) => `${m.conversation.kind}:${m.conversation.id}`))
    assert.deepEqual([...conversations].sort(), senders.map((s) => `dm:${s}`).sort(), 'only the four conversations')
    for (const s of senders) {
      const seen = r.app.filter((m) => m.conversation.id === s)
      const expected = Array.from({ length: PER_SENDER }, (_, i) => i + 1)
      assert.deepEqual(seen.map((m) => m.seq), expected, `${s}: seqs 1..${PER_SENDER}, each once, in order`)
      // Each sender awaited every PUBACK before the next send, so seq order is send order.
      assert.deepEqual(seen.map((m) => m.body), expected.map((i) => `${s} #${i}`), `${s}: the bodies sent, in order`)
      assert.deepEqual(seen.map((m) => m.cmid), expected.map((i) => `${s}-${i}`), `${s}: the cmids sent`)
      assert.ok(seen.every((m) => m.from.user === s), `${s}: sender stamped by the server`)
      assert.equal(new Set(seen.map((m) => m.id)).size, PER_SENDER, `${s}: one id per message`)
    }
    assert.equal(r.app.length, SENDERS * PER_SENDER)
    assert.equal(r.wire.packetsBeforeConnack, 0, 'the broker sent CONNACK first on every connection')
  } finally {
    cutReader?.stop()
    cutSenders?.stop()
    r.reader.close()
    r.client.end(true)
    for (const c of senderClients) c.end(true)
    await stopBroker(broker)
  }
}

describe('exactly once and in order for the application, while the reader reconnects every second', () => {
  it('in-memory persistence', { timeout: 80_000 }, (t) => run(t, 'memory'))
  it('Redis persistence (emitter and sessions on Redis)', { timeout: 80_000 }, (t) => run(t, 'redis'))
})
