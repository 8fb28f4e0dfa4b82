// Push end to end on one in-process node (embedded stores, embedded queue) with real mqtt.js
// devices, driving the real @parse/node-apn and firebase-admin against local fakes that speak
// the real protocols (fakes/apns-fake.ts: HTTP/2 + TLS, provider JWT verified; fakes/fcm-fake.ts:
// OAuth token endpoint + messages:send). Waits are bounded; nothing asserts how fast anything is.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { rmSync } from 'node:fs'
import { after, before, describe, it } from 'node:test'
import type { MessageEnvelope } from '../../../schemas/protocol.js'
import { adminCli, adminRequest, createKey } from '../../../test/helpers/admin.js'
import { eventually } from '../../../test/helpers/broker-process.js'
import { testDevice, type TestDevice } from '../../../test/helpers/device.js'
import { startNode, type TestNode } from '../../../test/helpers/node.js'
import { startApnsFake, type ApnsFake } from './fakes/apns-fake.js'
import { fakeProviderConfig, makeTestCredentials, type TestCredentials } from './fakes/certs.js'
import { startFcmFake, type FcmFake } from './fakes/fcm-fake.js'

const GRACE_MS = 3000
/** Long enough for a push that was going to be sent to have been sent (grace + polls + a send). */
const SETTLE_MS = GRACE_MS + 1500

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const hexToken = () => randomBytes(32).toString('hex')

// The cases use their own users and tokens, so they run side by side.
describe('push: APNs and FCM for offline devices', { concurrency: true }, () => {
  let creds: TestCredentials
  let apns: ApnsFake
  let fcm: FcmFake
  let node: TestNode
  const devices: TestDevice[] = []
  const run = randomBytes(2).toString('hex')
  const u = (name: string) => `${name}${run}`

  const device = async (user: string, id = 'phone') => {
    const d = await testDevice(node.mqttUrl, user, id, { reconnectPeriod: 0 })
    d.client.on('error', () => undefined)
    devices.push(d)
    return d
  }
  /** A device that registers for pushes and goes offline. */
  const offlineApns = async (user: string, id = 'phone', extra: object = {}) => {
    const token = hexToken()
    const d = await device(user, id)
    await d.call('push.register', { provider: 'apns', token, environment: 'sandbox', ...extra })
    await d.end()
    return token
  }
  const offlineFcm = async (user: string, id = 'pixel', extra: object = {}) => {
    const token = `fcm-${randomBytes(16).toString('hex')}:APA91b${randomBytes(8).toString('hex')}`
    const d = await device(user, id)
    await d.call('push.register', { provider: 'fcm', token, ...extra })
    await d.end()
    return token
  }
  const carbonOf = (d: TestDevice, cmid: string) => d.messages.find((m: MessageEnvelope) => m.cmid === cmid)
  const aps = (r: { payload: Record<string, unknown> }) => r.payload.aps as Record<string, unknown>
  const parley = (r: { payload: Record<string, unknown> }) => r.payload.parley as Record<string, unknown>

  before(async () => {
    creds = makeTestCredentials()
    apns = await startApnsFake({ cert: creds.cert, key: creds.key, publicKey: creds.apns.publicKey, keyId: creds.apns.keyId, teamId: creds.apns.teamId })
    fcm = await startFcmFake({ cert: creds.cert, key: creds.key, publicKey: creds.fcm.publicKey, projectId: creds.fcm.projectId, clientEmail: creds.fcm.clientEmail })
    node = await startNode({
      plugins: [
        'protocol',
        'groups',
        'messages',
        'presence',
        {
          use: 'push',
          config: {
            graceMs: GRACE_MS,
            worker: { pollMs: 50 },
            // Short back-off: a retry that came before the provider's Retry-After would show.
            retry: { baseMs: 100, maxMs: 400, maxAttempts: 5 },
            rateLimit: { perMinute: 600, burst: 20 },
            ...fakeProviderConfig(creds, { apns: apns.port, fcm: fcm.port })
          }
        }
      ]
    })
  })

  after(async () => {
    devices.forEach((d) => d.client.end(true))
    await node?.stop()
    await apns?.close()
    await fcm?.close()
    if (creds) rmSync(creds.dir, { recursive: true, force: true })
  })

  it('pushes exactly once to each offline device (APNs alert, FCM data message), with a generic text by default', async () => {
    const [alice, bob] = [u('alice'), u('bob')]
    const phone = await offlineApns(bob)
    const pixel = await offlineFcm(bob)
    const a = await device(alice)
    await a.send({ dm: bob }, { cmid: 'once-1', body: 'the secret plan' })
    await eventually(() => apns.accepted(phone).length === 1 && fcm.accepted(pixel).length === 1, GRACE_MS + 8000, 'one push each')
    await sleep(1500)
    assert.equal(apns.requests.filter((r) => r.token === phone).length, 1, 'exactly one APNs request')
    assert.equal(fcm.requests.filter((r) => r.token === pixel).length, 1, 'exactly one FCM request')

    const id = carbonOf(a, 'once-1')?.id
    assert.ok(id)
    const [ios] = apns.accepted(phone)
    assert.deepEqual(aps(ios!).alert, { body: 'New message' }, 'no preview unless the device asks')
    assert.equal(aps(ios!).badge, 1)
    assert.equal(aps(ios!)['mutable-content'], 1)
    assert.equal(typeof aps(ios!)['thread-id'], 'string')
    assert.deepEqual(parley(ios!), { type: 'message', conversation: { kind: 'dm', id: alice }, id, seq: 1, count: 1 })
    assert.equal(ios!.headers['apns-collapse-id'], aps(ios!)['thread-id'])
    assert.equal(ios!.headers['apns-push-type'], 'alert')
    assert.equal(ios!.headers['apns-priority'], '10')
    assert.equal(ios!.headers['apns-topic'], 'com.example.chat')
    assert.ok(!JSON.stringify(ios!.payload).includes('secret'), 'the text never leaves the server')

    const [android] = fcm.accepted(pixel)
    const data = android!.message.data as Record<string, string>
    assert.equal(data.messageId, id)
    assert.equal(data.conversationId, alice)
    assert.equal(data.body, 'New message')
    assert.equal(data.generic, '1')
    assert.deepEqual(android!.message.android, { priority: 'high', ttl: '86400s', collapse_key: aps(ios!)['thread-id'] })
    assert.equal(android!.message.notification, undefined, 'a data message')
    assert.ok(!JSON.stringify(android!.message).includes('secret'))
  })

  it('sends nothing to a device that is online', async () => {
    const [alice, bob] = [u('alice2'), u('bob2')]
    const token = hexToken()
    const b = await device(bob)
    await b.call('push.register', { provider: 'apns', token })
    const a = await device(alice)
    await a.send({ dm: bob }, { cmid: 'online-1', body: 'hi' })
    await eventually(() => b.messages.length === 1, 5000, 'the live delivery')
    await sleep(SETTLE_MS)
    assert.equal(apns.requests.filter((r) => r.token === token).length, 0)
  })

  it('cancels the push when the device reconnects within the grace period', async () => {
    const [alice, bob] = [u('alice3'), u('bob3')]
    const token = await offlineApns(bob)
    const a = await device(alice)
    await a.send({ dm: bob }, { cmid: 'cancel-1', body: 'hi' })
    const back = await device(bob) // well within the grace period
    await back.end()
    await sleep(SETTLE_MS)
    assert.equal(apns.requests.filter((r) => r.token === token).length, 0, 'cancelled')

    // Offline again: the next message is pushed, and only it.
    await a.send({ dm: bob }, { cmid: 'cancel-2', body: 'there?' })
    await eventually(() => apns.accepted(token).length === 1, GRACE_MS + 8000, 'the next push')
    assert.equal(parley(apns.accepted(token)[0]!).count, 1)
    assert.equal(parley(apns.accepted(token)[0]!).id, carbonOf(a, 'cancel-2')?.id)
  })

  it('coalesces the messages of a conversation into one notification; the badge is the unread total', async () => {
    const [alice, bob, carol] = [u('alice4'), u('bob4'), u('carol4')]
    const token = await offlineApns(bob)
    const a = await device(alice)
    const c = await device(carol)
    for (const n of [1, 2, 3]) await a.send({ dm: bob }, { cmid: `co-${n}`, body: `line ${n}` })
    await c.send({ dm: bob }, { cmid: 'co-c', body: 'from carol' })
    await eventually(() => apns.accepted(token).length === 2, GRACE_MS + 8000, 'one push per conversation')
    await sleep(1000)
    const pushes = apns.requests.filter((r) => r.token === token)
    assert.equal(pushes.length, 2)
    const fromAlice = pushes.find((p) => (parley(p).conversation as { id: string }).id === alice)!
    const fromCarol = pushes.find((p) => (parley(p).conversation as { id: string }).id === carol)!
    assert.equal(parley(fromAlice).count, 3)
    assert.equal(parley(fromAlice).id, carbonOf(a, 'co-3')?.id, 'the newest message')
    assert.deepEqual(aps(fromAlice).alert, { body: '3 new messages' })
    assert.notEqual(aps(fromAlice)['thread-id'], aps(fromCarol)['thread-id'], 'a thread per conversation')
    // The badge is bob's unread total when each push goes out: all four (alice's three were stored
    // before carol's one, and both pushes wait for the grace period).
    const badges = pushes.map((p) => aps(p).badge as number)
    assert.deepEqual(badges, [4, 4], 'the badge is the unread total')

    // bob reads alice's conversation on another device: the next push counts carol's and the new one.
    const tablet = await device(bob, 'tablet')
    await tablet.publish('s/read', { conversation: { kind: 'dm', id: alice }, seq: 3 })
    await tablet.end()
    await a.send({ dm: bob }, { cmid: 'co-4', body: 'line 4' })
    await eventually(() => apns.accepted(token).length === 3, GRACE_MS + 8000, 'the next push')
    assert.equal(aps(apns.accepted(token)[2]!).badge, 2)
  })

  it('removes a registration whose token APNs or FCM calls dead', async () => {
    const [alice, bob] = [u('alice5'), u('bob5')]
    const phone = await offlineApns(bob)
    const pixel = await offlineFcm(bob)
    apns.dead.add(phone)
    fcm.dead.add(pixel)
    const a = await device(alice)
    await a.send({ dm: bob }, { cmid: 'dead-1', body: 'hi' })
    await eventually(
      () => apns.requests.some((r) => r.token === phone && r.status === 410) && fcm.requests.some((r) => r.token === pixel && r.status === 404),
      GRACE_MS + 8000,
      'the providers say the tokens are dead'
    )
    const check = async (id: string) => {
      const d = await device(bob, id)
      const got = await d.call<{ registration: unknown }>('push.get')
      await d.end()
      return got.registration
    }
    await eventually(async () => (await check('phone')) === null && (await check('pixel')) === null, 5000, 'registrations removed')
    // A new message goes to nobody.
    await a.send({ dm: bob }, { cmid: 'dead-2', body: 'hi again' })
    await sleep(SETTLE_MS)
    assert.equal(apns.requests.filter((r) => r.token === phone).length, 1)
    assert.equal(fcm.requests.filter((r) => r.token === pixel).length, 1)
  })

  it('honours Retry-After of a 429 from APNs and from FCM', async () => {
    const [alice, bob] = [u('alice6'), u('bob6')]
    const phone = await offlineApns(bob)
    const pixel = await offlineFcm(bob)
    apns.script(phone, [{ status: 429, reason: 'TooManyRequests', retryAfterSeconds: 2 }])
    fcm.script(pixel, [{ status: 429, status_: 'RESOURCE_EXHAUSTED', errorCode: 'QUOTA_EXCEEDED', retryAfterSeconds: 2 }])
    const a = await device(alice)
    await a.send({ dm: bob }, { cmid: 'ra-1', body: 'hi' })
    await eventually(() => apns.accepted(phone).length === 1 && fcm.accepted(pixel).length === 1, GRACE_MS + 12_000, 'delivered after the wait')
    for (const requests of [apns.requests.filter((r) => r.token === phone), fcm.requests.filter((r) => r.token === pixel)]) {
      assert.equal(requests.length, 2, 'one refused, one accepted')
      assert.equal(requests[0]!.status, 429)
      // The back-off alone would retry after 50-100 ms; the provider asked for 2 s.
      assert.ok(requests[1]!.at - requests[0]!.at >= 2000, `retried ${requests[1]!.at - requests[0]!.at} ms after the 429`)
    }
  })

  it('shows previews only to devices that ask, never for end-to-end encrypted messages; mutes', async () => {
    const [alice, bob] = [u('alice7'), u('bob7')]
    const token = await offlineApns(bob, 'phone', { previews: true, locale: 'de-CH' })
    const a = await device(alice)
    await a.send({ dm: bob }, { cmid: 'pv-1', body: 'Treffen um 8?' })
    await eventually(() => apns.accepted(token).length === 1, GRACE_MS + 8000, 'the preview push')
    assert.deepEqual(aps(apns.accepted(token)[0]!).alert, { title: alice, body: 'Treffen um 8?' })
    assert.equal(aps(apns.accepted(token)[0]!)['mutable-content'], undefined)

    await a.send({ dm: bob }, { cmid: 'pv-2', body: 'b64ciphertext==', e2e: true })
    await eventually(() => apns.accepted(token).length === 2, GRACE_MS + 8000, 'the e2e push')
    const e2e = apns.accepted(token)[1]!
    assert.deepEqual(aps(e2e).alert, { body: 'Neue Nachricht' }, 'generic, in the device\'s language')
    assert.equal(aps(e2e)['mutable-content'], 1)
    assert.equal(parley(e2e).id, carbonOf(a, 'pv-2')?.id, 'the id to fetch and decrypt')
    assert.ok(!JSON.stringify(e2e.payload).includes('ciphertext'))

    const b = await device(bob)
    assert.deepEqual(await b.call('push.mute', { conversation: { kind: 'dm', id: alice }, until: 'forever' }), {
      conversation: { kind: 'dm', id: alice },
      muted: true,
      until: 'forever'
    })
    await b.end()
    await a.send({ dm: bob }, { cmid: 'pv-3', body: 'muted?' })
    await sleep(SETTLE_MS)
    assert.equal(apns.requests.filter((r) => r.token === token).length, 2, 'a muted conversation sends nothing')
  })

  it('answers the registry requests, and refuses bad ones precisely', async () => {
    const bob = u('bob8')
    const b = await device(bob)
    assert.deepEqual(await b.call('push.get'), { registration: null, mutes: [] })
    assert.equal((await b.rpc('push.register', { provider: 'apns', token: 'not-hex' })).error?.code, 'invalid_params')
    assert.equal((await b.rpc('push.register', { provider: 'gcm', token: 'x' })).error?.code, 'invalid_params')
    assert.equal((await b.rpc('push.update', { previews: true })).error?.code, 'invalid_params', 'nothing registered yet')
    const token = hexToken()
    const registered = await b.call<Record<string, unknown>>('push.register', { provider: 'apns', token: token.toUpperCase(), previews: true })
    assert.equal(registered.topic, 'com.example.chat', 'the configured default bundle id')
    assert.equal(registered.environment, 'production')
    assert.equal(registered.tokenSuffix, token.slice(-6))
    // A token refresh keeps the device's choices.
    await b.call('push.register', { provider: 'apns', token })
    assert.equal((await b.call<{ registration: { previews: boolean } }>('push.get')).registration.previews, true)
    assert.equal((await b.call<{ locale: string }>('push.update', { locale: 'fr' })).locale, 'fr')
    assert.equal((await b.rpc('push.mute', { conversation: { kind: 'group', id: 'nosuchgroup' }, until: 'forever' })).error?.code, 'not_a_member')
    const until = Date.now() + 3_600_000
    await b.call('push.mute', { conversation: { kind: 'dm', id: 'dave' }, until })
    assert.deepEqual((await b.call<{ mutes: unknown }>('push.get')).mutes, [{ conversation: { kind: 'dm', id: 'dave' }, until }])
    await b.call('push.unmute', { conversation: { kind: 'dm', id: 'dave' } })
    assert.deepEqual((await b.call<{ mutes: unknown }>('push.get')).mutes, [])
    assert.deepEqual(await b.call('push.unregister'), { removed: true })
    assert.deepEqual(await b.call('push.unregister'), { removed: false })
  })

  it("wakes offline devices for an operator's notice (parley admin messages send), not for group-change notices", async () => {
    const carol = u('carol')
    const phone = await offlineApns(carol)
    const key = await createKey(node.ops, node.node.config.dataDir, 'operator', `notice-${run}`)
    const sent = await adminRequest<{ id: string; conversation: string }>(node.ops, key, 'POST', '/messages/notices', { user: carol, text: 'maintenance at noon' })
    assert.equal(sent.status, 201, JSON.stringify(sent.body))
    await eventually(() => apns.accepted(phone).length === 1, GRACE_MS + 8000, 'the push of the notice')
    assert.equal(parley(apns.accepted(phone)[0]!).id, sent.body.id)
    // A group change (created, added...) is a system message too, but with a notice: never pushed.
    const dave = u('dave')
    const davePhone = await offlineApns(dave)
    const owner = await device(u('owner'))
    await owner.call('groups.create', { name: 'No push', members: [dave] })
    await sleep(SETTLE_MS)
    assert.equal(apns.requests.filter((r) => r.token === davePhone).length, 0)
  })

  it('`parley admin push test` sends a test notification with an operator key and prints the provider\'s answer; `push tokens` lists the devices', async () => {
    const bob = u('bob9')
    const phone = await offlineApns(bob)
    const pixel = await offlineFcm(bob)
    apns.bad.add(phone)
    const key = await createKey(node.ops, node.node.config.dataDir, 'operator', `push-${run}`)
    const ok = await adminCli(node.ops, key, ['push', 'test', bob, '--device', 'pixel'])
    assert.equal(ok.code, 0, ok.stderr)
    assert.match(ok.stdout, new RegExp(`${bob}:pixel  fcm  accepted id=projects/parley-test/messages/`))
    assert.equal(fcm.accepted(pixel).length, 1)
    assert.equal((fcm.accepted(pixel)[0]!.message.data as Record<string, string>).type, 'test')

    // Before the dead token goes: both devices, tokens abbreviated, the FCM test's result.
    const tokens = await adminCli(node.ops, key, ['push', 'tokens', bob, '--json'])
    assert.equal(tokens.code, 0, tokens.stderr)
    const listed = tokens.json<{ devices: Array<Record<string, unknown> & { lastResult?: Record<string, unknown> }> }>().devices
    assert.deepEqual(listed.map((d) => [d.device, d.platform, d.provider, d.via, d.app]), [
      ['phone', 'ios', 'apns', 'apns', 'com.example.chat'],
      ['pixel', 'android', 'fcm', 'fcm', 'parley-test']
    ])
    assert.equal(listed[0]!.token, `${phone.slice(0, 6)}…${phone.slice(-6)}`)
    assert.equal(listed[0]!.lastResult, undefined, 'nothing sent to the phone yet')
    assert.deepEqual({ ...listed[1]!.lastResult, at: 0 }, { at: 0, ok: true, via: 'fcm', type: 'test' })
    assert.ok(!tokens.stdout.includes(phone) && !tokens.stdout.includes(pixel), 'never a whole token')

    const all = await adminCli(node.ops, key, ['push', 'test', bob])
    assert.equal(all.code, 1, 'a device refused')
    assert.match(all.stdout, new RegExp(`${bob}:phone  apns  refused 400 BadDeviceToken  \\(dead token: registration removed\\)`))
    const none = await adminCli(node.ops, key, ['push', 'test', u('nobody')])
    assert.equal(none.code, 3, 'not found')
    assert.match(none.stderr, /no push registration/)
    const noKey = await adminCli(node.ops, undefined, ['push', 'test', bob])
    assert.equal(noKey.code, 4)
    const readKey = await createKey(node.ops, node.node.config.dataDir, 'read', `push-read-${run}`)
    assert.equal((await adminCli(node.ops, readKey, ['push', 'tokens', bob])).code, 4, 'operator scope')
    // The old unauthenticated route is gone.
    const old = await fetch(`http://127.0.0.1:${node.ops}/plugins/push/test`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user: bob }) })
    assert.equal(old.status, 404)

    // The user view's push section: the device left, its last result.
    const shown = await adminRequest<{ facets: { push: { devices: Array<{ device: string; lastResult?: { ok: boolean } }>; mutes: unknown[] } } }>(node.ops, readKey, 'GET', `/users/${bob}`)
    assert.equal(shown.status, 200)
    assert.deepEqual(shown.body.facets.push.devices.map((d) => [d.device, d.lastResult?.ok]), [['pixel', true]])
    assert.deepEqual(shown.body.facets.push.mutes, [])

    const metrics = await (await fetch(`http://127.0.0.1:${node.ops}/metrics`)).text()
    assert.match(metrics, /parley_push_sent_total\{provider="fcm",type="test"\} \d+/)
    assert.match(metrics, /parley_push_failed_total\{provider="apns",reason="BadDeviceToken"\} 1/)
    assert.match(metrics, /parley_push_send_seconds_count\{provider="fcm"\} \d+/)
  })
})
