// Bans and device revocations at authenticate, on one in-process node with the embedded store,
// driven through the plugin's admin routes: who is refused with which CONNACK, who is disconnected,
// what the metrics count, and the `auth` section of the user view.
import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import { SignJWT } from 'jose'
import mqtt, { type MqttClient } from 'mqtt'
import { adminRequest, createKey } from '../../../test/helpers/admin.js'
import { eventually, within } from '../../../test/helpers/broker-process.js'
import { connackCode, startNode, type TestNode } from '../../../test/helpers/node.js'
import { AuthJwtConfig } from '../config.js'
import { loadHs256Secret, mintToken } from '../keys.js'

const config = AuthJwtConfig.parse({})

describe('auth-jwt bans and revoked devices', () => {
  let t: TestNode
  let dataDir: string
  let operator: string
  let reader: string
  const open: MqttClient[] = []

  const token = (userId: string, deviceId?: string) => mintToken(config, dataDir, { userId, deviceId, ttlSeconds: 600 })
  const connack = async (user: string, device: string, tok?: string) =>
    connackCode(t.mqttUrl, { clientId: `${user}:${device}`, username: user, password: tok ?? (await token(user, device)) })
  /** A connected device and a promise of its connection's end (no reconnects). */
  const connect = async (user: string, device: string) => {
    const client = await mqtt.connectAsync(t.mqttUrl, { clientId: `${user}:${device}`, username: user, password: await token(user, device), reconnectPeriod: 0 }, false)
    client.on('error', () => undefined)
    open.push(client)
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
    return { client, closed }
  }
  const api = <T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, key = operator) => adminRequest<T>(t.ops, key, method, path, body)
  const metric = async (name: string, reason: string) => {
    const text = await (await fetch(`http://127.0.0.1:${t.ops}/metrics`)).text()
    const m = new RegExp(`^parley_${name}\\{reason="${reason}"\\} (\\d+)$`, 'm').exec(text)
    return m ? Number(m[1]) : 0
  }

  before(async () => {
    t = await startNode({ mqtt: { allowAnonymous: false }, plugins: ['auth-jwt'] })
    dataDir = t.node.config.dataDir
    operator = await createKey(t.ops, dataDir, 'operator')
    reader = await createKey(t.ops, dataDir, 'read')
  })
  after(async () => {
    open.forEach((c) => c.end(true))
    await t?.stop()
  })

  it('a ban closes every device of the user at once and refuses CONNECT with 5 until unban; others are untouched', async () => {
    const phone = await connect('ann', 'phone')
    const laptop = await connect('ann', 'laptop')
    const other = await connect('bob', 'phone')
    const banned = await api<{ ban: { until?: number; reason: string; by: string }; disconnected: Array<{ clientId: string }>; missing: string[] }>('POST', '/users/ann/ban', { reason: 'spam' })
    assert.equal(banned.status, 200, JSON.stringify(banned.body))
    assert.deepEqual(banned.body.disconnected.map((d) => d.clientId), ['ann:laptop', 'ann:phone'])
    assert.deepEqual(banned.body.missing, [])
    assert.equal(banned.body.ban.reason, 'spam')
    assert.equal(banned.body.ban.by, 'test-operator')
    assert.equal(banned.body.ban.until, undefined)
    await within(Promise.all([phone.closed, laptop.closed]), 5000, 'the banned devices disconnected')
    assert.equal(await connack('ann', 'phone'), 5, 'a valid token of a banned user: not authorized')
    assert.equal(await connack('ann', 'tablet'), 5, 'any device')
    assert.equal(await connack('ann', 'phone', 'not-a-jwt'), 4, 'a bad token is still a bad token')
    assert.ok(other.client.connected, 'bob stays connected')
    assert.equal(await connack('bob', 'tablet'), 0)
    assert.equal(await metric('auth_refusals_total', 'banned'), 2)
    assert.equal(await metric('auth_disconnects_total', 'banned'), 2)

    const view = await api<{ facets: { auth: unknown } }>('GET', '/users/ann', undefined, reader)
    assert.deepEqual(view.body.facets.auth, { banned: true, ban: { ...(view.body.facets.auth as { ban: object }).ban, user: 'ann', reason: 'spam', by: 'test-operator' }, revokedDevices: [] })
    const list = await api<{ bans: Array<{ user: string }> }>('GET', '/bans', undefined, reader)
    assert.deepEqual(list.body.bans.map((b) => b.user), ['ann'])

    const unbanned = await api<{ unbanned: { reason: string } }>('DELETE', '/users/ann/ban')
    assert.equal(unbanned.status, 200)
    assert.equal(unbanned.body.unbanned.reason, 'spam')
    assert.equal(await connack('ann', 'phone'), 0, 'back at once')
    assert.equal((await api('DELETE', '/users/ann/ban')).status, 404, 'not banned any more')
    assert.deepEqual((await api<{ facets: { auth: unknown } }>('GET', '/users/ann', undefined, reader)).body.facets.auth, { banned: false, revokedDevices: [] })
  })

  it('a ban for a duration ends by itself; banning again replaces the ban', async () => {
    await api('POST', '/users/cy/ban', { reason: 'first' })
    const replaced = await api<{ ban: { since: number; until: number }; replaced: { reason: string } }>('POST', '/users/cy/ban', { duration: '2s' })
    assert.equal(replaced.body.replaced.reason, 'first')
    assert.equal(replaced.body.ban.until - replaced.body.ban.since, 2000)
    assert.equal(await connack('cy', 'phone'), 5)
    await eventually(() => Date.now() > replaced.body.ban.until, 10_000, 'the ban over')
    assert.equal(await connack('cy', 'phone'), 0, 'accepted once the ban is over, without unban')
    assert.equal((await api('DELETE', '/users/cy/ban')).status, 404, 'an ended ban is not in force')
  })

  it('a revocation closes that device and refuses its older tokens with 4; a token issued later works', async () => {
    const phone = await connect('dee', 'phone')
    const tablet = await connect('dee', 'tablet')
    const oldPhoneToken = await token('dee', 'phone')
    const anyDevice = await token('dee') // no did: valid for any device of dee
    const revoked = await api<{ revocation: { revokedAt: number; by: string }; disconnected: Array<{ clientId: string }> }>('POST', '/users/dee/devices/phone/revoke')
    assert.equal(revoked.status, 200, JSON.stringify(revoked.body))
    assert.deepEqual(revoked.body.disconnected.map((d) => d.clientId), ['dee:phone'])
    await within(phone.closed, 5000, 'the revoked device disconnected')
    assert.ok(tablet.client.connected, 'the other device stays')
    assert.equal(await connack('dee', 'phone', oldPhoneToken), 4, 'an older token: bad credentials')
    assert.equal(await connack('dee', 'phone', anyDevice), 4, 'also a device-less token, on that device')
    assert.equal(await connack('dee', 'tablet', anyDevice), 0, 'which still works on the other devices')
    const secret = loadHs256Secret(config, dataDir)!
    const noIat = await new SignJWT({ sub: 'dee' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('parley').setAudience('parley').setExpirationTime('5m').sign(secret)
    assert.equal(await connack('dee', 'phone', noIat), 4, 'a token without iat cannot be newer than the revocation')
    const ahead = await new SignJWT({ sub: 'dee' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('parley').setAudience('parley').setIssuedAt(Math.floor(Date.now() / 1000) + 3600).setExpirationTime('2h').sign(secret)
    assert.equal(await connack('dee', 'tablet', ahead), 4, 'a token dated ahead of the clock (it would outlive revocations)')

    // iat has second precision: a token of the revocation's own second is refused too.
    const second = Math.floor(revoked.body.revocation.revokedAt / 1000)
    await eventually(() => Math.floor(Date.now() / 1000) > second, 5000, 'the next second')
    const relogin = await connect('dee', 'phone')
    assert.ok(relogin.client.connected, 'a token issued after the revocation works')
    assert.equal(await metric('auth_refusals_total', 'revoked'), 3)
    assert.equal(await metric('auth_disconnects_total', 'revoked'), 1)
    const view = await api<{ facets: { auth: { revokedDevices: unknown } } }>('GET', '/users/dee', undefined, reader)
    assert.deepEqual(view.body.facets.auth.revokedDevices, [{ device: 'phone', revokedAt: revoked.body.revocation.revokedAt, by: 'test-operator' }])
    // Revoking again closes the re-logged-in device: its token is now older than the new revocation.
    const again = await api<{ disconnected: Array<{ clientId: string }> }>('POST', '/users/dee/devices/phone/revoke')
    assert.deepEqual(again.body.disconnected.map((d) => d.clientId), ['dee:phone'])
  })

  it('scopes and validation: read keys may not ban or revoke; bad ids and durations are refused', async () => {
    assert.equal((await api('POST', '/users/eve/ban', {}, reader)).status, 403)
    assert.equal((await api('POST', '/users/eve/devices/phone/revoke', undefined, reader)).status, 403)
    assert.equal((await api('DELETE', '/users/eve/ban', undefined, reader)).status, 403)
    assert.equal((await api('POST', '/users/e%20ve/ban', {})).status, 400)
    assert.equal((await api('POST', '/users/eve/ban', { duration: 'forever' })).status, 400)
    assert.equal((await api('POST', '/users/eve/ban', { reason: '' })).status, 400)
    assert.equal((await api('POST', '/users/eve/ban', { until: 5 })).status, 400, 'unknown fields')
    assert.equal(await connack('eve', 'phone'), 0, 'nothing was banned')
  })
})
