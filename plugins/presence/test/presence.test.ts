// Presence and typing end to end: two broker processes clustered over Redis, sharing the
// MongoDB-compatible store, real mqtt.js devices; a kill -9 of one node.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { Event } from '../../../schemas/protocol.js'
import { eventually, startBroker, type BrokerProcess } from '../../../test/helpers/broker-process.js'
import { testDevice, type TestDevice } from '../../../test/helpers/device.js'
import { mongoUrl, redisDb } from '../../../test/helpers/services.js'

type Presence = Extract<Event, { type: 'presence' }>
type TypingEvent = Extract<Event, { type: 'typing' }>
const presenceOf = (d: TestDevice, user: string) => d.events.filter((e): e is Presence => e.type === 'presence' && e.user === user)
const latest = (d: TestDevice, user: string) => presenceOf(d, user).sort((a, b) => a.version - b.version).at(-1)

describe('presence across two nodes', () => {
  let a: BrokerProcess
  let b: BrokerProcess
  const run = randomBytes(2).toString('hex')
  const u = (name: string) => `${name}${run}`
  const urlOf = (n: BrokerProcess) => `mqtt://127.0.0.1:${n.ports.tcp}`
  const devices: TestDevice[] = []
  const device = async (node: BrokerProcess, user: string, id = 'phone') => {
    const d = await testDevice(urlOf(node), user, id, { reconnectPeriod: 0 })
    d.client.on('error', () => undefined)
    devices.push(d)
    return d
  }

  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-presence-'))
    const config = join(dir, 'parley.yaml')
    // Short timings keep the test quick; the defaults are 5 s grace and 30 s for a dead node.
    writeFileSync(
      config,
      [
        'mqtt: { allowAnonymous: true }',
        `redis: { url: "${redisDb(14)}" }`,
        `mongo: { url: "${mongoUrl()}", database: parley_presence_${run} }`,
        'plugins:',
        '  - protocol',
        '  - groups',
        '  - messages',
        '  - use: presence',
        '    config: { graceMs: 1500, offlineAfterMs: 3000, sweepMs: 200, batchMs: 50, typing: { minIntervalMs: 5000 } }'
      ].join('\n')
    )
    ;[a, b] = await Promise.all([
      startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: 'presence-a' } }),
      startBroker({ args: ['--config', config], env: { PARLEY_NODE_NAME: 'presence-b' } })
    ])
  })
  after(async () => {
    devices.forEach((d) => d.client.end(true))
    await Promise.all([a?.stop(), b?.stop()])
  })

  it('tells conversation partners, not strangers, when a user comes and goes, without flapping on a quick reconnect', async () => {
    const [ann, bob, cat] = [u('ann'), u('bob'), u('cat')]
    const annPhone = await device(a, ann)
    const stranger = await device(a, cat)
    let bobPhone = await device(b, bob)
    await annPhone.send({ dm: bob }, { cmid: 'hello', body: 'hi bob' }) // now they share a conversation
    await eventually(() => bobPhone.messages.length === 1, 5000, 'the message')

    await bobPhone.end()
    await eventually(() => latest(annPhone, bob)?.online === false, 15_000, 'bob offline after the grace period')
    const offline = latest(annPhone, bob)!
    assert.equal(typeof offline.lastSeen, 'number')

    bobPhone = await device(a, bob) // back, on the other node
    await eventually(() => latest(annPhone, bob)?.online === true, 10_000, 'bob online again')
    assert.ok(latest(annPhone, bob)!.version > offline.version, 'versions grow')
    const seen = presenceOf(annPhone, bob).length

    // A quick reconnect on the other node, within the grace period: nobody hears of it.
    await bobPhone.end()
    bobPhone = await device(b, bob)
    const snapshot = await annPhone.call<{ presence: Presence[] }>('presence.get', { users: [bob, cat] })
    assert.deepEqual(snapshot.presence.map((p) => [p.user, p.online]), [[bob, true]], 'a snapshot: bob online; cat shares nothing with ann')
    await new Promise((r) => setTimeout(r, 2500)) // longer than the grace period: an offline would have come
    assert.equal(presenceOf(annPhone, bob).length, seen, 'no offline/online flap')

    assert.equal(presenceOf(stranger, bob).length, 0, 'a stranger hears nothing')
    const probe = await stranger.call<{ presence: Presence[] }>('presence.get', { users: [bob, ann] })
    assert.deepEqual(probe.presence, [], 'and learns nothing on request')
  })

  it('hides online status and last seen as each user chooses, and shows them to contacts they add', async () => {
    const [dee, eli] = [u('dee'), u('eli')]
    const deePhone = await device(a, dee)
    const eliPhone = await device(b, eli)
    await eliPhone.send({ dm: dee }, { cmid: 'e1', body: 'hi dee' })
    await eventually(() => deePhone.messages.length === 1, 5000, 'the message')
    assert.deepEqual(await eliPhone.call('presence.privacy.set', { online: 'contacts', lastSeen: 'nobody' }), { online: 'contacts', lastSeen: 'nobody' })
    assert.equal((await eliPhone.rpc('presence.privacy.set', { online: 'friends', lastSeen: 'nobody' })).error?.code, 'invalid_params')
    const hidden = await deePhone.call<{ presence: Presence[] }>('presence.get', { users: [eli] })
    assert.deepEqual(hidden.presence, [], 'online for contacts only, last seen for nobody: dee sees nothing')

    assert.deepEqual(await eliPhone.call('contacts.add', { users: [dee] }), { contacts: 1 })
    assert.deepEqual(await eliPhone.call('contacts.list'), { contacts: [dee] })
    await eventually(() => latest(deePhone, eli)?.online === true, 5000, 'dee, now a contact, is told at once')
    const shown = await deePhone.call<{ presence: Presence[] }>('presence.get', { users: [eli] })
    assert.deepEqual(shown.presence.map((p) => [p.online, 'lastSeen' in p]), [[true, false]])

    await eliPhone.end()
    await eventually(() => latest(deePhone, eli)?.online === false, 15_000, 'offline shown, to a contact')
    assert.equal(latest(deePhone, eli)!.lastSeen, undefined, 'but never the last seen time')
  })

  it('relays typing to the other members, throttled, with an expiry', async () => {
    const [fay, gus, hal] = [u('fay'), u('gus'), u('hal')]
    const [fayPhone, gusPhone, halPhone] = [await device(a, fay), await device(b, gus), await device(b, hal)]
    await halPhone.publish(`s/typing/dm/${gus}`, { state: 'typing' }) // hal and gus share nothing yet: not relayed
    await fayPhone.send({ dm: gus }, { cmid: 'f1', body: 'hi gus' })
    await eventually(() => gusPhone.messages.length === 1, 5000, 'the message')
    await fayPhone.publish(`s/typing/dm/${gus}`, { state: 'typing' })
    await fayPhone.publish(`s/typing/dm/${gus}`, { state: 'typing' }) // within minIntervalMs: dropped
    await fayPhone.publish(`s/typing/dm/${gus}`, { state: 'paused' }) // a change always passes
    const typing = () => gusPhone.events.filter((e): e is TypingEvent => e.type === 'typing')
    await eventually(() => typing().length === 2, 5000, 'typing, then paused')
    assert.deepEqual(typing().map((e) => [e.conversation, e.user, e.state, e.expiresInMs]), [ // nothing from hal
      [{ kind: 'dm', id: fay }, fay, 'typing', 6000],
      [{ kind: 'dm', id: fay }, fay, 'paused', 6000]
    ])
    const { id: group } = await fayPhone.call<{ id: string }>('groups.create', { name: 'Typists', members: [gus, hal] })
    await gusPhone.publish(`s/typing/g/${group}`, { state: 'typing' })
    await eventually(() => fayPhone.events.some((e) => e.type === 'typing') && halPhone.events.some((e) => e.type === 'typing'), 5000, 'group typing')
    assert.equal(typing().length, 2, 'not echoed to the typist')
  })

  it('takes the users of a killed node offline on the surviving node', async () => {
    const [ida, jon] = [u('ida'), u('jon')]
    const idaPhone = await device(a, ida)
    const jonPhone = await device(b, jon)
    await jonPhone.send({ dm: ida }, { cmid: 'j1', body: 'before the crash' })
    await eventually(() => idaPhone.messages.length === 1, 5000, 'the message')
    b.child.kill('SIGKILL')
    await b.exited
    // offlineAfterMs (3 s here, 30 s by default) for the dead node, then one sweep.
    await eventually(() => latest(idaPhone, jon)?.online === false, 20_000, 'jon offline after his node died')
  })
})
