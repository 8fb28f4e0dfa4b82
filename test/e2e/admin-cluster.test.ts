// The admin API's foundation against a real two-node cluster (Redis, MongoDB), driven through the
// `parley admin` CLI as operators run it: API keys (bootstrap secret, scopes, revocation), the
// audit log, the OpenAPI document, status, nodes, config show, and draining a node.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import { BARE, eventually, startBroker, within, type BrokerProcess } from '../helpers/broker-process.js'
import { adminCli, adminRequest, bootstrapSecret, createKey } from '../helpers/admin.js'
import { connectClient } from '../helpers/node.js'
import { mongoUrl, redisDb } from '../helpers/services.js'

const uid = () => randomBytes(4).toString('hex')
/** The secret part of a key `pk_<16 hex id>_<secret>` (the secret itself may hold '_'). */
const secretOf = (key: string) => key.slice('pk_'.length + 16 + 1)
const B_SECRET = randomBytes(24).toString('base64url')

describe('admin API and CLI: keys, status, nodes, config, drain', () => {
  let a: BrokerProcess
  let b: BrokerProcess
  let adminKey: string
  let readKey: string
  let operatorKey: string
  before(async () => {
    const env = { ...BARE, REDIS_URL: redisDb(44), MONGO_URL: mongoUrl(), MONGO_DATABASE: `parley_admin_${uid()}` }
    ;[a, b] = await Promise.all([
      startBroker({ env: { ...env, PARLEY_NODE_NAME: 'adm-a' } }),
      // A configured bootstrap secret (node a generates its own): config show must hide it.
      startBroker({ env: { ...env, PARLEY_NODE_NAME: 'adm-b', PARLEY_ADMIN__BOOTSTRAP_SECRET: B_SECRET } })
    ])
    adminKey = await createKey(a.ports.ops!, a.dataDir, 'admin')
    readKey = await createKey(a.ports.ops!, a.dataDir, 'read')
    operatorKey = await createKey(a.ports.ops!, a.dataDir, 'operator')
  })
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()])
  })

  it('keys: the bootstrap secret creates keys; a key works on every node; revoked keys stop working', async () => {
    const created = await adminCli(a.ports.ops!, undefined, ['keys', 'create', '--name', 'ci-bot', '--scope', 'read'], {
      PARLEY_ADMIN_BOOTSTRAP_SECRET: bootstrapSecret(a.dataDir)
    })
    assert.equal(created.code, 0, created.stderr)
    const key = created.stdout.trim()
    assert.match(key, /^pk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/)
    assert.match(created.stderr, /cannot be shown again/)
    // Keys live in MongoDB: node b knows a key created on node a.
    assert.equal((await adminCli(b.ports.ops!, key, ['nodes'])).code, 0)

    const listed = await adminCli(a.ports.ops!, adminKey, ['keys', 'list', '--json'])
    const keys = listed.json<Array<{ id: string; name: string; scope: string }>>()
    const id = key.split('_')[1]!
    assert.deepEqual(keys.find((k) => k.id === id), { ...keys.find((k) => k.id === id), name: 'ci-bot', scope: 'read' })
    assert.ok(!listed.stdout.includes(secretOf(key)), 'never a secret in a listing')

    const revoked = await adminCli(b.ports.ops!, adminKey, ['keys', 'revoke', id])
    assert.equal(revoked.code, 0, revoked.stderr)
    const after = await adminCli(a.ports.ops!, key, ['nodes'])
    assert.equal(after.code, 4, 'a revoked key is refused on every node')
    assert.match(after.stderr, /unknown, revoked or expired API key/)
    assert.equal((await adminCli(a.ports.ops!, adminKey, ['keys', 'revoke', id])).code, 3, 'revoking twice: not found')
    assert.equal((await adminCli(a.ports.ops!, adminKey, ['keys', 'revoke', 'nothex'])).code, 2, 'a malformed id never reaches the node')
  })

  it('keys: scopes are enforced, and the bootstrap secret manages keys only', async () => {
    const denied = await adminCli(a.ports.ops!, readKey, ['config', 'show'])
    assert.equal(denied.code, 4)
    assert.match(denied.stderr, /scope read; GET \/config needs admin/)
    assert.equal((await adminCli(a.ports.ops!, operatorKey, ['keys', 'list'])).code, 4, 'an operator key cannot list keys')
    const viaBootstrap = await adminRequest(a.ports.ops!, bootstrapSecret(a.dataDir), 'GET', '/nodes')
    assert.equal(viaBootstrap.status, 403)
    assert.match(JSON.stringify(viaBootstrap.body), /only manages API keys/)
    const noKey = await adminCli(a.ports.ops!, undefined, ['status'])
    assert.equal(noKey.code, 4)
    assert.match(noKey.stderr, /no API key/)
    const bad = await adminRequest(a.ports.ops!, 'pk_0000000000000000_' + 'x'.repeat(43), 'GET', '/status')
    assert.deepEqual(bad, { status: 401, body: { error: { code: 'unauthorized', message: 'unknown, revoked or expired API key' } } })
    const invalid = await adminRequest(a.ports.ops!, adminKey, 'POST', '/keys', { name: 'has space', scope: 'root' })
    assert.equal(invalid.status, 400)
    assert.deepEqual(
      (invalid.body as { error: { issues: Array<{ path: string }> } }).error.issues.map((i) => i.path).sort(),
      ['body.name', 'body.scope']
    )
    const expiring = await adminCli(a.ports.ops!, adminKey, ['keys', 'create', '-n', 'short', '-s', 'read', '--ttl', 'soon'])
    assert.equal(expiring.code, 2, 'an invalid --ttl is a usage error')
    assert.match(expiring.stderr, /expected a duration/)
    assert.equal((await adminRequest(a.ports.ops!, adminKey, 'GET', '/no/such/route')).status, 404)
  })

  it('audit: every change is a log line naming the key, and no secret is ever logged', async () => {
    const key = await createKey(a.ports.ops!, a.dataDir, 'read', 'audited')
    await eventually(() => a.logs.some((l) => l.msg === 'admin audit' && JSON.stringify(l).includes('audited')), 15_000, 'audit line')
    const line = a.logs.find((l) => l.msg === 'admin audit' && JSON.stringify(l).includes('audited'))!
    assert.deepEqual(
      { ...(line.audit as Record<string, unknown>) },
      { key: 'bootstrap', keyName: 'bootstrap secret', action: 'POST /keys', params: {}, status: 201, created: key.split('_')[1], scope: 'read', name: 'audited' }
    )
    const everything = [...a.logs.map((l) => JSON.stringify(l)), ...a.stderr].join('\n')
    for (const secret of [key, adminKey, readKey, operatorKey].map(secretOf)) assert.ok(!everything.includes(secret), 'a key secret in the logs')
    assert.ok(!everything.includes(bootstrapSecret(a.dataDir)), 'the bootstrap secret in the logs')
  })

  it('openapi: every route is documented with its scope and schemas', async () => {
    const doc = (await (await fetch(`http://127.0.0.1:${a.ports.ops}/admin/v1/openapi.json`)).json()) as {
      openapi: string
      paths: Record<string, Record<string, { 'x-required-scope': string; responses: Record<string, unknown>; requestBody?: unknown }>>
    }
    assert.equal(doc.openapi, '3.1.0')
    assert.equal(doc.paths['/admin/v1/keys']!.post!['x-required-scope'], 'admin')
    assert.ok(doc.paths['/admin/v1/keys']!.post!.requestBody, 'request body schema')
    assert.equal(doc.paths['/admin/v1/nodes/{node}/drain']!.post!['x-required-scope'], 'operator')
    assert.ok(doc.paths['/admin/v1/status']!.get!.responses['200'])
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) assert.ok(['read', 'operator', 'admin'].includes(op['x-required-scope']), `${method} ${path} has a scope`)
    }
  })

  it('status and nodes: both nodes, their clients, every backend ready', async () => {
    const clients = [await connectClient(`mqtt://127.0.0.1:${a.ports.tcp}`, { clientId: `s-${uid()}` }), await connectClient(`mqtt://127.0.0.1:${b.ports.tcp}`, { clientId: `s-${uid()}` })]
    try {
      type Status = { ready: boolean; clients: number; nodes: number; readiness: Array<{ node: string; ready: boolean; checks: Record<string, { ok: boolean }> }>; missing: string[] }
      let status: Status | undefined
      // The view is rewritten every heartbeat, and a check slower than 1.5 s (a loaded machine)
      // counts as not ready: ask until both settle, within a bound.
      await eventually(
        async () => {
          status = (await adminCli(b.ports.ops!, readKey, ['status', '--json'])).json<Status>()
          return status.clients >= 2 && status.ready
        },
        45_000,
        'both clients in the view, and every check ready'
      )
      assert.ok(status)
      assert.equal(status.ready, true)
      assert.equal(status.nodes, 2)
      assert.deepEqual(status.missing, [])
      assert.deepEqual(status.readiness.map((r) => r.node).sort(), [a.brokerId, b.brokerId].sort())
      for (const r of status.readiness) assert.ok(r.checks.redis?.ok && r.checks.mongo?.ok && r.checks.cluster?.ok, JSON.stringify(r))
      const human = await adminCli(a.ports.ops!, readKey, ['status'])
      assert.equal(human.code, 0)
      assert.match(human.stdout, /cluster:\s+ready/)
      const nodes = await adminCli(a.ports.ops!, readKey, ['nodes'])
      assert.equal(nodes.code, 0, nodes.stderr)
      assert.match(nodes.stdout, /^NODE\s+NAME\s+HOST\s+PID\s+CLIENTS\s+STATE/)
      assert.match(nodes.stdout, new RegExp(`${a.brokerId} \\*\\s+adm-a`))
      assert.match(nodes.stdout, new RegExp(`${b.brokerId}\\s+adm-b`))
    } finally {
      clients.forEach((c) => c.end(true))
    }
  })

  it('config show: a node\'s effective configuration, redacted, from any node', async () => {
    const own = (await adminCli(a.ports.ops!, adminKey, ['config', 'show', '--json'])).json<{ node: string; config: { nodeName: string } }>()
    assert.equal(own.node, a.brokerId)
    assert.equal(own.config.nodeName, 'adm-a')
    const other = await adminCli(a.ports.ops!, adminKey, ['config', 'show', '--node', b.brokerId, '--json'])
    const answer = other.json<{ node: string; config: { nodeName: string; admin: { bootstrapSecret?: string } } }>()
    assert.equal(answer.config.nodeName, 'adm-b', 'asked through node a, answered by node b')
    assert.ok(answer.config.admin.bootstrapSecret, 'the secret setting is shown as set')
    assert.ok(!other.stdout.includes(B_SECRET), 'but never its value')
  })

  it('drain: refuses an unknown node and the last accepting node; drains a node, whose clients move, and it exits 0', async () => {
    const unknown = await adminCli(a.ports.ops!, operatorKey, ['drain', 'no-such-node'])
    assert.equal(unknown.code, 3)
    assert.equal((await adminCli(a.ports.ops!, readKey, ['drain', b.brokerId])).code, 4, 'draining needs the operator scope')

    const moving = await connectClient(`mqtt://127.0.0.1:${b.ports.tcp}`, { clientId: `mover-${uid()}`, reconnectPeriod: 0 })
    const closed = new Promise<void>((resolve) => moving.once('close', () => resolve()))
    const drained = await adminCli(a.ports.ops!, operatorKey, ['drain', 'adm-b', '--wait-timeout', '60000'])
    assert.equal(drained.code, 0, drained.stderr)
    assert.match(drained.stdout, /drained and left the cluster/)
    assert.match(drained.stderr, /draining \d+ clients/, 'progress on stderr')
    await within(closed, 30_000, 'the drained node closing its client')
    assert.equal(await within(b.exited, 30_000, 'the drained node exiting'), 0)
    const audit = a.logs.find((l) => l.msg === 'admin audit' && (l.audit as { action?: string }).action === 'POST /nodes/:node/drain' && (l.audit as { status?: number }).status === 202)
    assert.ok(audit, 'the drain is audited')

    const last = await adminCli(a.ports.ops!, operatorKey, ['drain', a.brokerId])
    assert.equal(last.code, 6, 'the only accepting node is not drained')
    assert.match(last.stderr, /only node accepting/)
  })
})
