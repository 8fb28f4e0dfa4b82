// Receipts, privacy, message kinds and cursor sync end to end: real mqtt.js devices against an
// in-process node, once on the embedded store and once on the MongoDB-compatible server.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import type { MessageEnvelope, Receipt } from '../../../schemas/protocol.js'
import type { ConfigInput } from '../../../schemas/config.js'
import { eventually } from '../../../test/helpers/broker-process.js'
import { testDevice, type TestDevice } from '../../../test/helpers/device.js'
import { startNode, type TestNode } from '../../../test/helpers/node.js'
import { mongoUrl } from '../../../test/helpers/services.js'

const messagesConfig = { receiptBatchMs: 200, maxDeltaMessages: 30, editWindowMs: 3000 }
const backends: Array<[string, () => ConfigInput]> = [
  ['embedded store', () => ({})],
  ['MongoDB (FerretDB)', () => ({ mongo: { url: mongoUrl(), database: `parley_chat_${randomBytes(3).toString('hex')}` } })]
]

type PullAnswer = {
  fresh?: boolean
  changes: Array<{ conversation: { kind: string; id: string }; lastSeq: number; messages: MessageEnvelope[]; reset?: boolean }>
  cursor: string
  hasMore: boolean
}
type Counts = { messages: Array<{ seq: number; delivered: number; read: number; of: number }>; nextSeq?: number }

const latest = (d: TestDevice, kind: Receipt['kind']) => d.receipts.filter((r) => r.kind === kind).at(-1)

for (const [name, backend] of backends) {
  describe(`chat on the ${name}`, () => {
    let t: TestNode
    let run = ''
    const u = (name: string) => `${name}${run}` // fresh users per backend: one store may outlive a suite
    before(async () => {
      run = randomBytes(2).toString('hex')
      t = await startNode({ ...backend(), plugins: ['protocol', 'groups', { use: 'messages', config: messagesConfig }] })
      await eventually(async () => (await fetch(`http://127.0.0.1:${t.ops}/readyz`)).status === 200, 15_000, 'stores ready')
    })
    after(async () => t?.stop())

    it('tells the sender when a one-to-one message reached a device and when it was read', async () => {
      const [ann, bob] = [u('ann'), u('bob')]
      const sender = await testDevice(t.mqttUrl, ann)
      // A persistent session: the server sees this device's PUBACKs with the packet (delivered by itself).
      const phone = await testDevice(t.mqttUrl, bob, 'phone', { clean: false })
      await sender.send({ dm: bob }, { cmid: 'a1', body: 'one' })
      await sender.send({ dm: bob }, { cmid: 'a2', body: 'two' })
      await eventually(() => latest(sender, 'delivered')?.upToSeq === 2, 5000, 'delivered receipt from the PUBACK')
      assert.deepEqual(latest(sender, 'delivered'), { ...latest(sender, 'delivered'), conversation: { kind: 'dm', id: bob }, by: bob })

      // A clean session: the server cannot see which message a PUBACK acknowledged, so the device says it.
      const tablet = await testDevice(t.mqttUrl, bob, 'tablet')
      await sender.send({ dm: bob }, { cmid: 'a3', body: 'three' })
      await eventually(() => tablet.messages.length === 1, 5000, 'tablet has it')
      await tablet.publish('s/delivered', { conversation: { kind: 'dm', id: ann }, seq: 3 })
      await eventually(() => latest(sender, 'delivered')?.upToSeq === 3, 5000, 'explicit delivered marker')

      await tablet.publish('s/read', { conversation: { kind: 'dm', id: ann }, seq: 2 })
      await eventually(() => latest(sender, 'read')?.upToSeq === 2, 5000, 'read receipt')
      const counts = await sender.call<Counts>('messages.receipts', { conversation: { kind: 'dm', id: bob }, fromSeq: 1 })
      assert.deepEqual(
        counts.messages.map((m) => [m.seq, m.delivered, m.read, m.of]),
        [
          [1, 1, 1, 1],
          [2, 1, 1, 1],
          [3, 1, 0, 1]
        ]
      )
      const before = sender.receipts.length
      await tablet.publish('s/delivered', { conversation: { kind: 'dm', id: ann }, seq: 1 })
      await tablet.publish('s/read', { conversation: { kind: 'dm', id: ann }, seq: 99 }) // clamped to the last message
      await eventually(() => latest(sender, 'read')?.upToSeq === 3, 5000, 'read up to the end')
      assert.equal(sender.receipts.length, before + 1, 'a marker that does not move sends nothing')
      await Promise.all([sender, phone, tablet].map((d) => d.end()))
    })

    it('lets a user stop sharing read receipts, and then shows them none either', async () => {
      const [cat, dan] = [u('cat'), u('dan')]
      const [c, d] = [await testDevice(t.mqttUrl, cat), await testDevice(t.mqttUrl, dan)]
      assert.deepEqual(await d.call('privacy.get'), { readReceipts: true }, 'shared by default')
      assert.deepEqual(await d.call('privacy.set', { readReceipts: false }), { readReceipts: false })
      assert.equal((await d.rpc('privacy.set', { readReceipts: 'no' })).error?.code, 'invalid_params')
      await c.send({ dm: dan }, { cmid: 'c1', body: 'did you read this?' })
      await d.publish('s/read', { conversation: { kind: 'dm', id: cat }, seq: 1 })
      await eventually(() => c.receipts.some((r) => r.kind === 'delivered' && r.upToSeq === 1), 5000, 'delivered instead of read')
      await d.send({ dm: cat }, { cmid: 'd1', body: 'maybe' })
      await c.publish('s/read', { conversation: { kind: 'dm', id: dan }, seq: 2 })
      await eventually(() => d.receipts.some((r) => r.upToSeq === 2), 5000, 'a receipt for dan')
      assert.equal(c.receipts.filter((r) => r.kind === 'read').length + d.receipts.filter((r) => r.kind === 'read').length, 0, 'no read receipts either way')
      const counts = await c.call<Counts>('messages.receipts', { conversation: { kind: 'dm', id: dan }, fromSeq: 1 })
      assert.deepEqual(counts.messages.map((m) => [m.seq, m.delivered, m.read]), [[1, 1, 0]])
      await Promise.all([c, d].map((x) => x.end()))
    })

    it('counts a 50-member group\'s receipts as "delivered to k of n, read by m", batched to the sender', async () => {
      const users = Array.from({ length: 50 }, (_, i) => u(`r${i}`))
      const devices = await Promise.all(users.map((x) => testDevice(t.mqttUrl, x)))
      const owner = devices[0]!
      const { id: group } = await owner.call<{ id: string }>('groups.create', { name: 'Fifty', members: users.slice(1) })
      await owner.send({ g: group }, { cmid: 'g1', body: 'hello fifty' })
      await owner.send({ g: group }, { cmid: 'g2', body: 'again' })
      for (const d of devices) await eventually(() => d.messages.length === 2, 10_000, 'both group messages')
      const [first, second] = owner.messages.map((m) => m.seq) as [number, number]
      // 20 members have both, 10 of them read the first: every marker move lands in a few summaries.
      await Promise.all(devices.slice(1, 21).map((d) => d.publish('s/delivered', { conversation: { kind: 'group', id: group }, seq: second })))
      await Promise.all(devices.slice(1, 11).map((d) => d.publish('s/read', { conversation: { kind: 'group', id: group }, seq: first })))
      const summary = () => {
        const r = owner.receipts.filter((x): x is Extract<Receipt, { kind: 'group' }> => x.kind === 'group')
        const best = new Map<number, { delivered: number; read: number; of: number }>()
        for (const x of r) for (const m of x.messages) best.set(m.seq, { delivered: Math.max(best.get(m.seq)?.delivered ?? 0, m.delivered), read: Math.max(best.get(m.seq)?.read ?? 0, m.read), of: m.of })
        return best
      }
      await eventually(() => summary().get(first)?.read === 10 && summary().get(second)?.delivered === 20, 10_000, 'group summaries')
      assert.deepEqual(summary().get(first), { delivered: 20, read: 10, of: 49 })
      assert.ok(owner.receipts.length < 30, `batched: ${owner.receipts.length} summaries for 30 marker moves`)
      const counts = await owner.call<Counts>('messages.receipts', { conversation: { kind: 'group', id: group }, fromSeq: 1 })
      assert.deepEqual(
        counts.messages.map((m) => [m.seq, m.delivered, m.read, m.of]),
        [
          [first, 20, 10, 49],
          [second, 20, 0, 49]
        ],
        'on request: only the requester\'s own messages, system notices left out'
      )
      assert.equal((await devices[1]!.call<Counts>('messages.receipts', { conversation: { kind: 'group', id: group }, fromSeq: 1 })).messages.length, 0)
      const outsider = await testDevice(t.mqttUrl, u('outsider'))
      assert.equal((await outsider.rpc('messages.receipts', { conversation: { kind: 'group', id: group }, fromSeq: 1 })).error?.code, 'not_a_member')
      await Promise.all([...devices, outsider].map((d) => d.end()))
    })

    it('carries media references, e2e bodies, edits and deletes for everyone, and records group changes', async () => {
      const [eve, fox] = [u('eve'), u('fox')]
      const [e, f] = [await testDevice(t.mqttUrl, eve), await testDevice(t.mqttUrl, fox)]
      const media = { id: 'photo-1.jpg', mime: 'image/jpeg', size: 123_456, width: 800, height: 600 }
      await e.send({ dm: fox }, { cmid: 'e1', type: 'media', media, body: 'the view' })
      await e.send({ dm: fox }, { cmid: 'e2', body: 'b64:c2VjcmV0', e2e: true })
      await e.send({ dm: fox }, { cmid: 'e3', body: 'tpyo' })
      await eventually(() => f.messages.length === 3, 5000, 'three messages')
      const [photo, secret, typo] = f.messages as [MessageEnvelope, MessageEnvelope, MessageEnvelope]
      assert.deepEqual([photo.type, photo.media, photo.body], ['media', media, 'the view'])
      assert.deepEqual([secret.e2e, secret.body], [true, 'b64:c2VjcmV0'], 'stored and forwarded as given')

      await e.send({ dm: fox }, { cmid: 'e4', type: 'edit', ref: typo.id, body: 'typo' })
      await e.send({ dm: fox }, { cmid: 'e5', type: 'delete', ref: photo.id })
      await eventually(() => f.messages.length === 5, 5000, 'edit and delete delivered')
      assert.deepEqual(f.messages.slice(3).map((m) => [m.seq, m.type, m.ref, m.body]), [
        [4, 'edit', typo.id, 'typo'],
        [5, 'delete', photo.id, undefined]
      ])
      const history = await f.call<{ messages: MessageEnvelope[] }>('messages.history', { conversation: { kind: 'dm', id: eve } })
      assert.deepEqual([history.messages[0]!.deleted, history.messages[0]!.body, history.messages[0]!.media], [true, undefined, undefined], 'the content is gone from the server')

      // Refusals: someone else's message, an unknown one, a deleted one.
      await f.send({ dm: eve }, { cmid: 'f1', type: 'edit', ref: typo.id, body: 'mine now' })
      await f.send({ dm: eve }, { cmid: 'f2', type: 'delete', ref: '000000000aaaaaaaaaaaaaaaa' })
      await e.send({ dm: fox }, { cmid: 'e6', type: 'edit', ref: photo.id, body: 'too late' })
      await e.send({ dm: fox }, { cmid: 'e7', type: 'edit', ref: 'not-an-id', body: 'x' })
      await eventually(() => f.errors.length === 2 && e.errors.length === 2, 5000, 'four refusals')
      assert.deepEqual(f.errors.map((x) => [x.code, x.ref.cmid]), [['forbidden', 'f1'], ['unknown_message', 'f2']])
      assert.deepEqual(e.errors.map((x) => [x.code, x.ref.cmid]), [['unknown_message', 'e6'], ['invalid_payload', 'e7']])
      assert.equal(f.messages.length, 5, 'nothing refused was stored or delivered')

      // Once the edit window (3 s here) has passed, a new edit is too late; a retry of the stored one is not.
      await new Promise((r) => setTimeout(r, Math.max(0, typo.ts + 3000 + 100 - Date.now())))
      await e.send({ dm: fox }, { cmid: 'e4', type: 'edit', ref: typo.id, body: 'typo' })
      await e.send({ dm: fox }, { cmid: 'e8', type: 'edit', ref: typo.id, body: 'later thoughts' })
      await eventually(() => e.errors.length === 3, 5000, 'the late edit refused')
      assert.deepEqual([e.errors[2]!.code, e.errors[2]!.ref.cmid], ['too_late', 'e8'])
      await eventually(() => f.messages.length === 6, 5000, 'the retry delivered again (at least once)')
      assert.deepEqual([f.messages[5]!.cmid, f.messages[5]!.seq], ['e4', 4], 'the retry is the stored edit')

      const { id: group } = await e.call<{ id: string }>('groups.create', { name: 'Pair', members: [fox] })
      await e.call('groups.rename', { group, name: 'Pair of two' })
      await eventually(() => f.notices.length === 2, 5000, 'notices of the creation and the rename')
      assert.deepEqual(f.notices.map((n) => [n.seq, n.from.user, n.from.device, n.notice?.change, n.notice?.name]), [
        [1, eve, 'server', 'created', 'Pair'],
        [2, eve, 'server', 'renamed', 'Pair of two']
      ])
      await Promise.all([e, f].map((x) => x.end()))
    })

    it('syncs everything since a device\'s server-kept cursor, paged and in order, resetting what is too far behind', async () => {
      const [gil, hal, ida, jon] = [u('gil'), u('hal'), u('ida'), u('jon')]
      const reader = await testDevice(t.mqttUrl, gil, 'laptop')
      const first = await reader.call<PullAnswer>('messages.pull')
      assert.deepEqual([first.fresh, first.changes, first.hasMore], [true, [], false], 'a new device starts at the present')
      assert.deepEqual((await reader.call<PullAnswer>('messages.pull', { ack: first.cursor })).changes, [], 'its cursor can be acked like any other')
      const [h, i, j] = (await Promise.all([hal, ida, jon].map((x) => testDevice(t.mqttUrl, x)))) as [TestDevice, TestDevice, TestDevice]
      const { id: group } = await h.call<{ id: string }>('groups.create', { name: 'Trio', members: [gil, ida] })
      await reader.end()

      // While the laptop is away (a day offline, in volume): 12 from hal, 8 in the group, 40 from jon.
      for (let k = 1; k <= 12; k++) await h.send({ dm: gil }, { cmid: `h${k}`, body: `hal ${k}` })
      for (let k = 1; k <= 8; k++) await i.send({ g: group }, { cmid: `i${k}`, body: `trio ${k}` })
      for (let k = 1; k <= 40; k++) await j.send({ dm: gil }, { cmid: `j${k}`, body: `jon ${k}` })

      const back = await testDevice(t.mqttUrl, gil, 'laptop')
      const seen = new Map<string, number[]>()
      let page = await back.call<PullAnswer>('messages.pull', { limit: 7 })
      let pages = 1
      const resets: string[] = []
      for (;;) {
        for (const c of page.changes) {
          if (c.reset) resets.push(c.conversation.id)
          const got = seen.get(c.conversation.id) ?? []
          got.push(...c.messages.map((m) => m.seq))
          seen.set(c.conversation.id, got)
        }
        if (!page.hasMore) break
        assert.ok(pages < 20, 'bounded paging')
        page = await back.call<PullAnswer>('messages.pull', { ack: page.cursor, limit: 7 })
        pages++
      }
      await back.call<PullAnswer>('messages.pull', { ack: page.cursor })
      assert.deepEqual(seen.get(hal), Array.from({ length: 12 }, (_, k) => k + 1), 'hal: every message once, in order')
      assert.deepEqual(seen.get(group), Array.from({ length: 9 }, (_, k) => k + 1), 'the group, new since the cursor: its creation notice and every message')
      assert.deepEqual(resets, [jon], 'jon: 40 behind is more than maxDeltaMessages (30): reset')
      assert.ok(pages >= 3, `paged by 7: ${pages} pages`)

      const caughtUp = await back.call<PullAnswer>('messages.pull')
      assert.deepEqual([caughtUp.changes, caughtUp.hasMore], [[], false], 'the acked cursor is kept on the server')
      await h.send({ dm: gil }, { cmid: 'h13', body: 'one more' })
      const delta = await back.call<PullAnswer>('messages.pull')
      assert.deepEqual(delta.changes.map((c) => [c.conversation.id, c.messages.map((m) => m.body)]), [[hal, ['one more']]])
      const other = await testDevice(t.mqttUrl, gil, 'phone')
      assert.equal((await other.call<PullAnswer>('messages.pull')).fresh, true, 'cursors are per device')
      assert.equal((await back.rpc('messages.pull', { ack: 'garbage!' })).error?.code, 'invalid_params')
      await Promise.all([back, other, h, i, j].map((x) => x.end()))
    })
  })
}
