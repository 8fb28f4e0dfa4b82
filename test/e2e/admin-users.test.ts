// Users and devices in `parley admin`, against a real two-node cluster (Redis, MongoDB shared by
// both nodes: keys, bans and revocations) with auth-jwt and the chat plugins, real mqtt.js devices
// on both nodes, and the CLI as a subprocess: users show (JSON and human), ban (every device closed
// on both nodes, reconnects refused with CONNACK 5, back after unban), bans that end by themselves,
// devices revoke (that device only; its old tokens refused with CONNACK 4, a new one accepted),
// and the CLI's errors and exit codes.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import mqtt, { type MqttClient } from 'mqtt'
import { AuthJwtConfig } from '../../plugins/auth-jwt/config.js'
import { mintToken } from '../../plugins/auth-jwt/keys.js'
import { adminCli, createKey } from '../helpers/admin.js'
import { eventually, startBroker, within, type BrokerProcess } from '../helpers/broker-process.js'
import { testDevice, type TestDevice } from '../helpers/device.js'
import { connackCode } from '../helpers/node.js'
import { mongoUrl, redisDb } from '../helpers/services.js'

const run = randomBytes(3).toString('hex')
const u = (name: string) => `${name}${run}`
const SECRET = randomBytes(32).toString('base64url')
const auth = AuthJwtConfig.parse({ hs256: { secret: SECRET } })
const WAIT = 15_000

/** A device as an app runs it: reconnecting by itself, also after a refused CONNECT. */
interface AppDevice {
  client: MqttClient
  /** CONNACK codes of refused reconnects, in order. */
  refusals: number[]
  closes: number
}

describe('parley admin users and devices on a two-node cluster', () => {
  let a: BrokerProcess
  let b: BrokerProcess
  let dir: string
  let operator: string
  let reader: string
  const clients: MqttClient[] = []
  const devices: TestDevice[] = []
  const urlOf = (n: BrokerProcess) => `mqtt://127.0.0.1:${n.ports.tcp}`
  const token = (user: string, device?: string) => mintToken(auth, dir, { userId: user, deviceId: device, ttlSeconds: 3600 })
  const connack = async (node: BrokerProcess, user: string, device: string, tok?: string) =>
    connackCode(urlOf(node), { clientId: `${user}:${device}`, username: user, password: tok ?? (await token(user, device)) })
  const appDevice = async (node: BrokerProcess, user: string, device: string): Promise<AppDevice> => {
    const password = await token(user, device)
    const client = mqtt.connect(urlOf(node), { clientId: `${user}:${device}`, username: user, password, reconnectPeriod: 250, reconnectOnConnackError: true, connectTimeout: 5000 })
    clients.push(client)
    const d: AppDevice = { client, refusals: [], closes: 0 }
    client.on('error', (err: Error & { code?: number }) => {
      if (typeof err.code === 'number') d.refusals.push(err.code)
    })
    client.on('close', () => d.closes++)
    await within(new Promise((resolve) => client.once('connect', resolve)), WAIT, `${user}:${device} connecting`)
    return d
  }
  const cli = (node: BrokerProcess, key: string | undefined, args: string[], env: NodeJS.ProcessEnv = {}) => adminCli(node.ports.ops!, key, args, env)

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'parley-admin-users-'))
    const config = join(dir, 'parley.yaml')
    writeFileSync(
      config,
      [
        'mqtt: { allowAnonymous: false }',
        `redis: { url: "${redisDb(41)}" }`,
        `mongo: { url: "${mongoUrl()}", database: parley_admin_users_${run} }`,
        'plugins:',
        '  - use: auth-jwt',
        `    config: { hs256: { secret: "${SECRET}" } }`,
        '  - protocol',
        '  - groups',
        '  - messages',
        '  - use: presence',
        '    config: { graceMs: 300, sweepMs: 200, batchMs: 50 }'
      ].join('\n')
    )
    ;[a, b] = await Promise.all([
      startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: 'users-a' } }),
      startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: 'users-b' } })
    ])
    operator = await createKey(a.ports.ops!, a.dataDir, 'operator', 'ops-test')
    reader = await createKey(a.ports.ops!, a.dataDir, 'read', 'reader-test')
  })
  after(async () => {
    clients.forEach((c) => c.end(true))
    devices.forEach((d) => d.client.end(true))
    await Promise.all([a?.stop(), b?.stop()])
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('users show: connected devices on both nodes, presence, groups and ban state, as JSON and for people', async () => {
    const [ann, bob] = [u('ann'), u('bob')]
    const phone = await testDevice(urlOf(a), ann, 'phone', { username: ann, password: await token(ann, 'phone') })
    const laptop = await testDevice(urlOf(b), ann, 'laptop', { username: ann, password: await token(ann, 'laptop') })
    const bobPhone = await testDevice(urlOf(b), bob, 'phone', { username: bob, password: await token(bob, 'phone') })
    devices.push(phone, laptop, bobPhone)
    const group = await phone.call<{ id: string }>('groups.create', { name: 'Ops', members: [bob] })

    type View = {
      user: string
      clients: Array<{ clientId: string; node: string }>
      missing: string[]
      facets: { auth: unknown; presence: { online: boolean; devices: string[] }; groups?: unknown; [name: string]: unknown }
    }
    let view: View | undefined
    await eventually(
      async () => {
        const r = await cli(b, reader, ['users', 'show', ann, '--json'])
        assert.equal(r.code, 0, r.stderr)
        view = r.json<View>()
        return view.facets.presence.devices.length === 2
      },
      WAIT,
      'both devices in presence'
    )
    assert.deepEqual(
      view!.clients.map((c) => [c.clientId, c.node]),
      [
        [`${ann}:laptop`, b.brokerId],
        [`${ann}:phone`, a.brokerId]
      ]
    )
    assert.deepEqual(view!.missing, [])
    assert.deepEqual(view!.facets.auth, { banned: false, revokedDevices: [] })
    assert.equal(view!.facets.presence.online, true)
    assert.deepEqual(view!.facets.presence.devices, ['laptop', 'phone'])

    const human = await cli(a, reader, ['users', 'show', ann])
    assert.equal(human.code, 0, human.stderr)
    assert.match(human.stdout, new RegExp(`^user:\\s+${ann}$`, 'm'))
    assert.match(human.stdout, /^banned:\s+no$/m)
    assert.match(human.stdout, /^presence:\s+online$/m)
    assert.match(human.stdout, /^last seen:\s+now$/m)
    assert.match(human.stdout, /DEVICE\s+CONNECTED\s+NODE\s+ADDRESS\s+PUSH\s+TOKENS REVOKED/)
    assert.match(human.stdout, new RegExp(`^\\s+laptop\\s+yes\\s+${b.brokerId}\\s+127\\.0\\.0\\.1`, 'm'))
    assert.match(human.stdout, new RegExp(`^\\s+phone\\s+yes\\s+${a.brokerId}\\s+127\\.0\\.0\\.1`, 'm'))
    // The groups plugin's section is its own engineers' work: when it is there, it is shown.
    if (view!.facets.groups !== undefined) assert.ok(human.stdout.includes(group.id) || human.stdout.includes('Ops'), `the group in:\n${human.stdout}`)

    // After the devices leave: offline, with the last seen time.
    await Promise.all([phone.end(), laptop.end()])
    await eventually(
      async () => (await cli(a, reader, ['users', 'show', ann, '--json'])).json<View>().facets.presence.online === false,
      WAIT,
      'offline after the grace period'
    )
    const offline = await cli(a, reader, ['users', 'show', ann])
    assert.match(offline.stdout, /^presence:\s+offline$/m)
    assert.match(offline.stdout, /^last seen:\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(.+ ago\)$/m)
    assert.match(offline.stdout, /^DEVICES\n {2}\(none known\)$/m, 'no source knows a device that left (no push registration, no revocation)')
  })

  it('users ban: devices on both nodes disconnected at once, reconnects refused with CONNACK 5 everywhere, back after unban', async () => {
    const [cat, dan] = [u('cat'), u('dan')]
    const onA = await appDevice(a, cat, 'phone')
    const onB = await appDevice(b, cat, 'tablet')
    const bystander = await appDevice(a, dan, 'phone')

    const banned = await cli(b, operator, ['users', 'ban', cat, '--reason', 'spam reports'])
    assert.equal(banned.code, 0, banned.stderr)
    assert.match(banned.stdout, new RegExp(`^${cat} banned until unbanned \\(spam reports\\)$`, 'm'))
    assert.match(banned.stdout, /^2 connections closed: /m)
    assert.ok(banned.stdout.includes(`${cat}:phone (${a.brokerId})`) && banned.stdout.includes(`${cat}:tablet (${b.brokerId})`), banned.stdout)

    // The apps keep reconnecting; each attempt is refused with 5, on both nodes.
    await eventually(() => onA.refusals.includes(5) && onB.refusals.includes(5), WAIT, 'reconnects refused with CONNACK 5')
    assert.ok(onA.refusals.every((c) => c === 5) && onB.refusals.every((c) => c === 5), `only CONNACK 5: ${onA.refusals.join(',')} ${onB.refusals.join(',')}`)
    assert.equal(await connack(a, cat, 'laptop'), 5, 'a new device on a')
    assert.equal(await connack(b, cat, 'laptop'), 5, 'a new device on b')
    assert.ok(bystander.client.connected && bystander.closes === 0, 'another user is untouched')

    const shown = await cli(a, reader, ['users', 'show', cat, '--json'])
    const authFacet = shown.json<{ facets: { auth: { banned: boolean; ban: { reason: string; by: string } } } }>().facets.auth
    assert.equal(authFacet.banned, true)
    assert.equal(authFacet.ban.reason, 'spam reports')
    assert.equal(authFacet.ban.by, 'ops-test')
    assert.match((await cli(a, reader, ['users', 'show', cat])).stdout, /^banned:\s+YES, since .+, until unbanned, by ops-test, reason: spam reports$/m)
    const bans = await cli(b, reader, ['users', 'bans', '--json'])
    assert.ok(bans.json<Array<{ user: string }>>().some((x) => x.user === cat))
    assert.match((await cli(b, reader, ['users', 'bans'])).stdout, new RegExp(`^${cat}\\s+\\S+Z\\s+unbanned\\s+ops-test\\s+spam reports$`, 'm'))

    const audit = () => [...a.logs, ...b.logs].find((l) => l.msg === 'admin audit' && (l.audit as { action?: string; user?: string }).user === cat)
    await eventually(() => Boolean(audit()), 5000, 'the audit line')
    assert.deepEqual(
      { ...(audit()!.audit as Record<string, unknown>) },
      { key: operator.split('_')[1], keyName: 'ops-test', action: 'POST /users/:user/ban', params: { user: cat }, status: 200, user: cat, until: null, reason: 'spam reports', replaced: false, disconnected: 2, missing: [] }
    )
    const metrics = await (await fetch(`http://127.0.0.1:${a.ports.ops}/metrics`)).text()
    assert.match(metrics, /^parley_auth_refusals_total\{reason="banned"\} [1-9]\d*$/m)
    assert.match(metrics, /^parley_auth_disconnects_total\{reason="banned"\} 1$/m)

    const unbanned = await cli(a, operator, ['users', 'unban', cat])
    assert.equal(unbanned.code, 0, unbanned.stderr)
    assert.match(unbanned.stdout, new RegExp(`^${cat} unbanned \\(was banned since .+, by ops-test, reason: spam reports\\)$`, 'm'))
    await eventually(() => onA.client.connected && onB.client.connected, WAIT, 'both apps back by themselves')
    const again = await cli(a, operator, ['users', 'unban', cat])
    assert.equal(again.code, 3, 'not banned: not found')
    assert.match(again.stderr, /is not banned/)
  })

  it('users ban --for: the ban ends by itself', async () => {
    const eve = u('eve')
    const phone = await appDevice(b, eve, 'phone')
    const banned = await cli(a, operator, ['users', 'ban', eve, '--for', '3s', '--json'])
    assert.equal(banned.code, 0, banned.stderr)
    const ban = banned.json<{ ban: { since: number; until: number }; disconnected: Array<{ clientId: string; node: string }> }>()
    assert.equal(ban.ban.until - ban.ban.since, 3000)
    assert.deepEqual(ban.disconnected, [{ clientId: `${eve}:phone`, node: b.brokerId }])
    await eventually(() => phone.refusals.includes(5), WAIT, 'refused while banned')
    await eventually(() => phone.client.connected, WAIT + 3000, 'back once the ban is over, without unban')
    assert.ok(Date.now() >= ban.ban.until, 'not before the end')
    assert.equal(await connack(a, eve, 'tablet'), 0)
  })

  it('devices revoke: that device only is disconnected, its old tokens refused with CONNACK 4 on every node, a newer token accepted', async () => {
    const fay = u('fay')
    const oldToken = await token(fay, 'phone')
    const phone = await appDevice(a, fay, 'phone')
    const tablet = await appDevice(b, fay, 'tablet')
    const revoked = await cli(b, operator, ['devices', 'revoke', fay, 'phone', '--json'])
    assert.equal(revoked.code, 0, revoked.stderr)
    const result = revoked.json<{ revocation: { revokedAt: number; device: string }; disconnected: Array<{ clientId: string; node: string }>; missing: string[] }>()
    assert.deepEqual(result.disconnected, [{ clientId: `${fay}:phone`, node: a.brokerId }])
    assert.deepEqual(result.missing, [])
    await eventually(() => phone.refusals.includes(4), WAIT, "the app's reconnect with its old token refused with 4")
    assert.ok(tablet.client.connected && tablet.closes === 0, 'the other device stays')
    assert.equal(await connack(a, fay, 'phone', oldToken), 4)
    assert.equal(await connack(b, fay, 'phone', oldToken), 4, 'on the other node too')
    phone.client.end(true)
    // Checked before any new connection of the phone: presence may keep a device that connects and
    // leaves at once (reported: its clientReady can come after its clientDisconnect).
    let shown = ''
    await eventually(
      async () => /^\s+phone\s+no\s+-\s+-\s+-\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m.test((shown = (await cli(a, reader, ['users', 'show', fay])).stdout)),
      WAIT,
      'the phone listed as revoked and not connected'
    ).catch((err: Error) => {
      throw new Error(`${err.message}:\n${shown}`)
    })

    // A re-login: a token issued after the revocation (iat counts seconds, so from the next one).
    await eventually(() => Math.floor(Date.now() / 1000) > Math.floor(result.revocation.revokedAt / 1000), 5000, 'the next second')
    assert.equal(await connack(a, fay, 'phone'), 0, 'a new token works')
    assert.equal(await connack(b, fay, 'phone'), 0)

    const humanRevoke = await cli(a, operator, ['devices', 'revoke', fay, 'tablet'])
    assert.equal(humanRevoke.code, 0, humanRevoke.stderr)
    assert.match(humanRevoke.stdout, new RegExp(`^${fay}:tablet: tokens issued up to \\S+Z revoked\\n1 connection closed: ${fay}:tablet \\(${b.brokerId}\\)\\n$`))
    const metrics = await (await fetch(`http://127.0.0.1:${a.ports.ops}/metrics`)).text()
    assert.match(metrics, /^parley_auth_refusals_total\{reason="revoked"\} [1-9]\d*$/m)
  })

  it('errors: ids checked before any request (exit 2), a read key may not ban (exit 4), help', async () => {
    // Nothing listens there: a request would end in exit 5, so exit 2 proves none was made.
    const nowhere = { PARLEY_ADMIN_URL: 'http://127.0.0.1:1' }
    for (const args of [
      ['users', 'show', 'not valid'],
      ['users', 'ban', 'a:b'],
      ['users', 'unban', 'x'.repeat(65)],
      ['devices', 'revoke', 'ann', 'ph/one'],
      ['users', 'ban', 'ann', '--for', 'forever'],
      ['users', 'ban', 'ann', '--reason', '']
    ]) {
      const r = await cli(a, operator, args, nowhere)
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
    }
    assert.match((await cli(a, operator, ['users', 'show', 'not valid'], nowhere)).stderr, /user "not valid": expected 1-64 characters/)
    assert.equal((await cli(a, operator, ['devices', 'revoke', 'ann'])).code, 2, 'a missing argument')

    const denied = await cli(a, reader, ['users', 'ban', u('gus')])
    assert.equal(denied.code, 4)
    assert.match(denied.stderr, /scope read; POST \/users\/:user\/ban needs operator/)
    assert.equal((await cli(a, reader, ['devices', 'revoke', u('gus'), 'phone'])).code, 4)
    assert.equal(await connack(a, u('gus'), 'phone'), 0, 'nothing happened')

    const help = await cli(a, undefined, ['users', 'ban', '--help'])
    assert.equal(help.code, 0)
    assert.match(help.stdout, /--for <duration>/)
    assert.match(help.stdout, /CONNACK\s+5/)
    const devicesHelp = await cli(a, undefined, ['devices', '--help'])
    assert.match(devicesHelp.stdout, /revoke/)
  })
})
