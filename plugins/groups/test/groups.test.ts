import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { MqttClient } from 'mqtt'
import type { MessageEnvelope } from '../../../schemas/protocol.js'
import { eventually } from '../../../test/helpers/broker-process.js'
import { connectClient, startNode, type TestNode } from '../../../test/helpers/node.js'
import { mongoTestDb } from '../../../test/helpers/services.js'
import { MongoGroupStore, SqliteGroupStore, type GroupStore } from '../store.js'

const contract: Array<[string, () => Promise<{ store: GroupStore; done: () => Promise<void> }>]> = [
  [
    'embedded (SQLite)',
    async () => {
      const store = new SqliteGroupStore(join(mkdtempSync(join(tmpdir(), 'parley-groups-')), 'groups.db'))
      await store.init()
      return { store, done: () => store.close() }
    }
  ],
  [
    'MongoDB (FerretDB)',
    async () => {
      const { db, done } = await mongoTestDb('parley_groups')
      const store = new MongoGroupStore(db)
      await store.init()
      return { store, done }
    }
  ]
]

for (const [name, open] of contract) {
  describe(`group store contract: ${name}`, () => {
    it('creates, lists, changes and removes memberships', async () => {
      const { store, done } = await open()
      try {
        const g = await store.create({ id: 'g1', name: 'Team', createdBy: 'alice', createdAt: 1, members: ['bob', 'alice', 'carol'] })
        assert.deepEqual(g.members.map((m) => [m.user, m.role]), [['alice', 'admin'], ['bob', 'member'], ['carol', 'member']])
        assert.deepEqual(await store.add('g1', ['dave', 'bob', 'dave'], 2), ['dave'], 'existing members are not added twice')
        assert.deepEqual(await store.members('g1'), ['alice', 'bob', 'carol', 'dave'])
        await store.setRole('g1', 'bob', 'admin')
        assert.equal(await store.role('g1', 'bob'), 'admin')
        assert.equal(await store.remove('g1', 'carol'), true)
        assert.equal(await store.remove('g1', 'carol'), false)
        assert.equal(await store.role('g1', 'carol'), undefined)
        await store.rename('g1', 'Team 2')
        await store.create({ id: 'g2', name: 'Other', createdBy: 'bob', createdAt: 3, members: [] })
        assert.deepEqual(await store.groupsOf('bob'), [
          { id: 'g1', name: 'Team 2', role: 'admin' },
          { id: 'g2', name: 'Other', role: 'admin' }
        ])
        assert.deepEqual(await store.groupsOf('nobody'), [])
        assert.equal(await store.get('missing'), undefined)
      } finally {
        await done()
      }
    })

    it('lists every group in creation order, a page at a time, with member counts', async () => {
      const { store, done } = await open()
      try {
        await store.create({ id: 'gb', name: 'B', createdBy: 'alice', createdAt: 10, members: ['bob'] })
        await store.create({ id: 'ga', name: 'A', createdBy: 'carol', createdAt: 10, members: [] })
        await store.create({ id: 'gc', name: 'C', createdBy: 'alice', createdAt: 5, members: ['bob', 'carol', 'dave'] })
        const first = await store.list(2)
        assert.deepEqual(first, [
          { id: 'gc', name: 'C', createdBy: 'alice', createdAt: 5, members: 4 },
          { id: 'ga', name: 'A', createdBy: 'carol', createdAt: 10, members: 1 }
        ])
        // Resumes after the last row: same creation time, next id.
        assert.deepEqual((await store.list(2, { createdAt: 10, id: 'ga' })).map((g) => [g.id, g.members]), [['gb', 2]])
        assert.deepEqual(await store.list(2, { createdAt: 10, id: 'gb' }), [])
        assert.deepEqual((await store.summaries(['gb', 'missing', 'gc'])).map((g) => [g.id, g.members]), [
          ['gb', 2],
          ['gc', 4]
        ])
      } finally {
        await done()
      }
    })
  })
}

interface Dev {
  client: MqttClient
  messages: MessageEnvelope[]
  /** System notices (group changes recorded in the conversation by the messages plugin). */
  notices: MessageEnvelope[]
  events: Array<{ type: string; change?: string; users?: string[] }>
  rpc(method: string, params?: object): Promise<{ ok: boolean; result?: unknown; error?: { code: string; message: string } }>
}

let rpcIds = 0
async function device(url: string, user: string, dev = 'phone', clean = true): Promise<Dev> {
  const client = await connectClient(url, { clientId: `${user}:${dev}`, clean })
  const messages: MessageEnvelope[] = []
  const notices: MessageEnvelope[] = []
  const events: Dev['events'] = []
  const waiting = new Map<string, (r: Awaited<ReturnType<Dev['rpc']>>) => void>()
  client.on('message', (topic, payload) => {
    const body = JSON.parse(payload.toString()) as { id: string }
    if (topic === `u/${user}/m`) ((body as unknown as MessageEnvelope).type === 'system' ? notices : messages).push(body as unknown as MessageEnvelope)
    else if (topic === `u/${user}/e`) events.push(body as unknown as Dev['events'][number])
    else if (topic === `u/${user}/d/${dev}/res`) waiting.get(body.id)?.(body as unknown as Awaited<ReturnType<Dev['rpc']>>)
  })
  await client.subscribeAsync(`u/${user}/#`, { qos: 1 })
  return {
    client,
    messages,
    notices,
    events,
    rpc: (method, params = {}) =>
      new Promise((resolve) => {
        const id = `g${++rpcIds}`
        waiting.set(id, resolve)
        void client.publishAsync('s/rpc', JSON.stringify({ id, method, params }), { qos: 1 })
      })
  }
}

const send = (d: Dev, group: string, cmid: string, body: string) => d.client.publishAsync(`s/g/${group}`, JSON.stringify({ cmid, body }), { qos: 1 })

describe('groups over MQTT', () => {
  let t: TestNode
  before(async () => {
    t = await startNode({ plugins: ['protocol', { use: 'groups', config: { maxMembers: 1024 } }, 'messages'] })
  })
  after(async () => t?.stop())

  it('lets admins manage members, tells every member, and opens the conversation to members only', async () => {
    const [alice, bob, carol, dave] = await Promise.all(['alice', 'bob', 'carol', 'dave'].map((u) => device(t.mqttUrl, u)))
    const created = await alice!.rpc('groups.create', { name: 'Team', members: ['bob', 'carol'] })
    assert.equal(created.ok, true)
    const group = (created.result as { id: string }).id
    for (const d of [alice!, bob!, carol!]) {
      await eventually(() => d.events.some((e) => e.change === 'created'), 5000, 'created event')
    }
    assert.equal(dave!.events.length, 0)
    // The creation is also recorded in the conversation, as its first message.
    for (const d of [alice!, bob!, carol!]) await eventually(() => d.notices.length === 1, 5000, 'created notice')
    assert.deepEqual([alice!.notices[0]!.seq, alice!.notices[0]!.notice?.change, alice!.notices[0]!.notice?.by], [1, 'created', 'alice'])

    await send(bob!, group, 'b1', 'hello team')
    for (const d of [alice!, bob!, carol!]) await eventually(() => d.messages.length === 1, 5000, 'group message')
    assert.deepEqual([alice!.messages[0]!.seq, alice!.messages[0]!.conversation, alice!.messages[0]!.from.user], [2, { kind: 'group', id: group }, 'bob'])

    assert.equal((await bob!.rpc('groups.add', { group, users: ['dave'] })).error?.code, 'forbidden', 'members cannot add')
    assert.equal((await dave!.rpc('groups.get', { group })).error?.code, 'not_a_member')
    // Dave's "not a member" is now in the protocol's membership cache (60 s by default).
    const daveErrors: string[] = []
    dave!.client.on('message', (topic, payload) => {
      if (topic.endsWith('/err')) daveErrors.push((JSON.parse(payload.toString()) as { code: string }).code)
    })
    await send(dave!, group, 'd-early', 'not yet')
    await eventually(() => daveErrors.includes('not_a_member'), 5000, 'dave refused before being added')
    assert.deepEqual((await alice!.rpc('groups.add', { group, users: ['dave'] })).result, { added: ['dave'] })
    // The system user (groups.systemUser) is the service itself: never a member.
    assert.equal((await alice!.rpc('groups.add', { group, users: ['parley'] })).error?.code, 'invalid_params')
    await eventually(() => dave!.events.some((e) => e.change === 'added'), 5000, 'dave told')
    // The change invalidated the cached "no" on every node: dave writes at once, well within its TTL.
    await send(dave!, group, 'd1', 'dave here')
    await eventually(() => dave!.messages.some((m) => m.body === 'dave here'), 5000, 'dave can write once added')

    assert.equal((await alice!.rpc('groups.remove', { group, user: 'carol' })).ok, true)
    await eventually(() => carol!.events.some((e) => e.change === 'removed'), 5000, 'carol told she was removed')
    assert.equal((await carol!.rpc('messages.sync', { conversation: { kind: 'group', id: group }, afterSeq: 0 })).error?.code, 'not_a_member')

    assert.equal((await alice!.rpc('groups.leave', { group })).ok, true)
    const info = (await bob!.rpc('groups.get', { group })).result as { members: Array<{ user: string; role: string }> }
    assert.deepEqual(info.members.map((m) => [m.user, m.role]), [['bob', 'admin'], ['dave', 'member']], 'the longest-standing member took over as admin')
    await eventually(() => dave!.events.some((e) => e.change === 'promoted' && e.users?.includes('bob')), 5000, 'members told of the new admin')
    assert.deepEqual(((await bob!.rpc('groups.list')).result as { groups: Array<{ id: string }> }).groups.map((g) => g.id), [group])
    await Promise.all([alice, bob, carol, dave].map((d) => d!.client.endAsync()))
  })

  it('delivers every message of a 50-member group to every online member, in order', async () => {
    const users = Array.from({ length: 50 }, (_, i) => `m50u${i}`)
    const devices = await Promise.all(users.map((u) => device(t.mqttUrl, u)))
    const created = await devices[0]!.rpc('groups.create', { name: 'Fifty', members: users.slice(1) })
    const group = (created.result as { id: string }).id
    for (let i = 0; i < 10; i++) await send(devices[i % 5]!, group, `c${i}`, `msg ${i}`)
    for (const d of devices) await eventually(() => d.messages.length === 10, 10_000, 'all ten')
    for (const d of devices) assert.deepEqual(d.messages.map((m) => m.seq), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 'after the created notice')
    await Promise.all(devices.map((d) => d.client.endAsync()))
  })

  it('fans a 1,000-member group out to online members and keeps no queued copy for offline ones', async () => {
    const users = Array.from({ length: 1000 }, (_, i) => `k${i}`)
    const owner = await device(t.mqttUrl, users[0]!)
    const created = await owner.rpc('groups.create', { name: 'Thousand', members: users.slice(1) })
    assert.equal(created.ok, true, JSON.stringify(created.error))
    const group = (created.result as { id: string }).id
    // 30 members online, 30 with persistent sessions that then go offline.
    const online = await Promise.all(users.slice(1, 31).map((u) => device(t.mqttUrl, u)))
    const away = await Promise.all(users.slice(31, 61).map((u) => device(t.mqttUrl, u, 'phone', false)))
    await Promise.all(away.map((d) => d.client.endAsync()))
    for (let i = 0; i < 5; i++) await send(owner, group, `k${i}`, `to a thousand ${i}`)
    for (const d of online) await eventually(() => d.messages.length === 5, 10_000, 'online members got all five')

    const back = await device(t.mqttUrl, users[31]!, 'phone', false)
    const sync = await back.rpc('messages.sync', { conversation: { kind: 'group', id: group }, afterSeq: 0 })
    assert.deepEqual((sync.result as { messages: MessageEnvelope[] }).messages.map((m) => [m.seq, m.type]), [[1, 'system'], [2, 'text'], [3, 'text'], [4, 'text'], [5, 'text'], [6, 'text']], 'the store has them')
    assert.equal(back.messages.length + back.notices.length, 0, 'the session store held no copy of the group messages')
    assert.equal((await owner.rpc('groups.add', { group, users: Array.from({ length: 30 }, (_, i) => `extra${i}`) })).error?.code, 'invalid_params', 'the size limit holds')
    await Promise.all([owner, back, ...online].map((d) => d.client.endAsync()))
  })
})
