// `parley admin clients | sessions | subscriptions | retained` end to end: a real three-node cluster
// (Redis persistence, API keys in MongoDB) with device tokens and the chat ACL (auth-jwt, limits,
// protocol; groups and messages so that messages queue for devices that are away), real mqtt.js
// devices on different nodes, and the CLI as a subprocess. Then one node with the in-memory
// persistence and anonymous clients, where sessions and retained messages are kept in the process.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import redisPersistence from 'aedes-persistence-redis'
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { AuthJwtConfig } from '../../plugins/auth-jwt/config.js'
import { mintToken } from '../../plugins/auth-jwt/keys.js'
import { adminCli, adminRequest, createKey } from '../helpers/admin.js'
import { BARE, eventually, startBroker, within, type BrokerProcess } from '../helpers/broker-process.js'
import type { ClientInfo, SessionInfo } from '../../scripts/admin/clients.js'
import { connectClient } from '../helpers/node.js'
import { mongoTestDb, mongoUrl, redisDb } from '../helpers/services.js'

const uid = () => randomBytes(4).toString('hex')
/** A bound on each test: a hang fails it, and after() still stops the brokers. */
const TEST_TIMEOUT_MS = 180_000

type ClientRow = ClientInfo
interface ClientsAnswer {
  clients: ClientRow[]
  total: number
  truncated: boolean
  missing: string[]
}
type SessionRow = SessionInfo
interface SessionDetail extends Omit<SessionRow, 'subscriptions'> {
  subscriptions: Array<{ topic: string; qos: number }>
}
interface SubscriptionsAnswer {
  clientId: string
  online: boolean
  node?: string
  subscriptions: Array<{ topic: string; qos: number }>
}

/** A port nothing listens on: a CLI that exits 2 there refused its arguments before any request. */
async function closedPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

const closed = (client: MqttClient) => new Promise<void>((resolve) => (client.connected ? client.once('close', () => resolve()) : resolve()))

describe('admin clients, sessions, subscriptions and retained messages on a three-node cluster', () => {
  const u = uid()
  const [alice, bob, dave] = [`alice${u}`, `bob${u}`, `dave${u}`]
  const authConfig = AuthJwtConfig.parse({ hs256: { secret: randomBytes(32).toString('base64url') } })
  let configDir: string
  let mongo: Awaited<ReturnType<typeof mongoTestDb>>
  let redis: Redis
  let a: BrokerProcess
  let b: BrokerProcess
  let c: BrokerProcess
  let readKey: string
  let operatorKey: string
  let nowhere: number
  let alicePhone: MqttClient
  let aliceTablet: MqttClient
  let bobPhone: MqttClient
  const mqttUrl = (n: BrokerProcess) => `mqtt://127.0.0.1:${n.ports.tcp}`
  const device = async (n: BrokerProcess, user: string, deviceId: string, options: { clean?: boolean; ws?: boolean; keepalive?: number } = {}) => {
    const password = await mintToken(authConfig, configDir, { userId: user, deviceId, ttlSeconds: 600 })
    const url = options.ws ? `ws://127.0.0.1:${n.ports.ws}/mqtt` : mqttUrl(n)
    return connectClient(url, { clientId: `${user}:${deviceId}`, username: user, password, clean: options.clean ?? true, keepalive: options.keepalive ?? 60 })
  }
  /** Runs each command against a port where nothing listens: exit 2 means refused before any request (one would exit 5). */
  const usageErrors = async (key: string, commands: string[][]) => {
    const results = await Promise.all(commands.map((args) => adminCli(nowhere, key, args)))
    results.forEach((r, i) => assert.equal(r.code, 2, `${commands[i]!.join(' ')}: exit ${r.code} ${r.stderr}`))
    return results
  }
  /** The CLI against node `n` with the read key unless told. */
  const cli = (n: BrokerProcess, args: string[], key = readKey) => adminCli(n.ports.ops!, key, args)

  before(async () => {
    // Database 40 is this file's: sessions left by an earlier run would show up in the listings.
    redis = new Redis(redisDb(40))
    await redis.flushdb()
    mongo = await mongoTestDb('parley_admin_clients')
    configDir = mkdtempSync(join(tmpdir(), 'parley-admin-clients-'))
    const file = join(configDir, 'parley.json')
    // One token secret for the three nodes: a device may connect to any of them.
    writeFileSync(
      file,
      JSON.stringify({ plugins: [{ use: 'auth-jwt', config: { hs256: { secret: authConfig.hs256.secret } } }, 'limits', 'protocol', 'groups', 'messages'] })
    )
    const env = { REDIS_URL: redisDb(40), MONGO_URL: mongoUrl(), MONGO_DATABASE: mongo.db.databaseName }
    const start = (name: string) => startBroker({ args: ['--config', file], env: { ...env, PARLEY_NODE_NAME: name } })
    ;[a, b, c] = await Promise.all([start('clients-a'), start('clients-b'), start('clients-c')])
    ;[readKey, operatorKey] = await Promise.all([createKey(a.ports.ops!, a.dataDir, 'read'), createKey(a.ports.ops!, a.dataDir, 'operator')])
    nowhere = await closedPort()
    alicePhone = await device(a, alice, 'phone', { clean: false, keepalive: 30 })
    aliceTablet = await device(b, alice, 'tablet', { ws: true })
    bobPhone = await device(c, bob, 'phone', { clean: false })
    await within(Promise.all([
      alicePhone.subscribeAsync(`u/${alice}/#`, { qos: 1 }),
      aliceTablet.subscribeAsync(`u/${alice}/#`, { qos: 1 }),
      bobPhone.subscribeAsync(`u/${bob}/#`, { qos: 1 })
    ]), 10_000, 'SUBACKs')
  })
  after(async () => {
    for (const client of [alicePhone, aliceTablet, bobPhone]) client?.end(true)
    await Promise.all([a?.stop(), b?.stop(), c?.stop()])
    await mongo?.done()
    await redis?.flushdb().catch(() => undefined)
    redis?.disconnect()
    if (configDir) rmSync(configDir, { recursive: true, force: true })
  })

  it('clients list: every connected client with its node, listener, session and subscriptions; filters, limit, errors', { timeout: TEST_TIMEOUT_MS }, async () => {
    const listed = await cli(b, ['clients', 'list', '--json'])
    assert.equal(listed.code, 0, listed.stderr)
    const all = listed.json<ClientsAnswer>()
    assert.deepEqual(all.missing, [])
    const mine = all.clients.filter((x) => x.clientId.includes(u))
    assert.deepEqual(
      mine.map((x) => [x.clientId, x.user, x.device, x.node, x.listener, x.cleanSession, x.subscriptions, x.queued]),
      [
        [`${alice}:phone`, alice, 'phone', a.brokerId, 'tcp', false, 1, 0],
        [`${alice}:tablet`, alice, 'tablet', b.brokerId, 'ws', true, 1, undefined],
        [`${bob}:phone`, bob, 'phone', c.brokerId, 'tcp', false, 1, 0]
      ]
    )
    const phone = mine[0]!
    assert.equal(phone.keepalive, 30)
    assert.equal(phone.protocolVersion, 4)
    assert.match(phone.address ?? '', /^127\.0\.0\.1:\d+$/)
    assert.ok(typeof phone.connectedAt === 'number' && phone.connectedAt > 0, 'connected since')

    const [byUser, byNode, byName, byMatch, limited, human] = await Promise.all([
      cli(c, ['clients', 'list', '--user', alice, '--json']),
      cli(a, ['clients', 'list', '--node', c.brokerId, '--json']),
      cli(a, ['clients', 'list', '--node', 'clients-b', '--json']),
      cli(a, ['clients', 'list', '--match', `alice${u}:t*`, '--json']),
      cli(a, ['clients', 'list', '--user', alice, '--limit', '1', '--json']),
      cli(a, ['clients', 'list', '--user', alice])
    ])
    const ids = (r: typeof byUser) => r.json<ClientsAnswer>().clients.map((x) => x.clientId)
    assert.deepEqual(ids(byUser), [`${alice}:phone`, `${alice}:tablet`])
    assert.deepEqual(ids(byNode), [`${bob}:phone`], 'only node c answered')
    assert.deepEqual(ids(byName), [`${alice}:tablet`], 'a node by its name')
    assert.deepEqual(ids(byMatch), [`${alice}:tablet`])
    assert.deepEqual({ ...limited.json<ClientsAnswer>(), clients: ids(limited) }, { clients: [`${alice}:phone`], total: 2, truncated: true, missing: [] })
    assert.match(limited.stderr, /1 of 2 connected clients shown/)
    assert.equal(human.code, 0, human.stderr)
    const lines = human.stdout.trim().split('\n')
    assert.match(lines[0]!, /^CLIENT ID\s+USER\s+DEVICE\s+NODE\s+ADDRESS\s+LISTENER\s+CONNECTED\s+KEEPALIVE\s+CLEAN\s+SUBS\s+QUEUED$/)
    assert.match(lines[1]!, new RegExp(`^${alice}:phone\\s+${alice}\\s+phone\\s+${a.brokerId}\\s+127\\.0\\.0\\.1:\\d+\\s+tcp\\s+\\S+( \\S+)?\\s+30s\\s+no\\s+1\\s+0$`))
    assert.match(lines[2]!, new RegExp(`^${alice}:tablet\\s.*\\sws\\s.*\\syes\\s+1\\s+-$`))

    const unknownNode = await cli(a, ['clients', 'list', '--node', 'no-such-node'])
    assert.equal(unknownNode.code, 3)
    assert.match(unknownNode.stderr, /no live node no-such-node/)
    await usageErrors(readKey, [
      ['clients', 'list', '--user', 'not a user'],
      ['clients', 'list', '--limit', '0'],
      ['clients', 'list', '--limit', 'many'],
      ['clients', 'list', '--match', '']
    ])
    const noKey = await adminCli(a.ports.ops!, undefined, ['clients', 'list'])
    assert.equal(noKey.code, 4)
  })

  it('clients show: one client wherever it is, with its subscriptions; exit 3 for a client that is not connected', { timeout: TEST_TIMEOUT_MS }, async () => {
    const shown = await cli(c, ['clients', 'show', `${alice}:phone`, '--json'])
    assert.equal(shown.code, 0, shown.stderr)
    const { client, alsoOn } = shown.json<{ client: Omit<ClientRow, 'subscriptions'> & { anonymous: boolean; subscriptions: Array<{ topic: string; qos: number }> }; alsoOn: string[] }>()
    assert.deepEqual(alsoOn, [])
    assert.deepEqual(
      [client.node, client.user, client.device, client.anonymous, client.cleanSession, client.queued, client.subscriptions],
      [a.brokerId, alice, 'phone', false, false, 0, [{ topic: `u/${alice}/#`, qos: 1 }]]
    )
    const human = await cli(b, ['clients', 'show', `${alice}:tablet`])
    assert.equal(human.code, 0, human.stderr)
    assert.match(human.stdout, new RegExp(`^node:\\s+${b.brokerId}$`, 'm'))
    assert.match(human.stdout, /^listener:\s+ws$/m)
    assert.match(human.stdout, /^clean session:\s+yes$/m)
    assert.match(human.stdout, new RegExp(`^u/${alice}/#\\s+1$`, 'm'))

    const unknown = await cli(a, ['clients', 'show', `nobody${u}:phone`])
    assert.equal(unknown.code, 3)
    assert.match(unknown.stderr, new RegExp(`nobody${u}:phone is not connected to any node`))
    const [tooLong] = await usageErrors(readKey, [
      ['clients', 'show', 'x'.repeat(257)],
      ['clients', 'show', 'a\tb']
    ])
    assert.match(tooLong!.stderr, /at most 256 characters/)
    // A long id (over Fastify's default 100 for a path parameter) still reaches the API.
    assert.equal((await cli(a, ['clients', 'show', `${'é'.repeat(150)}:phone`])).code, 3)
  })

  it('sessions: persistent sessions online or not, with the messages queued while away', { timeout: TEST_TIMEOUT_MS }, async () => {
    const away = await device(b, dave, 'phone', { clean: false })
    // Two filters that do not overlap: each message matches one. One SUBSCRIBE each: with Redis,
    // Aedes never acknowledges a persistent session's SUBSCRIBE of several filters (its
    // BroadcastPersistence waits for each filter's echo under one key, the first filter's).
    for (const filter of [`u/${dave}/m`, `u/${dave}/r`]) await within(away.subscribeAsync(filter, { qos: 1 }), 10_000, 'SUBACK')
    await within(away.endAsync(), 5000, 'dave leaves')
    await eventually(async () => (await adminRequest<ClientsAnswer>(a.ports.ops!, readKey, 'GET', `/clients?user=${dave}`)).body.clients.length === 0, 10_000, 'dave gone')
    // Stored before their PUBACK, then published to u/dave/m: queued in dave's session (and carbons to alice).
    for (const n of [1, 2, 3]) await within(alicePhone.publishAsync(`s/dm/${dave}`, JSON.stringify({ cmid: `q${n}`, body: `while away ${n}` }), { qos: 1 }), 10_000, 'PUBACK')
    let seen: SessionRow[] = []
    const daveSessions = async () => (seen = (await adminRequest<{ sessions: SessionRow[] }>(c.ports.ops!, readKey, 'GET', `/sessions?user=${dave}`)).body.sessions)
    await eventually(async () => (await daveSessions())[0]?.queued === 3, 15_000, 'three messages queued for dave').catch((err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(seen)}`)
    })
    const listedDave = await cli(c, ['sessions', 'list', '--user', dave, '--json'])
    assert.deepEqual(listedDave.json<{ sessions: SessionRow[] }>().sessions, [{ clientId: `${dave}:phone`, user: dave, device: 'phone', online: false, subscriptions: 2, queued: 3 }])
    // The queue is aedes-persistence-redis's own list (the client id is URI-encoded in its key).
    assert.equal(await redis.llen(`outgoing:${encodeURIComponent(`${dave}:phone`)}`), 3)

    const everyone = await cli(a, ['sessions', 'list', '--json'])
    assert.equal(everyone.code, 0, everyone.stderr)
    const rows = everyone.json<{ sessions: SessionRow[]; missing: string[] }>()
    assert.deepEqual(rows.missing, [])
    assert.deepEqual(
      rows.sessions.filter((s) => s.clientId.includes(u)).map((s) => [s.clientId, s.online, s.node]),
      [
        [`${alice}:phone`, true, a.brokerId],
        [`${bob}:phone`, true, c.brokerId],
        [`${dave}:phone`, false, undefined]
      ],
      'persistent sessions only: the tablet has a clean session'
    )
    const shown = await cli(b, ['sessions', 'show', `${dave}:phone`, '--json'])
    assert.equal(shown.code, 0, shown.stderr)
    assert.deepEqual(shown.json<SessionDetail>().subscriptions, [
      { topic: `u/${dave}/m`, qos: 1 },
      { topic: `u/${dave}/r`, qos: 1 }
    ])
    const human = await cli(b, ['sessions', 'list', '--user', dave])
    assert.match(human.stdout, new RegExp(`^${dave}:phone\\s+${dave}\\s+phone\\s+offline\\s+-\\s+2\\s+3$`, 'm'))
    const showHuman = await cli(b, ['sessions', 'show', `${dave}:phone`])
    assert.match(showHuman.stdout, /^state:\s+offline$/m)
    assert.match(showHuman.stdout, /^queued:\s+3$/m)

    const clean = await cli(a, ['sessions', 'show', `${alice}:tablet`])
    assert.equal(clean.code, 3)
    assert.match(clean.stderr, /no persistent session \(it is connected with a clean session\)/)
    const offline = await cli(a, ['clients', 'show', `${dave}:phone`])
    assert.equal(offline.code, 3)
    assert.match(offline.stderr, /it has a persistent session: parley admin sessions show/)
    await usageErrors(readKey, [['sessions', 'list', '--user', 'a:b'], ['sessions', 'show', '']])
  })

  it('subscriptions: list, add and remove on the node holding the client or in the stored session; the ACL of a SUBSCRIBE applies', { timeout: TEST_TIMEOUT_MS }, async () => {
    const listed = await cli(b, ['subscriptions', 'list', `${alice}:phone`, '--json'])
    assert.deepEqual(listed.json(), { clientId: `${alice}:phone`, online: true, node: a.brokerId, subscriptions: [{ topic: `u/${alice}/#`, qos: 1 }] })
    assert.match((await cli(b, ['subscriptions', 'list', `${alice}:phone`])).stdout, new RegExp(`^TOPIC\\s+QOS\nu/${alice}/#\\s+1\n$`))
    const list = async (n: BrokerProcess, id: string) => {
      const r = await adminRequest<SubscriptionsAnswer>(n.ports.ops!, readKey, 'GET', `/clients/${encodeURIComponent(id)}/subscriptions`)
      assert.equal(r.status, 200, JSON.stringify(r.body))
      return r.body
    }

    // Added from node c to a client on node a; kept in its persistent session too.
    const added = await cli(c, ['subscriptions', 'add', `${alice}:phone`, `u/${alice}/x/+`, '--qos', '0'], operatorKey)
    assert.equal(added.code, 0, added.stderr)
    assert.match(added.stdout, new RegExp(`subscribed to u/${alice}/x/\\+ \\(QoS 0; connected on ${a.brokerId}\\)`))
    assert.deepEqual((await list(a, `${alice}:phone`)).subscriptions, [
      { topic: `u/${alice}/#`, qos: 1 },
      { topic: `u/${alice}/x/+`, qos: 0 }
    ])
    assert.equal(await redis.hexists(`client:${encodeURIComponent(`${alice}:phone`)}`, `u/${alice}/x/+`), 1, 'stored in the session')

    // The same ACL as the device's own SUBSCRIBE: another user's tree, another device's subtree, the broker's topics.
    const topics = [`u/${bob}/#`, `u/${alice}/d/tablet/#`, '$SYS/#']
    for (const [i, refused] of (await Promise.all(topics.map((t) => cli(b, ['subscriptions', 'add', `${alice}:phone`, t], operatorKey)))).entries()) {
      assert.equal(refused.code, 4, `${topics[i]}: ${refused.stderr}`)
      assert.match(refused.stderr, /refused by the subscription ACL/)
    }
    assert.equal((await list(a, `${alice}:phone`)).subscriptions.length, 2, 'nothing added by a refusal')

    // A clean session on a WebSocket: applied to the connection only.
    const json = await cli(a, ['subscriptions', 'add', `${alice}:tablet`, `u/${alice}/y`, '--json'], operatorKey)
    assert.deepEqual(json.json(), { clientId: `${alice}:tablet`, topic: `u/${alice}/y`, qos: 1, online: true, node: b.brokerId })
    assert.equal(await redis.exists(`client:${encodeURIComponent(`${alice}:tablet`)}`), 0)

    const removed = await cli(b, ['subscriptions', 'remove', `${alice}:phone`, `u/${alice}/x/+`], operatorKey)
    assert.equal(removed.code, 0, removed.stderr)
    assert.deepEqual((await list(c, `${alice}:phone`)).subscriptions, [{ topic: `u/${alice}/#`, qos: 1 }])
    assert.equal(await redis.hexists(`client:${encodeURIComponent(`${alice}:phone`)}`, `u/${alice}/x/+`), 0, 'gone from the session too')
    const again = await cli(b, ['subscriptions', 'remove', `${alice}:phone`, `u/${alice}/x/+`], operatorKey)
    assert.equal(again.code, 3)
    assert.match(again.stderr, /has no subscription to/)

    // Offline: the stored session. Without a connection the ACL has no identity and refuses additions.
    assert.deepEqual(await list(a, `${dave}:phone`), {
      clientId: `${dave}:phone`,
      online: false,
      subscriptions: [
        { topic: `u/${dave}/m`, qos: 1 },
        { topic: `u/${dave}/r`, qos: 1 }
      ]
    })
    const offlineAdd = await cli(a, ['subscriptions', 'add', `${dave}:phone`, `u/${dave}/z`], operatorKey)
    assert.equal(offlineAdd.code, 4)
    assert.match(offlineAdd.stderr, /is offline/)
    const offlineRemove = await cli(c, ['subscriptions', 'remove', `${dave}:phone`, `u/${dave}/r`, '--json'], operatorKey)
    assert.deepEqual(offlineRemove.json(), { clientId: `${dave}:phone`, topic: `u/${dave}/r`, online: false })
    assert.deepEqual((await list(b, `${dave}:phone`)).subscriptions, [{ topic: `u/${dave}/m`, qos: 1 }])

    const unknown = await cli(a, ['subscriptions', 'list', `nobody${u}:phone`])
    assert.equal(unknown.code, 3)
    assert.match(unknown.stderr, /not connected to any node and has no persistent session/)
    const readOnly = await cli(a, ['subscriptions', 'add', `${alice}:phone`, `u/${alice}/r`])
    assert.equal(readOnly.code, 4)
    assert.match(readOnly.stderr, /scope read; POST \/clients\/:clientId\/subscriptions needs operator/)
    await usageErrors(operatorKey, [
      ['subscriptions', 'add', `${alice}:phone`, 'a/#/b'],
      ['subscriptions', 'add', `${alice}:phone`, 'a/b+'],
      ['subscriptions', 'add', `${alice}:phone`, 'a/b', '--qos', '3'],
      ['subscriptions', 'remove', `${alice}:phone`, ''],
      ['subscriptions', 'add', `${alice}:phone`]
    ])
  })

  it('clients kick: closes the connection on whichever node holds it, optionally discarding the session; exit 3 when not found', { timeout: TEST_TIMEOUT_MS }, async () => {
    const denied = await cli(a, ['clients', 'kick', `${alice}:tablet`])
    assert.equal(denied.code, 4)
    assert.match(denied.stderr, /scope read; POST \/clients\/:clientId\/kick needs operator/)
    assert.ok(aliceTablet.connected, 'a read key kicks nobody')

    const tabletClosed = closed(aliceTablet)
    const kicked = await cli(a, ['clients', 'kick', `${alice}:tablet`], operatorKey)
    assert.equal(kicked.code, 0, kicked.stderr)
    assert.equal(kicked.stdout.trim(), `${alice}:tablet: connection closed on ${b.brokerId}`)
    await within(tabletClosed, 10_000, 'the tablet disconnected')
    const audit = a.logs.find((l) => l.msg === 'admin audit' && (l.audit as { action?: string }).action === 'POST /clients/:clientId/kick')
    assert.deepEqual(audit?.audit, {
      key: operatorKey.split('_')[1],
      keyName: 'test-operator',
      action: 'POST /clients/:clientId/kick',
      params: { clientId: `${alice}:tablet` },
      status: 200,
      clientId: `${alice}:tablet`,
      node: b.brokerId,
      sessionDiscarded: false
    })

    const bobClosed = closed(bobPhone)
    const withSession = await cli(b, ['clients', 'kick', `${bob}:phone`, '--session', '--json'], operatorKey)
    assert.deepEqual(withSession.json(), { clientId: `${bob}:phone`, found: true, node: c.brokerId, sessionDiscarded: true })
    await within(bobClosed, 10_000, 'bob disconnected')
    assert.equal((await cli(a, ['sessions', 'show', `${bob}:phone`])).code, 3, "bob's session is gone")
    assert.equal(await redis.sismember('clients', `${bob}:phone`), 0)

    // Not connected, but a session: discarded with its queue.
    const offline = await cli(c, ['clients', 'kick', `${dave}:phone`, '--session'], operatorKey)
    assert.equal(offline.code, 0, offline.stderr)
    assert.equal(offline.stdout.trim(), `${dave}:phone: not connected; persistent session discarded`)
    assert.equal(await redis.llen(`outgoing:${encodeURIComponent(`${dave}:phone`)}`), 0)
    assert.deepEqual((await cli(a, ['sessions', 'list', '--user', dave, '--json'])).json<{ sessions: unknown[] }>().sessions, [])

    const notFound = [[`${dave}:phone`, '--session'], [`nobody${u}:phone`], [`${alice}:tablet`]]
    for (const [i, missing] of (await Promise.all(notFound.map((args) => cli(b, ['clients', 'kick', ...args], operatorKey)))).entries()) {
      assert.equal(missing.code, 3, `${notFound[i]!.join(' ')}: ${missing.stderr}`)
      assert.match(missing.stderr, /is not connected to any node/)
    }
    assert.ok(alicePhone.connected, 'nobody else was kicked')
    await usageErrors(operatorKey, [['clients', 'kick', ''], ['clients', 'kick', 'x', '--sesion']])
  })

  it('retained list and clean: topics, sizes and QoS from the shared store; payloads only for operators', { timeout: TEST_TIMEOUT_MS }, async () => {
    // Devices cannot retain under the chat protocol: stored the way any node's Aedes stores them.
    const store = redisPersistence({ conn: redis }) as unknown as { storeRetained(p: object): Promise<void> }
    const base = `t/${u}`
    await store.storeRetained({ cmd: 'publish', topic: `${base}/a`, payload: Buffer.from('hello'), qos: 1, retain: true })
    await store.storeRetained({ cmd: 'publish', topic: `${base}/b/c`, payload: Buffer.from('{"x":1}'), qos: 0, retain: true })
    await store.storeRetained({ cmd: 'publish', topic: `${base}/bin`, payload: Buffer.from([0xff, 0x00, 0xfe]), qos: 2, retain: true })

    const listed = await cli(b, ['retained', 'list', '--topic', `${base}/#`, '--json'])
    assert.equal(listed.code, 0, listed.stderr)
    assert.deepEqual(listed.json(), {
      retained: [
        { topic: `${base}/a`, qos: 1, size: 5 },
        { topic: `${base}/b/c`, qos: 0, size: 7 },
        { topic: `${base}/bin`, qos: 2, size: 3 }
      ],
      total: 3,
      truncated: false
    })
    const human = await cli(c, ['retained', 'list', '--topic', `${base}/+`, '--limit', '1'])
    assert.match(human.stdout, new RegExp(`^TOPIC\\s+QOS\\s+SIZE\n${base}/a\\s+1\\s+5\n$`))
    assert.match(human.stderr, /1 of 2 retained messages shown/)

    const payloadsDenied = await cli(a, ['retained', 'list', '--topic', `${base}/#`, '--payload'])
    assert.equal(payloadsDenied.code, 4)
    assert.match(payloadsDenied.stderr, /payloads are user data/)
    const payloads = await cli(a, ['retained', 'list', '--topic', `${base}/#`, '--payload', '--json'], operatorKey)
    assert.deepEqual(
      payloads.json<{ retained: Array<{ payload: string; encoding: string }> }>().retained.map((m) => [m.payload, m.encoding]),
      [
        ['hello', 'utf8'],
        ['{"x":1}', 'utf8'],
        [Buffer.from([0xff, 0x00, 0xfe]).toString('base64'), 'base64']
      ]
    )

    assert.equal((await cli(a, ['retained', 'clean', `${base}/b/#`])).code, 4, 'a read key removes nothing')
    const one = await cli(a, ['retained', 'clean', `${base}/b/#`], operatorKey)
    assert.equal(one.code, 0, one.stderr)
    assert.equal(one.stdout.trim(), `1 retained message removed (${base}/b/#)`)
    const rest = await cli(c, ['retained', 'clean', `${base}/#`, '--json'], operatorKey)
    assert.deepEqual(rest.json(), { filter: `${base}/#`, removed: 2, topics: [`${base}/a`, `${base}/bin`] })
    assert.equal(await redis.hlen('retained'), 0)
    assert.equal((await cli(b, ['retained', 'clean', `${base}/a`], operatorKey)).stdout.trim(), `0 retained messages removed (${base}/a)`)
    await usageErrors(operatorKey, [
      ['retained', 'list', '--topic', 'a/#/b'],
      ['retained', 'list', '--limit', '-1'],
      ['retained', 'clean', 'a/+b']
    ])
  })
})

describe('admin sessions, subscriptions and retained messages on one node with the in-memory persistence', () => {
  const u = uid()
  let node: BrokerProcess
  let operatorKey: string
  before(async () => {
    node = await startBroker({ env: { ...BARE } })
    operatorKey = await createKey(node.ports.ops!, node.dataDir, 'operator')
  })
  after(async () => {
    await node?.stop()
  })
  const cli = (args: string[]) => adminCli(node.ports.ops!, operatorKey, args)

  it('lists a session away with its queue, changes its subscriptions, discards it; lists and cleans retained messages', { timeout: TEST_TIMEOUT_MS }, async () => {
    const url = `mqtt://127.0.0.1:${node.ports.tcp}`
    const id = `m${u}:phone`
    const away = await connectClient(url, { clientId: id, clean: false })
    await within(away.subscribeAsync(`q/${u}`, { qos: 1 }), 10_000, 'SUBACK')
    await within(away.endAsync(), 5000, 'the device leaves')
    await eventually(async () => (await cli(['clients', 'list', '--json'])).json<ClientsAnswer>().total === 0, 10_000, 'the device gone')
    const sender = await connectClient(url, { clientId: `sender${u}` })
    for (const [topic, payload, retain] of [[`q/${u}`, 'one', false], [`q/${u}`, 'two', false], [`r/${u}/status`, 'retained text', true]] as const) {
      await within(sender.publishAsync(topic, payload, { qos: 1, retain }), 10_000, 'PUBACK')
    }
    const sessions = async () => (await cli(['sessions', 'list', '--json'])).json<{ sessions: SessionRow[] }>().sessions
    await eventually(async () => (await sessions())[0]?.queued === 2, 10_000, 'two messages queued')
    assert.deepEqual(await sessions(), [{ clientId: id, user: `m${u}`, device: 'phone', online: false, subscriptions: 1, queued: 2 }])

    // No ACL plugin here: an offline session takes the subscription.
    const added = await cli(['subscriptions', 'add', id, `q/${u}/more`, '--qos', '2', '--json'])
    assert.deepEqual(added.json(), { clientId: id, topic: `q/${u}/more`, qos: 2, online: false })
    assert.deepEqual((await cli(['subscriptions', 'list', id, '--json'])).json<SubscriptionsAnswer>().subscriptions, [
      { topic: `q/${u}`, qos: 1 },
      { topic: `q/${u}/more`, qos: 2 }
    ])
    // A connected client with a clean session: subscribed like its own SUBSCRIBE, retained message included.
    const retainedArrives = new Promise<string>((resolve) => sender.on('message', (topic, payload) => topic === `r/${u}/status` && resolve(payload.toString())))
    assert.equal((await cli(['subscriptions', 'add', `sender${u}`, `r/${u}/#`, '--qos', '0'])).code, 0)
    assert.equal(await within(retainedArrives, 10_000, 'the retained message after the admin SUBSCRIBE'), 'retained text')

    const retained = await cli(['retained', 'list', '--json'])
    assert.deepEqual(retained.json(), { retained: [{ topic: `r/${u}/status`, qos: 1, size: 13 }], total: 1, truncated: false })
    assert.equal((await cli(['retained', 'clean', `r/${u}/status`])).stdout.trim(), `1 retained message removed (r/${u}/status)`)
    assert.equal((await cli(['retained', 'list', '--json'])).json<{ total: number }>().total, 0)

    const discarded = await cli(['clients', 'kick', id, '--session', '--json'])
    assert.deepEqual(discarded.json(), { clientId: id, found: false, sessionDiscarded: true })
    assert.deepEqual(await sessions(), [])
    await within(sender.endAsync(), 5000, 'sender disconnect')
  })
})
