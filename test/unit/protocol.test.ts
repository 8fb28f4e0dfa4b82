import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { Ajv2020 } from 'ajv/dist/2020.js'
import { parseClientId } from '../../schemas/identity.js'
import {
  DOWN,
  ErrorMessage,
  MessageEnvelope,
  PAYLOAD_SCHEMAS,
  ReadMarker,
  RpcRequest,
  SendMessage,
  UP,
  parseDownTopic,
  parseUpTopic
} from '../../schemas/protocol.js'
import { renderSchemas, staleSchemas } from '../../scripts/gen-schemas.js'

describe('protocol topics', () => {
  it('parses every upstream topic and nothing else', () => {
    assert.deepEqual(parseUpTopic(UP.dm('bob')), { kind: 'dm', peer: 'bob' })
    assert.deepEqual(parseUpTopic(UP.group('team-1')), { kind: 'group', groupId: 'team-1' })
    assert.deepEqual(parseUpTopic(UP.read), { kind: 'read' })
    assert.deepEqual(parseUpTopic(UP.rpc), { kind: 'rpc' })
    assert.deepEqual(parseUpTopic(UP.typing('g', 'team-1')), { kind: 'typing', conversation: { kind: 'group', id: 'team-1' } })
    for (const bad of ['s/dm', 's/dm/bob/x', 's/dm/b@d', 's/g/', 's/rpc/x', 'u/bob/m', 'x/dm/bob', 's/typing/x/bob', '', 's//rpc']) {
      assert.equal(parseUpTopic(bad), undefined, bad)
    }
  })

  it('parses downstream topics into the user and device they address', () => {
    assert.deepEqual(parseDownTopic(DOWN.messages('alice')), { userId: 'alice' })
    assert.deepEqual(parseDownTopic(DOWN.responses('alice', 'phone')), { userId: 'alice', deviceId: 'phone' })
    assert.equal(parseDownTopic('u/alice/d'), undefined, 'a device topic without a device')
    assert.equal(parseDownTopic('u/al:ice/m'), undefined)
    assert.equal(parseDownTopic('s/rpc'), undefined)
  })

  it('parses client ids as <userId>:<deviceId>', () => {
    assert.deepEqual(parseClientId('alice:phone-1'), { userId: 'alice', deviceId: 'phone-1' })
    for (const bad of ['alice', 'alice:', ':phone', 'a:b:c', 'al ice:phone', `${'x'.repeat(65)}:p`]) {
      assert.equal(parseClientId(bad), undefined, bad)
    }
  })
})

describe('payload schemas', () => {
  it('refuse what the server stamps itself and unknown fields', () => {
    const spoof = SendMessage.safeParse({ cmid: 'c1', body: 'hi', from: 'bob' })
    assert.equal(spoof.success, false)
    assert.equal(spoof.error?.issues[0]?.code, 'unrecognized_keys')
    assert.deepEqual(SendMessage.parse({ cmid: 'c1', body: 'hi' }), { cmid: 'c1', type: 'text', body: 'hi', e2e: false })
    assert.equal(SendMessage.safeParse({ cmid: 'c1', body: '' }).success, false, 'empty body')
    assert.equal(ReadMarker.safeParse({ conversation: { kind: 'dm', id: 'bob' }, seq: -1 }).success, false)
    assert.equal(RpcRequest.safeParse({ id: 'r1', method: 'Ping!' }).success, false)
  })

  it('are published as JSON Schema files that are up to date (run `npm run schemas`)', () => {
    assert.deepEqual(staleSchemas(), [])
  })

  it('as JSON Schema accept and refuse the same payloads as the zod schemas', () => {
    const ajv = new Ajv2020({ strict: false })
    const files = renderSchemas()
    const check = (name: keyof typeof PAYLOAD_SCHEMAS, value: unknown) => {
      const id = `https://parley.invalid/schemas/${name}.schema.json`
      const validate = ajv.getSchema(id) ?? ajv.compile(JSON.parse(files.get(`${name}.schema.json`)!) as object)
      assert.equal(validate(value), PAYLOAD_SCHEMAS[name].safeParse(value).success, `${name}: ${JSON.stringify(value)}`)
    }
    const cases: Array<[keyof typeof PAYLOAD_SCHEMAS, unknown]> = [
      ['SendMessage', { cmid: 'c1', body: 'hello' }],
      ['SendMessage', { cmid: 'c1', body: 'hello', sender: 'bob' }],
      ['SendMessage', { cmid: 'c 1', body: 'hello' }],
      ['SendMessage', { cmid: 'c1', body: 'x'.repeat(16_385) }],
      ['ReadMarker', { conversation: { kind: 'group', id: 'g1' }, seq: 3 }],
      ['ReadMarker', { conversation: { kind: 'channel', id: 'g1' }, seq: 3 }],
      ['RpcRequest', { id: 'r1', method: 'ping' }],
      ['RpcRequest', { method: 'ping' }],
      ['ErrorMessage', { code: 'rate_limited', message: 'slow down', ref: { topic: 's/dm/bob', cmid: 'c1' }, retryAfterMs: 50, ts: 1 }],
      ['ErrorMessage', { code: 'nope', message: 'x', ref: { topic: 't' }, ts: 1 }],
      ['RpcResponse', { id: 'r1', ok: true, result: { pong: true } }],
      ['RpcResponse', { id: 'r1', ok: false, error: { code: 'unknown_method', message: 'x' } }],
      ['RpcResponse', { id: 'r1', ok: false, result: 1 }],
      ['Event', { type: 'presence', user: 'bob', online: true }],
      ['Event', { type: 'mood', user: 'bob' }]
    ]
    for (const [name, value] of cases) check(name, value)
    const envelope = { id: 'm1', seq: 1, conversation: { kind: 'dm', id: 'bob' }, from: { user: 'alice', device: 'phone' }, cmid: 'c1', type: 'text', body: 'hi', e2e: false, ts: 1 }
    assert.ok(MessageEnvelope.safeParse(envelope).success)
    check('MessageEnvelope', envelope)
    assert.ok(ErrorMessage.safeParse({ code: 'forbidden', message: 'no', ref: { topic: 'u/bob/m' }, ts: 2 }).success)
  })
})
