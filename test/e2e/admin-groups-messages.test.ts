// Groups and messages in `parley admin`, against a real two-node cluster (Redis, MongoDB) with the
// default plugins and real chat devices on both nodes: operators create groups and change their
// members and the members see the same effects as from the members' own RPCs (Events, notices,
// who may post, on either node); history of a conversation (table and --json); notices to a user
// and to a group; usage, not-found and scope errors; and the messaging metrics moving on /metrics.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { IClientOptions } from 'mqtt'
import { AuthJwtConfig } from '../../plugins/auth-jwt/config.js'
import { mintToken } from '../../plugins/auth-jwt/keys.js'
import type { Event } from '../../schemas/protocol.js'
import { adminCli, adminRequest, createKey } from '../helpers/admin.js'
import { eventually, startBroker, type BrokerProcess } from '../helpers/broker-process.js'
import { testDevice, type TestDevice } from '../helpers/device.js'
import { mongoTestDb, mongoUrl, redisDb } from '../helpers/services.js'

const SECRET = randomBytes(32).toString('base64url')
const MAX_MEMBERS = 5
const authConfig = AuthJwtConfig.parse({ hs256: { secret: SECRET } })

interface GroupView {
  id: string
  name: string
  createdBy: string
  members: Array<{ user: string; role: string }>
}
interface AdminMessage {
  seq: number
  from: { user: string; device: string }
  type: string
  body?: string
  e2e: boolean
  notice?: { change: string; by: string; users?: string[] }
}

/** The sum of a metric's samples whose labels include `labels`, from a node's /metrics. */
async function metric(b: BrokerProcess, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${b.ports.ops}/metrics`)).text()
  let total = 0
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN)$/.exec(line)
    if (!m || m[1] !== name) continue
    const have = new Map([...(m[2] ?? '').matchAll(/([a-z_]+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]))
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) total += Number(m[3])
  }
  return total
}

const groupEvents = (d: TestDevice, group: string) => d.events.filter((e): e is Extract<Event, { type: 'group' }> => e.type === 'group' && e.group === group)
const noticesOf = (d: TestDevice, conversationId: string) => d.notices.filter((n) => n.conversation.id === conversationId)

describe('parley admin groups and messages on a two-node cluster', () => {
  let a: BrokerProcess
  let b: BrokerProcess
  let configDir: string
  let dropDb: () => Promise<void>
  let adminKey: string
  let operatorKey: string
  let readKey: string
  const devices: TestDevice[] = []
  const url = (n: BrokerProcess) => `mqtt://127.0.0.1:${n.ports.tcp}`
  const device = async (node: BrokerProcess, user: string, dev = 'phone', options: IClientOptions = {}) => {
    const password = await mintToken(authConfig, node.dataDir, { userId: user, deviceId: dev, ttlSeconds: 600 })
    const d = await testDevice(url(node), user, dev, { username: user, password, ...options })
    devices.push(d)
    return d
  }
  const cli = (node: BrokerProcess, key: string, args: string[]) => adminCli(node.ports.ops!, key, args)

  let alice: TestDevice // node a
  let bob: TestDevice // node b
  let carol: TestDevice // node a
  let dave: TestDevice // node b
  let group = ''

  before(async () => {
    configDir = mkdtempSync(join(tmpdir(), 'parley-admin-gm-'))
    const file = join(configDir, 'parley.json')
    // The default plugins; a shared token secret (both nodes accept the same tokens) and a small group limit.
    writeFileSync(
      file,
      JSON.stringify({
        plugins: [
          { use: 'auth-jwt', config: { hs256: { secret: SECRET } } },
          'limits',
          'protocol',
          { use: 'groups', config: { maxMembers: MAX_MEMBERS } },
          'messages',
          'presence',
          'media',
          'push'
        ]
      })
    )
    const mongo = await mongoTestDb('parley_admin_groups')
    dropDb = mongo.done
    const env = { REDIS_URL: redisDb(42), MONGO_URL: mongoUrl(), MONGO_DATABASE: mongo.db.databaseName }
    ;[a, b] = await Promise.all([
      startBroker({ args: ['--config', file], env: { ...env, PARLEY_NODE_NAME: 'gm-a' } }),
      startBroker({ args: ['--config', file], env: { ...env, PARLEY_NODE_NAME: 'gm-b' } })
    ])
    // Keys live in MongoDB: made on node a, they work on node b too.
    ;[adminKey, operatorKey, readKey] = await Promise.all([
      createKey(a.ports.ops!, a.dataDir, 'admin'),
      createKey(a.ports.ops!, a.dataDir, 'operator'),
      createKey(a.ports.ops!, a.dataDir, 'read')
    ])
    ;[alice, bob, carol, dave] = await Promise.all([device(a, 'alice'), device(b, 'bob'), device(a, 'carol'), device(b, 'dave')])
  })

  after(async () => {
    await Promise.all(devices.map((d) => d.client.endAsync(true).catch(() => undefined)))
    await Promise.all([a?.stop(), b?.stop()])
    await dropDb?.()
    if (configDir) rmSync(configDir, { recursive: true, force: true })
  })

  it('groups create: the members on both nodes get the "created" Event and notice, by the system user', async () => {
    const created = await cli(a, operatorKey, ['groups', 'create', '--name', 'Night shift', '--owner', 'alice', '--members', 'bob,carol', '--json'])
    assert.equal(created.code, 0, created.stderr)
    const g = created.json<GroupView>()
    group = g.id
    assert.deepEqual([g.name, g.createdBy, g.members.map((m) => [m.user, m.role])], [
      'Night shift',
      'alice',
      [
        ['alice', 'admin'],
        ['bob', 'member'],
        ['carol', 'member']
      ]
    ])
    for (const d of [alice, bob, carol]) {
      await eventually(() => groupEvents(d, group).some((e) => e.change === 'created'), 10_000, `${d.user} told of the group`)
      await eventually(() => noticesOf(d, group).length === 1, 10_000, `${d.user} gets the created notice`)
    }
    assert.deepEqual(
      groupEvents(bob, group).map((e) => [e.change, e.by, e.users]),
      [['created', 'parley', ['alice', 'bob', 'carol']]]
    )
    const notice = noticesOf(bob, group)[0]!
    assert.deepEqual([notice.seq, notice.from, notice.notice?.change, notice.notice?.by], [1, { user: 'parley', device: 'server' }, 'created', 'parley'])
    assert.equal(groupEvents(dave, group).length, 0, 'dave is not a member')

    // The members can post at once, from either node.
    await bob.send({ g: group }, { cmid: 'b1', body: 'evening all' })
    await eventually(() => alice.messages.some((m) => m.body === 'evening all'), 10_000, 'a member on node b reaches node a')
  })

  it('groups add: the new member is told and may post at once, even with a cached "no" on its node; groups.maxMembers holds', async () => {
    // dave's node learns (and caches) that he is not a member.
    await dave.send({ g: group }, { cmid: 'd0', body: 'let me in' })
    await eventually(() => dave.errors.some((e) => e.code === 'not_a_member' && e.ref.cmid === 'd0'), 10_000, 'dave refused before being added')

    const added = await cli(a, operatorKey, ['groups', 'add', group, 'dave'])
    assert.equal(added.code, 0, added.stderr)
    assert.equal(added.stdout.trim(), `added to ${group}: dave`)
    await eventually(() => groupEvents(dave, group).some((e) => e.change === 'added'), 10_000, 'dave told')
    assert.deepEqual(groupEvents(alice, group).at(-1)!.users, ['dave'])
    await eventually(() => noticesOf(carol, group).some((n) => n.notice?.change === 'added'), 10_000, 'the added notice')

    // Node a made the change; node b's cached "no" was dropped by the cluster broadcast.
    await dave.send({ g: group }, { cmid: 'd1', body: 'dave here' })
    await eventually(() => alice.messages.some((m) => m.body === 'dave here'), 10_000, 'dave posts once added')

    const again = await cli(b, operatorKey, ['groups', 'add', group, 'dave', '--json'])
    assert.deepEqual(again.json(), { group, added: [], already: ['dave'] })

    // 4 members; 2 more would make 6 > 5.
    const over = await cli(b, operatorKey, ['groups', 'add', group, 'erin,frank'])
    assert.equal(over.code, 6, over.stderr)
    assert.match(over.stderr, /at most 5 members/)
    const shown = (await cli(b, readKey, ['groups', 'show', group, '--json'])).json<GroupView>()
    assert.deepEqual(shown.members.map((m) => m.user), ['alice', 'bob', 'carol', 'dave'], 'nothing added over the limit')
  })

  it('groups remove: the removed member is told and can no longer post; removing the last admin promotes the longest-standing member', async () => {
    // carol's "yes" is cached on node a; the removal is made on node b.
    await carol.send({ g: group }, { cmid: 'c1', body: 'carol was here' })
    const removed = await cli(b, operatorKey, ['groups', 'remove', group, 'carol', '--json'])
    assert.equal(removed.code, 0, removed.stderr)
    assert.deepEqual(removed.json(), { group, removed: ['carol'] })
    await eventually(() => groupEvents(carol, group).some((e) => e.change === 'removed'), 10_000, 'carol told')
    await eventually(() => noticesOf(alice, group).some((n) => n.notice?.change === 'removed'), 10_000, 'the members see the notice')
    await carol.send({ g: group }, { cmid: 'c2', body: 'still here?' })
    await eventually(() => carol.errors.some((e) => e.code === 'not_a_member' && e.ref.cmid === 'c2'), 10_000, 'carol refused once removed')
    assert.ok(!alice.messages.some((m) => m.body === 'still here?'))

    const missing = await cli(a, operatorKey, ['groups', 'remove', group, 'bob', 'carol'])
    assert.equal(missing.code, 3, 'carol is no member: nothing is removed')
    assert.match(missing.stderr, /not members of group .*: carol/)

    const owner = await cli(a, operatorKey, ['groups', 'remove', group, 'alice'])
    assert.equal(owner.code, 0, owner.stderr)
    assert.match(owner.stdout, /bob is now an admin/)
    await eventually(() => groupEvents(bob, group).some((e) => e.change === 'promoted' && e.users?.[0] === 'bob'), 10_000, 'bob promoted')
    // Alice is out; the owner field still names who the group was created for.
    await alice.send({ g: group }, { cmid: 'a-out', body: 'hello?' })
    await eventually(() => alice.errors.some((e) => e.code === 'not_a_member' && e.ref.cmid === 'a-out'), 10_000, 'alice refused once removed')
    await cli(a, operatorKey, ['groups', 'add', group, 'alice'])
    await eventually(() => groupEvents(alice, group).some((e) => e.change === 'added'), 10_000, 'alice back')
  })

  it('groups list and show; the groups section of a user', async () => {
    const shown = await cli(a, readKey, ['groups', 'show', group])
    assert.equal(shown.code, 0, shown.stderr)
    assert.match(shown.stdout, /^group: +\S+/m)
    assert.match(shown.stdout, /^name: +Night shift$/m)
    assert.match(shown.stdout, /^owner: +alice$/m)
    assert.match(shown.stdout, /^admins: +bob$/m)
    assert.match(shown.stdout, /^USER +ROLE +JOINED$/m)
    assert.match(shown.stdout, /^bob +admin +\d{4}-/m)
    assert.match(shown.stdout, /^dave +member +\d{4}-/m)

    const other = (await cli(b, operatorKey, ['groups', 'create', '--name', 'Day shift', '--owner', 'dave', '--json'])).json<GroupView>()
    const all = (await cli(b, readKey, ['groups', 'list', '--json'])).json<{ groups: Array<{ id: string; members: number }> }>()
    // bob (admin), dave, alice (added back).
    assert.deepEqual(all.groups.map((g) => [g.id, g.members]), [
      [group, 3],
      [other.id, 1]
    ])
    const page = await cli(b, readKey, ['groups', 'list', '--limit', '1'])
    assert.equal(page.code, 0, page.stderr)
    assert.match(page.stdout, /^GROUP +NAME +MEMBERS +OWNER +CREATED$/m)
    assert.match(page.stdout, new RegExp(`^${group} +Night shift +3 +alice`, 'm'))
    const next = /--after (\S+)/.exec(page.stderr)?.[1]
    assert.ok(next, page.stderr)
    const rest = (await cli(b, readKey, ['groups', 'list', '--limit', '1', '--after', next, '--json'])).json<{ groups: Array<{ id: string }>; next?: string }>()
    assert.deepEqual([rest.groups.map((g) => g.id), rest.next], [[other.id], undefined])

    const daves = await cli(a, readKey, ['groups', 'list', '--user', 'dave'])
    assert.match(daves.stdout, /ROLE$/m)
    assert.match(daves.stdout, new RegExp(`^${group} +Night shift .* member$`, 'm'))
    assert.match(daves.stdout, new RegExp(`^${other.id} +Day shift .* admin$`, 'm'))

    const user = await adminRequest<{ facets: { groups: Array<{ id: string; name: string; role: string }> } }>(a.ports.ops!, readKey, 'GET', '/users/dave')
    assert.deepEqual(user.body.facets.groups, [
      { id: group, name: 'Night shift', role: 'member' },
      { id: other.id, name: 'Day shift', role: 'admin' }
    ])
  })

  it('messages history: a one-to-one conversation as a table and as JSON, paged; a group with its notices', async () => {
    const long = `a long message ${'x'.repeat(100)} end`
    await alice.send({ dm: 'bob' }, { cmid: 'h1', body: 'hi bob' })
    await bob.send({ dm: 'alice' }, { cmid: 'h2', body: 'hi alice\nhow are you' })
    await alice.send({ dm: 'bob' }, { cmid: 'h3', body: 'c2VjcmV0IGNpcGhlcnRleHQ', e2e: true })
    await bob.send({ dm: 'alice' }, { cmid: 'h4', body: long })

    const table = await cli(b, adminKey, ['messages', 'history', 'dm:bob:alice'])
    assert.equal(table.code, 0, table.stderr)
    const lines = table.stdout.trim().split('\n')
    assert.match(lines[0]!, /^SEQ +TIME +SENDER +TYPE +BODY$/)
    assert.match(lines[1]!, /^1 +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +alice:phone +text +hi bob$/)
    assert.match(lines[2]!, /^2 +\S+ +bob:phone +text +hi alice how are you$/)
    assert.match(lines[3]!, /^3 +\S+ +alice:phone +text +\[encrypted\]$/)
    assert.match(lines[4]!, /^4 +\S+ +bob:phone +text +a long message x+…$/)
    assert.ok(!table.stdout.includes('c2VjcmV0'), 'no ciphertext in the table')
    assert.ok(!table.stdout.includes(' end'), 'long bodies are cut')

    const json = (await cli(a, adminKey, ['messages', 'history', 'dm:alice:bob', '--json'])).json<{ conversation: string; lastSeq: number; hasMore: boolean; messages: AdminMessage[] }>()
    assert.deepEqual([json.conversation, json.lastSeq, json.hasMore], ['dm:alice:bob', 4, false])
    assert.deepEqual(json.messages.map((m) => [m.seq, m.from.user, m.body, m.e2e]), [
      [1, 'alice', 'hi bob', false],
      [2, 'bob', 'hi alice\nhow are you', false],
      [3, 'alice', 'c2VjcmV0IGNpcGhlcnRleHQ', true],
      [4, 'bob', long, false]
    ])

    const newest = await cli(a, adminKey, ['messages', 'history', 'dm:alice:bob', '--limit', '2', '--json'])
    assert.deepEqual(newest.json<{ messages: AdminMessage[]; hasMore: boolean }>().messages.map((m) => m.seq), [3, 4])
    const older = await cli(a, adminKey, ['messages', 'history', 'dm:alice:bob', '--limit', '2'])
    assert.match(older.stderr, /older: --before 3/)
    const forward = (await cli(a, adminKey, ['messages', 'history', 'dm:alice:bob', '--after', '1', '--limit', '1', '--json'])).json<{ messages: AdminMessage[]; hasMore: boolean }>()
    assert.deepEqual([forward.messages.map((m) => m.seq), forward.hasMore], [[2], true])
    const back = (await cli(a, adminKey, ['messages', 'history', 'dm:alice:bob', '--before', '3', '--json'])).json<{ messages: AdminMessage[]; hasMore: boolean }>()
    assert.deepEqual([back.messages.map((m) => m.seq), back.hasMore], [[1, 2], false])

    const groupHistory = await cli(b, adminKey, ['messages', 'history', `group:${group}`])
    assert.equal(groupHistory.code, 0, groupHistory.stderr)
    assert.match(groupHistory.stdout, /^1 +\S+ +parley:server +system +\[group\] created "Night shift" by parley$/m)
    assert.match(groupHistory.stdout, /bob:phone +text +evening all$/m)
    assert.match(groupHistory.stdout, /parley:server +system +\[group\] removed carol by parley$/m)
    assert.match(groupHistory.stdout, /parley:server +system +\[group\] promoted bob by parley$/m)

    // History reads private messages: an operator key is not enough.
    const denied = await cli(a, operatorKey, ['messages', 'history', 'dm:alice:bob'])
    assert.equal(denied.code, 4)
    assert.match(denied.stderr, /needs admin/)
    // And the read is in the audit log of the node that answered.
    await eventually(
      () => b.logs.some((l) => l.msg === 'admin audit' && (l.audit as { conversation?: string } | undefined)?.conversation === 'dm:alice:bob'),
      5000,
      'an audit line for the history read'
    )
  })

  it('messages send: a notice reaches every device of a user, and every member of a group, and is in history', async () => {
    const tablet = await device(a, 'bob', 'tablet')
    const toBob = await cli(a, operatorKey, ['messages', 'send', '--to-user', 'bob', '--text', 'Maintenance at 22:00 UTC', '--json'])
    assert.equal(toBob.code, 0, toBob.stderr)
    const sent = toBob.json<{ conversation: string; seq: number; recipients: number }>()
    assert.deepEqual([sent.conversation, sent.seq, sent.recipients], ['dm:bob:parley', 1, 1])
    for (const d of [bob, tablet]) {
      await eventually(() => noticesOf(d, 'parley').length === 1, 10_000, `bob:${d.device} gets the notice`)
      const n = noticesOf(d, 'parley')[0]!
      assert.deepEqual([n.type, n.body, n.from, n.conversation, n.seq], ['system', 'Maintenance at 22:00 UTC', { user: 'parley', device: 'server' }, { kind: 'dm', id: 'parley' }, 1])
    }
    const inHistory = (await cli(b, adminKey, ['messages', 'history', 'dm:parley:bob', '--json'])).json<{ messages: AdminMessage[] }>()
    assert.deepEqual(inHistory.messages.map((m) => [m.type, m.body, m.from.user]), [['system', 'Maintenance at 22:00 UTC', 'parley']])
    // Bob's app lists it like any conversation (the list trails the store a little).
    await eventually(
      async () => (await bob.call<{ conversations: Array<{ conversation: { id: string } }> }>('conversations.list')).conversations.some((c) => c.conversation.id === 'parley'),
      10_000,
      'the notice conversation in bob\'s list'
    )
    // Nobody reads the system user's side: writing to it is refused.
    await bob.send({ dm: 'parley' }, { cmid: 'to-parley', body: 'thanks' })
    await eventually(() => bob.errors.some((e) => e.code === 'forbidden' && e.ref.cmid === 'to-parley'), 10_000, 'a message to the system user is refused')

    const toGroup = await cli(b, operatorKey, ['messages', 'send', '--to-group', group, '--text', 'Shift swap board is open'])
    assert.equal(toGroup.code, 0, toGroup.stderr)
    assert.match(toGroup.stdout, new RegExp(`stored as seq \\d+ of group:${group}, sent to 3 users`))
    for (const d of [alice, bob, tablet, dave]) {
      await eventually(() => noticesOf(d, group).some((n) => n.body === 'Shift swap board is open'), 10_000, `${d.user}:${d.device} gets the group notice`)
    }
    assert.ok(!noticesOf(carol, group).some((n) => n.body === 'Shift swap board is open'), 'a removed member gets nothing')
    const history = await cli(a, adminKey, ['messages', 'history', `group:${group}`, '--limit', '1'])
    assert.match(history.stdout, /parley:server +system +\[notice\] Shift swap board is open$/m)
  })

  it('refuses bad input locally (exit 2), unknown groups (exit 3) and keys without the scope (exit 4)', async () => {
    // A node that is not there: only a request could fail with exit 5, so exit 2 proves no request was made.
    const offline = (args: string[]) => adminCli(1, operatorKey, args)
    for (const args of [
      ['messages', 'history', 'dm:alice'],
      ['messages', 'history', 'chat:alice:bob'],
      ['messages', 'history', 'group:bad id'],
      ['messages', 'history', 'dm:alice:bob', '--before', 'x'],
      ['messages', 'send', '--to-user', 'bob', '--to-group', 'g1', '--text', 'x'],
      ['messages', 'send', '--to-user', 'bob'],
      ['groups', 'show', 'bad/id'],
      ['groups', 'create', '--name', 'X'],
      ['groups', 'create', '--name', 'X', '--owner', 'alice', '--members', 'bob,not ok'],
      ['groups', 'list', '--limit', '0']
    ]) {
      const r = await offline(args)
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`)
    }
    assert.match((await offline(['messages', 'history', 'dm:alice'])).stderr, /expected dm:<userA>:<userB> or group:<groupId>/)

    for (const args of [
      ['groups', 'show', 'nosuchgroup'],
      ['groups', 'add', 'nosuchgroup', 'bob'],
      ['groups', 'remove', 'nosuchgroup', 'bob'],
      ['messages', 'history', 'group:nosuchgroup'],
      ['messages', 'send', '--to-group', 'nosuchgroup', '--text', 'hello']
    ]) {
      const r = await cli(a, adminKey, args)
      assert.equal(r.code, 3, `${args.join(' ')}: ${r.stderr}`)
      assert.match(r.stderr, /no group nosuchgroup/)
    }

    const readOnly = await cli(b, readKey, ['groups', 'create', '--name', 'Nope', '--owner', 'alice'])
    assert.equal(readOnly.code, 4)
    assert.match(readOnly.stderr, /scope read; POST \/groups needs operator/)
    assert.equal((await cli(b, readKey, ['messages', 'send', '--to-user', 'bob', '--text', 'x'])).code, 4)
    // The system user is reserved: it cannot be a member.
    const reserved = await cli(a, operatorKey, ['groups', 'add', group, 'parley'])
    assert.equal(reserved.code, 2)
    assert.match(reserved.stderr, /system user|own user id/)
  })

  it('exports the messaging metrics, and they move with traffic', async () => {
    // erin keeps a persistent session: her PUBACKs tell node a which one-to-one message arrived.
    const erin = await device(a, 'erin', 'phone', { clean: false })
    const laptop = await device(a, 'dave', 'laptop')
    const names = {
      inDm: ['parley_messages_in_total', { kind: 'dm' }],
      inGroup: ['parley_messages_in_total', { kind: 'group' }],
      inAck: ['parley_messages_in_total', { kind: 'ack' }],
      inDelivered: ['parley_messages_in_total', { kind: 'delivered' }],
      inRead: ['parley_messages_in_total', { kind: 'read' }],
      outDm: ['parley_messages_out_total', { kind: 'dm' }],
      outGroup: ['parley_messages_out_total', { kind: 'group' }],
      outNotice: ['parley_messages_out_total', { kind: 'notice' }],
      inNotice: ['parley_messages_in_total', { kind: 'notice' }],
      storeOk: ['parley_messages_store_append_seconds_count', { outcome: 'ok' }],
      puback: ['parley_messages_delivery_seconds_count', { kind: 'dm', via: 'puback' }],
      marker: ['parley_messages_delivery_seconds_count', { kind: 'group', via: 'marker' }],
      movedDelivered: ['parley_receipt_markers_moved_total', { marker: 'delivered', kind: 'group' }],
      movedRead: ['parley_receipt_markers_moved_total', { marker: 'read', kind: 'dm' }],
      receiptRead: ['parley_receipts_sent_total', { kind: 'read' }],
      receiptDelivered: ['parley_receipts_sent_total', { kind: 'delivered' }],
      summaries: ['parley_receipts_sent_total', { kind: 'group' }],
      sync: ['parley_sync_request_seconds_count', { method: 'sync', outcome: 'ok' }],
      pull: ['parley_sync_request_seconds_count', { method: 'pull', outcome: 'ok' }],
      synced: ['parley_sync_messages_total', { method: 'sync' }]
    } as const
    const read = async () => Object.fromEntries(await Promise.all(Object.entries(names).map(async ([k, [n, l]]) => [k, await metric(a, n, l)] as const))) as Record<keyof typeof names, number>
    const before = await read()

    // All on node a: a one-to-one message to a persistent session (PUBACK), a read of it (receipt),
    // a group message and a delivered marker for it from another member (summary), a sync and a pull.
    await alice.send({ dm: 'erin' }, { cmid: 'm1', body: 'for erin' })
    await eventually(() => erin.messages.some((m) => m.body === 'for erin'), 10_000, 'erin gets it')
    await erin.publish('s/read', { conversation: { kind: 'dm', id: 'alice' }, seq: 1 })
    await eventually(() => alice.receipts.some((r) => r.kind === 'read' && r.conversation.id === 'erin'), 10_000, 'alice gets the read receipt')
    await alice.send({ g: group }, { cmid: 'm2', body: 'group traffic' })
    await eventually(() => alice.messages.some((m) => m.body === 'group traffic'), 10_000, 'the group message')
    const seq = alice.messages.find((m) => m.body === 'group traffic')!.seq
    await eventually(() => laptop.messages.some((m) => m.seq === seq && m.conversation.id === group), 10_000, "dave's laptop (node a) gets it")
    await laptop.publish('s/delivered', { conversation: { kind: 'group', id: group }, seq })
    await eventually(() => alice.receipts.some((r) => r.kind === 'group' && r.conversation.id === group), 10_000, 'alice gets a group summary')
    await alice.call('messages.sync', { conversation: { kind: 'dm', id: 'bob' }, afterSeq: 0 })
    await alice.call('messages.pull', {})
    await cli(a, operatorKey, ['messages', 'send', '--to-group', group, '--text', 'metrics notice'])

    const growing: Array<keyof typeof names> = [
      'inDm', 'inGroup', 'inRead', 'inDelivered', 'inNotice', 'outDm', 'outGroup', 'outNotice', 'storeOk',
      'movedDelivered', 'movedRead', 'receiptRead', 'summaries', 'sync', 'pull', 'synced', 'marker'
    ]
    await eventually(
      async () => {
        const now = await read()
        return growing.every((k) => now[k] > before[k]) && now.inAck > before.inAck && now.puback > before.puback
      },
      10_000,
      'every messaging metric moved'
    ).catch(async (err: Error) => {
      const now = await read()
      throw new Error(`${err.message}: ${JSON.stringify(Object.fromEntries(Object.keys(names).map((k) => [k, [before[k as keyof typeof names], now[k as keyof typeof names]]])))}`)
    })
    // Every metric has its help text and type, as Prometheus wants.
    const text = await (await fetch(`http://127.0.0.1:${a.ports.ops}/metrics`)).text()
    for (const [name, type] of [
      ['parley_messages_in_total', 'counter'],
      ['parley_messages_out_total', 'counter'],
      ['parley_messages_store_append_seconds', 'histogram'],
      ['parley_messages_delivery_seconds', 'histogram'],
      ['parley_receipt_markers_moved_total', 'counter'],
      ['parley_receipts_sent_total', 'counter'],
      ['parley_sync_request_seconds', 'histogram'],
      ['parley_sync_messages_total', 'counter'],
      ['parley_pull_resets_total', 'counter']
    ]) {
      assert.match(text, new RegExp(`^# TYPE ${name} ${type}$`, 'm'))
      assert.match(text, new RegExp(`^# HELP ${name} \\S`, 'm'))
    }
  })
})
