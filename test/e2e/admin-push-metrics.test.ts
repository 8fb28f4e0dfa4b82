// Push and metrics on the admin API, against a real two-node cluster (Redis, MongoDB) with the
// push providers' local fakes (APNs over HTTP/2 + TLS, FCM with its OAuth endpoint), driven
// through the `parley admin` CLI as operators run it: push tokens and push test with a key (and
// refused without one), the metrics snapshot of both nodes, and the core Prometheus counters
// moving with real MQTT traffic over TCP and WebSocket. Every wait is bounded; nothing is timed.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { MongoClient } from 'mongodb'
import { startApnsFake, type ApnsFake } from '../../plugins/push/test/fakes/apns-fake.js'
import { fakeProviderConfig, makeTestCredentials, type TestCredentials } from '../../plugins/push/test/fakes/certs.js'
import { startFcmFake, type FcmFake } from '../../plugins/push/test/fakes/fcm-fake.js'
import { adminCli, adminRequest, createKey } from '../helpers/admin.js'
import { eventually, ROOT, startBroker, type BrokerProcess } from '../helpers/broker-process.js'
import { testDevice, type TestDevice } from '../helpers/device.js'
import { mongoUrl, redisDb } from '../helpers/services.js'

const tag = randomBytes(3).toString('hex')
const database = `parley_admin_push_${tag}`

/** The value of one series in a Prometheus text exposition (0 when absent). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$/.exec(line)
    if (!m || m[1] !== name) continue
    const have: Record<string, string> = Object.fromEntries([...(m[3] ?? '').matchAll(/([a-zA-Z_]+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[4])
  }
  return total
}

interface NodeMetrics {
  node: string
  nodeName: string
  connections: { current: number; byListener: Record<string, number>; total: number }
  messages: { in: number; out: number }
  push: { sent: number; failed: number } | null
  limits: Record<string, number>
  eventLoopLagMs: { p99: number }
  memory: { rssBytes: number }
}

describe('admin API and CLI: push and metrics on a two-node cluster', { timeout: 180_000 }, () => {
  let creds: TestCredentials
  let apns: ApnsFake
  let fcm: FcmFake
  let a: BrokerProcess
  let b: BrokerProcess
  let operatorKey: string
  let readKey: string
  const devices: TestDevice[] = []
  const user = (name: string) => `${name}${tag}`
  const scrape = async (node: BrokerProcess) => (await fetch(`http://127.0.0.1:${node.ports.ops}/metrics`, { signal: AbortSignal.timeout(10_000) })).text()
  const device = async (url: string, u: string, id: string) => {
    const d = await testDevice(url, u, id, { reconnectPeriod: 0 })
    d.client.on('error', () => undefined)
    devices.push(d)
    return d
  }

  before(async () => {
    creds = makeTestCredentials()
    apns = await startApnsFake({ cert: creds.cert, key: creds.key, publicKey: creds.apns.publicKey, keyId: creds.apns.keyId, teamId: creds.apns.teamId })
    fcm = await startFcmFake({ cert: creds.cert, key: creds.key, publicKey: creds.fcm.publicKey, projectId: creds.fcm.projectId, clientEmail: creds.fcm.clientEmail })
    const config = join(creds.dir, 'parley.yaml')
    writeFileSync(
      config,
      [
        'mqtt: { allowAnonymous: true }',
        `redis: { url: "${redisDb(43)}", keyPrefix: "apm${tag}:" }`,
        // The database by name: mongo.database, not the URL's path, picks it.
        `mongo: { url: "${mongoUrl()}", database: ${database} }`,
        'plugins:',
        '  - limits',
        '  - protocol',
        '  - groups',
        '  - messages',
        '  - presence',
        '  - use: push',
        `    config: ${JSON.stringify(fakeProviderConfig(creds, { apns: apns.port, fcm: fcm.port }))}`
      ].join('\n')
    )
    ;[a, b] = await Promise.all([
      startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: `apm-a-${tag}` } }),
      startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: `apm-b-${tag}` } })
    ])
    operatorKey = await createKey(a.ports.ops!, a.dataDir, 'operator', `ops-${tag}`)
    readKey = await createKey(a.ports.ops!, a.dataDir, 'read', `ro-${tag}`)
    // Both nodes in each other's view before anything asks the cluster.
    await eventually(async () => (await adminRequest<{ nodes: unknown[] }>(a.ports.ops!, readKey, 'GET', '/nodes')).body.nodes.length === 2, 15_000, 'two nodes in the view')
  })

  after(async () => {
    devices.forEach((d) => d.client.end(true))
    await Promise.all([a?.stop(), b?.stop()])
    await apns?.close()
    await fcm?.close()
    const client = new MongoClient(mongoUrl(), { serverSelectionTimeoutMS: 5000 })
    await client.db(database).dropDatabase().catch(() => undefined)
    await client.close()
    if (creds) rmSync(creds.dir, { recursive: true, force: true })
  })

  it('push tokens and push test: devices registered on one node, listed and tested through the other, with an operator key', async () => {
    const bob = user('bob')
    const phoneToken = randomBytes(32).toString('hex')
    const pixelToken = `fcm-${randomBytes(16).toString('hex')}:APA91b${randomBytes(8).toString('hex')}`
    const onB = `mqtt://127.0.0.1:${b.ports.tcp}`
    const phone = await device(onB, bob, 'phone')
    await phone.call('push.register', { provider: 'apns', token: phoneToken, environment: 'sandbox' })
    await phone.end()
    const pixel = await device(onB, bob, 'pixel')
    await pixel.call('push.register', { provider: 'fcm', token: pixelToken })
    await pixel.end()

    const tokens = await adminCli(a.ports.ops!, operatorKey, ['push', 'tokens', bob])
    assert.equal(tokens.code, 0, tokens.stderr)
    const lines = tokens.stdout.trim().split('\n')
    assert.match(lines[0]!, /^DEVICE +PLATFORM +PROVIDER +TOKEN +APP +CREATED +UPDATED +LAST RESULT$/)
    assert.match(lines[1]!, new RegExp(`^phone +ios +apns sandbox +${phoneToken.slice(0, 6)}…${phoneToken.slice(-6)} +com\\.example\\.chat +\\d{4}-`))
    assert.match(lines[2]!, new RegExp(`^pixel +android +fcm +${pixelToken.slice(0, 6)}…${pixelToken.slice(-6)} +${creds.fcm.projectId} +\\d{4}-.* -$`))
    assert.ok(!tokens.stdout.includes(phoneToken) && !tokens.stdout.includes(pixelToken), 'never a whole token')

    const sent = await adminCli(a.ports.ops!, operatorKey, ['push', 'test', bob])
    assert.equal(sent.code, 0, sent.stderr)
    assert.match(sent.stdout, new RegExp(`^${bob}:phone  apns  accepted 200 id=[0-9a-f-]{36}$`, 'm'))
    assert.match(sent.stdout, new RegExp(`^${bob}:pixel  fcm  accepted id=projects/${creds.fcm.projectId}/messages/`, 'm'))
    assert.equal(apns.accepted(phoneToken).length, 1)
    assert.equal((apns.accepted(phoneToken)[0]!.payload.parley as { type: string }).type, 'test')
    assert.equal(fcm.accepted(pixelToken).length, 1)

    // One device only, through node b; then the last result shows in the listing.
    const one = await adminCli(b.ports.ops!, operatorKey, ['push', 'test', bob, '--device', 'pixel', '--json'])
    assert.equal(one.code, 0, one.stderr)
    assert.deepEqual(
      one.json<{ results: Array<{ device: string; ok: boolean }> }>().results.map((r) => [r.device, r.ok]),
      [['pixel', true]]
    )
    const listed = await adminCli(b.ports.ops!, operatorKey, ['push', 'tokens', bob, '--json'])
    const seen = listed.json<{ devices: Array<{ device: string; token: string; lastResult?: { ok: boolean; type: string; via: string } }> }>().devices
    assert.deepEqual(
      seen.map((d) => [d.device, d.lastResult?.ok, d.lastResult?.type, d.lastResult?.via]),
      [
        ['phone', true, 'test', 'apns'],
        ['pixel', true, 'test', 'fcm']
      ]
    )

    // The change is audited on the node that answered.
    await eventually(
      () => a.logs.some((l) => l.msg === 'admin audit' && (l.audit as { action?: string; user?: string }).action === 'POST /push/test' && (l.audit as { user?: string }).user === bob),
      5000,
      'the audit line'
    )
    // The user view's push section.
    const shown = await adminRequest<{ facets: { push: { devices: Array<{ device: string; platform: string }> } } }>(a.ports.ops!, readKey, 'GET', `/users/${bob}`)
    assert.deepEqual(shown.body.facets.push.devices.map((d) => [d.device, d.platform]), [
      ['phone', 'ios'],
      ['pixel', 'android']
    ])

    // Without a key, with a read key, for nobody.
    const noKey = await adminCli(a.ports.ops!, undefined, ['push', 'test', bob])
    assert.equal(noKey.code, 4)
    assert.match(noKey.stderr, /no API key/)
    const readOnly = await adminCli(a.ports.ops!, readKey, ['push', 'tokens', bob])
    assert.equal(readOnly.code, 4)
    assert.match(readOnly.stderr, /needs operator/)
    const nobody = await adminCli(a.ports.ops!, operatorKey, ['push', 'test', user('nobody')])
    assert.equal(nobody.code, 3)
    assert.match(nobody.stderr, /no push registration/)
    assert.equal((await adminCli(a.ports.ops!, operatorKey, ['push', 'test', 'not a user'])).code, 2, 'checked before any request')
    assert.equal(apns.accepted(phoneToken).length, 1, 'nothing more was sent')
  })

  it('metrics: the snapshot shows both nodes, in a table per node and as JSON', async () => {
    const human = await adminCli(b.ports.ops!, readKey, ['metrics'])
    assert.equal(human.code, 0, human.stderr)
    for (const node of [a, b]) {
      assert.match(human.stdout, new RegExp(`^${node.brokerId}( \\*)?  apm-[ab]-${tag}  \\S+  up `, 'm'), `a block for ${node.brokerId}`)
    }
    for (const field of ['connections now', 'messages in', 'messages out', 'hook denials', 'rate-limit drops', 'offline queue drops', 'push', 'event loop lag', 'memory']) {
      assert.equal(human.stdout.split('\n').filter((l) => l.startsWith(`  ${field}:`)).length, 2, `${field} for each node:\n${human.stdout}`)
    }
    const json = await adminCli(a.ports.ops!, readKey, ['metrics', '--json'])
    assert.equal(json.code, 0, json.stderr)
    const snapshot = json.json<{ self: string; nodes: NodeMetrics[]; missing: string[] }>()
    assert.equal(snapshot.self, a.brokerId)
    assert.deepEqual(snapshot.missing, [])
    assert.deepEqual(snapshot.nodes.map((n) => n.node).sort(), [a.brokerId, b.brokerId].sort())
    for (const n of snapshot.nodes) {
      assert.ok(n.memory.rssBytes > 0)
      assert.ok(n.eventLoopLagMs.p99 >= 0)
      assert.ok(n.push, 'push is loaded')
      assert.ok('publish_rate' in n.limits, 'limits are loaded')
    }
    // The push tests of the first case went out from node a (the CLI asked a for both devices) and b (one).
    const byNode = new Map(snapshot.nodes.map((n) => [n.node, n]))
    assert.ok(byNode.get(a.brokerId)!.push!.sent >= 2)
    assert.ok(byNode.get(b.brokerId)!.push!.sent >= 1)
  })

  it('core metrics: connections by listener and messages in and out move with real traffic; every node says who it is', async () => {
    const alice = user('alice')
    const before = await scrape(a)
    assert.equal(sample(before, 'parley_node_info', { broker_id: a.brokerId, node_name: `apm-a-${tag}` }), 1)
    for (const listener of ['tcp', 'ws']) assert.match(before, new RegExp(`^parley_mqtt_connections_total\\{listener="${listener}"\\} \\d+$`, 'm'))

    const overTcp = await device(`mqtt://127.0.0.1:${a.ports.tcp}`, alice, 'phone')
    const overWs = await device(`ws://127.0.0.1:${a.ports.ws}/mqtt`, alice, 'web')
    await eventually(
      async () => {
        const now = await scrape(a)
        return (
          sample(now, 'parley_mqtt_connections_total', { listener: 'tcp' }) > sample(before, 'parley_mqtt_connections_total', { listener: 'tcp' }) &&
          sample(now, 'parley_mqtt_connections_total', { listener: 'ws' }) > sample(before, 'parley_mqtt_connections_total', { listener: 'ws' }) &&
          sample(now, 'parley_mqtt_clients', { listener: 'tcp' }) >= 1 &&
          sample(now, 'parley_mqtt_clients', { listener: 'ws' }) >= 1
        )
      },
      10_000,
      'connections counted by listener'
    )

    // A request over TCP and one over WebSocket: two PUBLISHes in (QoS 1), two answers out.
    await overTcp.call('ping')
    await overWs.call('ping')
    await eventually(
      async () => {
        const now = await scrape(a)
        return (
          sample(now, 'parley_mqtt_messages_received_total', { qos: '1' }) - sample(before, 'parley_mqtt_messages_received_total', { qos: '1' }) >= 2 &&
          sample(now, 'parley_mqtt_messages_sent_total') - sample(before, 'parley_mqtt_messages_sent_total') >= 2
        )
      },
      10_000,
      'messages in and out counted'
    )

    // The snapshot reads the same counters.
    const snapshot = (await adminRequest<{ nodes: NodeMetrics[] }>(b.ports.ops!, readKey, 'GET', '/metrics')).body
    const self = snapshot.nodes.find((n) => n.node === a.brokerId)!
    assert.ok(self.connections.byListener.tcp! >= 1 && self.connections.byListener.ws! >= 1)
    assert.ok(self.messages.in >= 2 && self.messages.out >= 2)

    await overWs.end()
    await eventually(async () => sample(await scrape(a), 'parley_mqtt_clients', { listener: 'ws' }) === 0, 10_000, 'the WebSocket client gone from the gauge')
  })

  it('the Grafana dashboard uses only metrics a node exposes', async () => {
    const dashboard = JSON.parse(readFileSync(join(ROOT, 'docs', 'grafana', 'parley-dashboard.json'), 'utf8')) as {
      schemaVersion: number
      __inputs: Array<{ name: string }>
      panels: Array<{ targets?: Array<{ expr: string; datasource: { uid: string } }> }>
    }
    assert.ok(dashboard.schemaVersion >= 36)
    assert.deepEqual(dashboard.__inputs.map((i) => i.name), ['DS_PROMETHEUS'])
    const targets = dashboard.panels.flatMap((p) => p.targets ?? [])
    assert.ok(targets.every((t) => t.datasource.uid === '${DS_PROMETHEUS}'))
    const families = new Set(targets.flatMap((t) => [...t.expr.matchAll(/\b((?:parley|nodejs|process)_[a-z0-9_]+)/g)].map((m) => m[1]!.replace(/_(bucket|count|sum)$/, ''))))
    // HELP and TYPE lines are written for every registered metric, with or without samples yet.
    const exposed = await scrape(a)
    const missing = [...families].filter((f) => !new RegExp(`^# TYPE ${f} `, 'm').test(exposed))
    assert.deepEqual(missing, [], 'metrics the dashboard queries but no node exposes')
  })
})
