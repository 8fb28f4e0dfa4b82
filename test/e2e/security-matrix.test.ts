// Security matrix: one real `parley start` process with the default plugins (auth-jwt, limits,
// protocol) and tightened limits, attacked over real MQTT (mqtt.js and Debian's mosquitto clients)
// while a control pair of legitimate devices (alice:phone, bob:phone) keeps working.
// Every refusal is asserted precisely: the CONNACK code and the refusal reason the node counts,
// the SUBACK failure, or the exact ErrorMessage on the publisher's own error topic.
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { SignJWT, generateKeyPair, type JWTPayload } from 'jose'
import type { IClientOptions, MqttClient } from 'mqtt'
import { stringify as toYaml } from 'yaml'
import { AuthJwtConfig } from '../../plugins/auth-jwt/config.js'
import { loadHs256Secret, mintToken } from '../../plugins/auth-jwt/keys.js'
import { ErrorMessage, RpcResponse } from '../../schemas/protocol.js'
import { eventually, isolatedEnv, runParley, startBroker, type BrokerProcess } from '../helpers/broker-process.js'
import { connackCode as connackCodeOf, connectClient } from '../helpers/node.js'

// ---------------------------------------------------------------------------------------------
// Configuration: small limits so that floods are cheap to trigger.
// ---------------------------------------------------------------------------------------------

const LIMITS = {
  maxPayloadBytes: 2048,
  maxTopicBytes: 128,
  maxTopicLevels: 6,
  maxSubscriptionsPerClient: 4,
  // A QoS 1 publish over the rate is held up to publish.maxDelayMs (default 2000), a QoS 0 one is
  // refused at once.
  publish: { messagesPerSecond: 2, burstMessages: 30 },
  // Every client of this test connects from 127.0.0.1: the burst covers the whole run, and the
  // last test spends what is left.
  connections: { perIpPerSecond: 2, burstPerIp: 100 },
  keepalive: { minSeconds: 5, maxSeconds: 300 }
}
/**
 * The core disconnects a client rejected more than mqtt.maxRejectionsPerSecond (default 10) times in
 * one second. The attacks that must be answered are spread over devices so that none of them is
 * refused more than this many times in all: the disconnection is tested on purpose, in 4.
 */
const ANSWERED_REJECTIONS_PER_DEVICE = 8

const WAIT_MS = 10_000

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

interface Msg {
  topic: string
  payload: string
}

/** Every message a client receives; `take` consumes the first unread one that matches, within a bound. */
class Inbox {
  readonly all: Msg[] = []
  private readonly unread: Msg[] = []
  private readonly waiters = new Set<() => void>()

  constructor(client: MqttClient) {
    client.on('message', (topic, payload) => {
      const m = { topic, payload: payload.toString() }
      this.all.push(m)
      this.unread.push(m)
      for (const w of [...this.waiters]) w()
    })
  }

  take(match: (m: Msg) => boolean, what: string, timeoutMs = WAIT_MS): Promise<Msg> {
    return new Promise((resolve, reject) => {
      const waiter = (): void => {
        const i = this.unread.findIndex(match)
        if (i < 0) return
        const [m] = this.unread.splice(i, 1)
        cleanup()
        resolve(m!)
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`${what}: nothing within ${timeoutMs} ms (unread: ${JSON.stringify(this.unread)})`))
      }, timeoutMs)
      const cleanup = (): void => {
        clearTimeout(timer)
        this.waiters.delete(waiter)
      }
      this.waiters.add(waiter)
      waiter()
    })
  }
}

function json(payload: string): unknown {
  try {
    return JSON.parse(payload) as unknown
  } catch {
    return undefined
  }
}

function field(payload: string, key: string): unknown {
  const v = json(payload)
  return typeof v === 'object' && v !== null ? (v as Record<string, unknown>)[key] : undefined
}

interface Device {
  userId: string
  deviceId: string
  client: MqttClient
  inbox: Inbox
}

const resTopic = (d: Pick<Device, 'userId' | 'deviceId'>) => `u/${d.userId}/d/${d.deviceId}/res`
const errTopic = (d: Pick<Device, 'userId' | 'deviceId'>) => `u/${d.userId}/d/${d.deviceId}/err`

/**
 * MQTT 3.1.1 sends a password only with a user name (mqtt.js refuses to write one without), so a
 * client that leaves the user name out sends an empty one, which auth-jwt treats as absent.
 */
const NO_USERNAME = { username: '' } as const

/** CONNACK code of an attempt (see the helper), sending an empty username unless one is given. */
const connackCode = (url: string, options: IClientOptions) => connackCodeOf(url, { ...NO_USERNAME, ...options })

function bounded<T>(work: Promise<T>, what: string, timeoutMs = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    work,
    new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${timeoutMs} ms`)), timeoutMs)
    })
  ]).finally(() => clearTimeout(timer))
}

/** Runs a command to completion (killed after a bound) and returns its exit code and output. */
function run(cmd: string, args: string[], timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${cmd} ${args.join(' ')} did not exit within ${timeoutMs} ms; stdout: ${stdout}; stderr: ${stderr}`))
    }, timeoutMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}

function hasCommand(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** `{ id, ok: true, result: { pong: true, ts, ... } }` (server payloads may gain fields). */
function assertPong(body: unknown, id: string): void {
  const r = body as { id?: unknown; ok?: unknown; result?: { pong?: unknown; ts?: unknown } } | undefined
  assert.deepEqual([r?.id, r?.ok, r?.result?.pong, typeof r?.result?.ts], [id, true, true, 'number'], `a pong for ${id}: ${JSON.stringify(body)}`)
}

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
const nowS = () => Math.floor(Date.now() / 1000)

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

describe('security matrix (one parley process, default plugins, tight limits)', () => {
  let broker: BrokerProcess
  let configDir: string
  let url: string
  let secret: Uint8Array
  const authConfig = AuthJwtConfig.parse({})
  const devices: Device[] = []
  let alice: Device
  let bob: Device
  let mallory: Device
  let rpcSeq = 0

  const mint = (userId: string, deviceId?: string, ttlSeconds = 600) => mintToken(authConfig, broker.dataDir, { userId, deviceId, ttlSeconds })

  /** Claims of a valid token for alice:probe; each attack changes one thing. */
  const claims = (over: JWTPayload = {}): JWTPayload => ({
    iss: 'parley',
    aud: 'parley',
    sub: 'alice',
    did: 'probe',
    iat: nowS(),
    exp: nowS() + 600,
    ...over
  })
  const signHs256 = (payload: JWTPayload, key: Uint8Array = secret, alg = 'HS256') =>
    new SignJWT(payload).setProtectedHeader({ alg, typ: 'JWT' }).sign(key)

  async function connectDevice(userId: string, deviceId: string, token: string, options: IClientOptions = {}): Promise<Device> {
    const client = await connectClient(url, { clientId: `${userId}:${deviceId}`, username: userId, password: token, ...options })
    const device: Device = { userId, deviceId, client, inbox: new Inbox(client) }
    devices.push(device)
    const granted = await client.subscribeAsync(`u/${userId}/#`, { qos: 1 })
    assert.deepEqual(
      granted.map((g) => [g.topic, g.qos]),
      [[`u/${userId}/#`, 1]]
    )
    return device
  }

  /** An s/rpc request; resolves with the response on the device's own res topic. */
  async function rpc(d: Device, request: Record<string, unknown>): Promise<unknown> {
    const id = request.id
    const response = d.inbox.take((m) => m.topic === resTopic(d) && field(m.payload, 'id') === id, `rpc response ${String(id)} for ${d.userId}:${d.deviceId}`)
    await d.client.publishAsync('s/rpc', JSON.stringify(request), { qos: 1 })
    const body = json((await response).payload)
    assert.ok(RpcResponse.safeParse(body).success, `a valid RpcResponse: ${JSON.stringify(body)}`)
    return body
  }

  /** The liveness proof of a device: an s/rpc ping round trip. */
  async function ping(d: Device): Promise<void> {
    const id = `ping-${++rpcSeq}`
    assertPong(await rpc(d, { id, method: 'ping' }), id)
  }

  async function controlPairAlive(): Promise<void> {
    assert.ok(alice.client.connected, 'alice:phone is still connected')
    assert.ok(bob.client.connected, 'bob:phone is still connected')
    await Promise.all([ping(alice), ping(bob)])
  }

  /** Publishes (QoS 1, so the PUBACK proves the publish was acknowledged) and returns the ErrorMessage it earned. */
  async function refusedPublish(d: Device, topic: string, payload: string | Buffer): Promise<ErrorMessage> {
    // The error that refers to this publish: same topic, and same cmid when the payload has one.
    const cmid = typeof payload === 'string' ? field(payload, 'cmid') : undefined
    const error = d.inbox.take((m) => {
      const ref = field(m.payload, 'ref') as { topic?: unknown; cmid?: unknown } | undefined
      return m.topic === errTopic(d) && ref?.topic === topic && (typeof cmid !== 'string' || ref.cmid === cmid)
    }, `error for ${topic}`)
    await d.client.publishAsync(topic, payload, { qos: 1 })
    const body = json((await error).payload)
    const parsed = ErrorMessage.safeParse(body)
    assert.ok(parsed.success, `a valid ErrorMessage: ${JSON.stringify(body)}`)
    assert.equal(typeof parsed.data.ts, 'number')
    assert.ok(d.client.connected, `${d.userId}:${d.deviceId} stays connected after a refused publish to ${topic}`)
    return parsed.data
  }

  /** A counter (or the sum of its series matching the labels) from the node's /metrics. */
  async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${broker.ports.ops}/metrics`)).text()
    const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
    let total = 0
    for (const line of text.split('\n')) {
      const m = /^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line)
      if (!m || m[1] !== name) continue
      const have = (m[2] ?? '').split(',')
      if (want.every((w) => have.includes(w))) total += Number(m[3])
    }
    return total
  }

  /** The CONNACK code of an attempt, and by how much the attempt moved the refusal counter of `reason`. */
  async function attempt(options: IClientOptions, reason?: string, target = url): Promise<{ code: number | 'closed'; counted: number }> {
    const before = reason ? await metric('parley_auth_refusals_total', { reason }) : 0
    const code = await connackCode(target, options)
    const counted = reason ? (await metric('parley_auth_refusals_total', { reason })) - before : 0
    return { code, counted }
  }

  before(async () => {
    configDir = mkdtempSync(join(tmpdir(), 'parley-security-'))
    const file = join(configDir, 'parley.yaml')
    writeFileSync(
      file,
      toYaml({
        plugins: [{ use: 'auth-jwt' }, { use: 'limits', config: LIMITS }, { use: 'protocol' }]
      })
    )
    broker = await startBroker({ args: ['--config', file] })
    url = `mqtt://127.0.0.1:${broker.ports.tcp}`
    secret = loadHs256Secret(authConfig, broker.dataDir)!

    // The control pair. alice's token comes from the CLI, with the node's own data directory.
    const cli = await runParley(['token', 'alice', '--device', 'phone', '--ttl', '10m'], isolatedEnv(broker.dataDir))
    assert.equal(cli.code, 0, cli.stderr)
    alice = await connectDevice('alice', 'phone', cli.stdout.trim())
    bob = await connectDevice('bob', 'phone', await mint('bob', 'phone'))
    mallory = await connectDevice('mallory', 'm1', await mint('mallory', 'm1'))
    await controlPairAlive()
  })

  after(async () => {
    await Promise.all(devices.map((d) => d.client.endAsync(true).catch(() => undefined)))
    await broker?.stop()
    if (configDir) rmSync(configDir, { recursive: true, force: true })
  })

  // -------------------------------------------------------------------------------------------
  describe('1. CONNECT', () => {
    it('accepts a valid token (minted, CLI, and hand-signed baseline) over TCP and WebSocket', async () => {
      assert.equal((await attempt({ clientId: 'alice:probe', username: 'alice', password: await mint('alice', 'probe') })).code, 0)
      // The user name is optional: MQTT 3.1.1 sends a password only with one, so it is empty.
      assert.equal((await attempt({ clientId: 'alice:probe', username: '', password: await mint('alice', 'probe') })).code, 0)
      // The baseline every forged token below differs from in exactly one respect.
      assert.equal((await attempt({ clientId: 'alice:probe', username: 'alice', password: await signHs256(claims()) })).code, 0)
      // A token without a device claim admits any device of its user.
      assert.equal((await attempt({ clientId: 'alice:anything', password: await mint('alice') })).code, 0)
      const ws = `ws://127.0.0.1:${broker.ports.ws}/mqtt`
      assert.equal((await attempt({ clientId: 'alice:probe', password: await mint('alice', 'probe') }, undefined, ws)).code, 0)
    })

    it('refuses bad credentials with CONNACK 4, each for the right reason', async () => {
      const other = new TextEncoder().encode('an-entirely-different-secret-of-32-chars!')
      const rsa = await generateKeyPair('RS256')
      const header = (alg: string) => b64url({ alg, typ: 'JWT' })
      const cases: Array<[string, IClientOptions, string]> = [
        ['no password', { username: 'alice' }, 'no_token'],
        ['empty password', { username: 'alice', password: '' }, 'no_token'],
        ['garbage', { username: 'alice', password: 'not-a-jwt' }, 'ERR_JWS_INVALID'],
        ['oversized token', { username: 'alice', password: 'x'.repeat(9000) }, 'token_too_large'],
        ['forged signature (other secret)', { username: 'alice', password: await signHs256(claims(), other) }, 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED'],
        ['alg none', { username: 'alice', password: `${header('none')}.${b64url(claims())}.` }, 'ERR_JOSE_ALG_NOT_ALLOWED'],
        [
          'alg none with the real signature stripped',
          { username: 'alice', password: `${header('none')}.${(await signHs256(claims())).split('.')[1]}.` },
          'ERR_JOSE_ALG_NOT_ALLOWED'
        ],
        [
          'payload swapped under a valid signature',
          {
            username: 'alice',
            password: (await signHs256(claims({ sub: 'mallory', did: 'probe' }))).replace(/\.[^.]+\./, `.${b64url(claims())}.`)
          },
          'ERR_JWS_SIGNATURE_VERIFICATION_FAILED'
        ],
        ['HS512 with the real secret (alg not accepted)', { username: 'alice', password: await signHs256(claims(), secret, 'HS512') }, 'ERR_JOSE_ALG_NOT_ALLOWED'],
        [
          'RS256 with a fresh key pair (alg not accepted)',
          { username: 'alice', password: await new SignJWT(claims()).setProtectedHeader({ alg: 'RS256' }).sign(rsa.privateKey) },
          'ERR_JOSE_ALG_NOT_ALLOWED'
        ],
        ['wrong issuer', { username: 'alice', password: await signHs256(claims({ iss: 'evil' })) }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
        ['no issuer', { username: 'alice', password: await signHs256(claims({ iss: undefined })) }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
        ['wrong audience', { username: 'alice', password: await signHs256(claims({ aud: 'other-service' })) }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
        ['expired beyond the 30 s skew', { username: 'alice', password: await signHs256(claims({ iat: nowS() - 600, exp: nowS() - 120 })) }, 'ERR_JWT_EXPIRED'],
        ['not yet valid beyond the skew', { username: 'alice', password: await signHs256(claims({ nbf: nowS() + 120 })) }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
        ['no exp claim', { username: 'alice', password: await signHs256(claims({ exp: undefined })) }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
        ['no sub claim', { password: await signHs256(claims({ sub: undefined })) }, 'ERR_JWT_CLAIM_VALIDATION_FAILED'],
        ['sub that is not a user id', { clientId: 'al/ice:probe', password: await signHs256(claims({ sub: 'al/ice' })) }, 'bad_subject'],
        ['username other than sub', { username: 'bob', password: await mint('alice', 'probe') }, 'username_mismatch']
      ]
      for (const [what, options, reason] of cases) {
        const result = await attempt({ clientId: 'alice:probe', ...options }, reason)
        assert.deepEqual(result, { code: 4, counted: 1 }, what)
      }
      // Same over WebSocket.
      const ws = `ws://127.0.0.1:${broker.ports.ws}/mqtt`
      const forged = await attempt({ clientId: 'alice:probe', password: await signHs256(claims(), other) }, 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED', ws)
      assert.deepEqual(forged, { code: 4, counted: 1 }, 'forged token over WebSocket')
      await controlPairAlive()
    })

    it('refuses a client id that is not the token\'s own device with CONNACK 2 (and takes over no session)', async () => {
      const cases: Array<[string, IClientOptions]> = [
        ['token alice, client id bob:phone', { clientId: 'bob:phone', password: await mint('alice', 'phone') }],
        ['token alice without device, client id bob:phone', { clientId: 'bob:phone', password: await mint('alice') }],
        ['token bob, client id alice:phone (session takeover)', { clientId: 'alice:phone', password: await mint('bob', 'phone') }],
        ['token mallory, client id alice:phone', { clientId: 'alice:phone', username: 'mallory', password: await mint('mallory') }],
        ['client id without a device part', { clientId: 'alice', password: await mint('alice') }],
        ['client id with an empty device part', { clientId: 'alice:', password: await mint('alice') }],
        ['client id with an invalid device part', { clientId: 'alice:phone:2', password: await mint('alice') }],
        ['token did phone, client id alice:tablet', { clientId: 'alice:tablet', password: await mint('alice', 'phone') }]
      ]
      for (const [what, options] of cases) {
        assert.deepEqual(await attempt(options, 'client_id'), { code: 2, counted: 1 }, what)
        assert.ok(alice.client.connected && bob.client.connected, `no takeover after: ${what}`)
      }
      await controlPairAlive()
    })

    it('refuses a will outside the protocol with CONNACK 5', async () => {
      const token = await mint('mallory', 'willy')
      const will = (topic: string, payload: string) => ({ clientId: 'mallory:willy', password: token, will: { topic, payload: Buffer.from(payload), qos: 0 as const, retain: false } })
      assert.equal(await connackCode(url, will('u/bob/m', '{"cmid":"w1","body":"spoof"}')), 5, 'will into another user\'s tree')
      assert.equal(await connackCode(url, will('s/dm/bob', '{"body":"no cmid"}')), 5, 'will with an invalid payload')
      assert.equal(await connackCode(url, will('$parley/deliver', 'x')), 5, 'will on the internal delivery topic')
      assert.equal(await connackCode(url, will('s/dm/bob', '{"cmid":"w2","body":"ok"}')), 0, 'a valid will is accepted')
      await controlPairAlive()
    })

    it(
      'delivers a will accepted at CONNECT when its client dies',
      async () => {
        const ok = () => metric('parley_rpc_requests_total', { method: 'ping', outcome: 'ok' })
        const forbidden = () => metric('parley_protocol_rejections_total', { code: 'forbidden' })
        const [okBefore, forbiddenBefore] = [await ok(), await forbidden()]
        const client = await connectClient(url, {
          clientId: 'mallory:willy',
          ...NO_USERNAME,
          password: await mint('mallory', 'willy'),
          will: { topic: 's/rpc', payload: Buffer.from('{"id":"will1","method":"ping"}'), qos: 1, retain: false }
        })
        client.end(true) // no DISCONNECT: the will is due
        await eventually(async () => (await ok()) > okBefore || (await forbidden()) > forbiddenBefore, 5000, 'the will handled')
        assert.deepEqual([(await ok()) - okBefore, (await forbidden()) - forbiddenBefore], [1, 0], 'the will was dispatched, not refused')
      }
    )

    it('refuses keepalives outside the bounds without a CONNACK', async () => {
      const before = await metric('parley_limits_hits_total', { limit: 'keepalive' })
      const token = await mint('alice', 'probe')
      assert.equal(await connackCode(url, { clientId: 'alice:probe', password: token, keepalive: 0 }), 'closed')
      assert.equal(await connackCode(url, { clientId: 'alice:probe', password: token, keepalive: 1000 }), 'closed')
      assert.equal((await metric('parley_limits_hits_total', { limit: 'keepalive' })) - before, 2)
      assert.equal(await connackCode(url, { clientId: 'alice:probe', password: token, keepalive: 300 }), 0)
    })

    it('closes a session when its token expires (a token accepted within the clock skew lives out the skew)', async () => {
      const before = await metric('parley_auth_token_expiries_total')
      // exp 25 s ago: still accepted with the 30 s skew, and expired 5 s from now.
      const token = await signHs256(claims({ did: 'shortlived', iat: nowS() - 600, exp: nowS() - 25 }))
      const client = await connectClient(url, { clientId: 'alice:shortlived', ...NO_USERNAME, password: token })
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
      try {
        await bounded(closed, 'the session of an expired token closed', 20_000)
      } finally {
        client.end(true)
      }
      assert.equal((await metric('parley_auth_token_expiries_total')) - before, 1)
      await controlPairAlive()
    })
  })

  // -------------------------------------------------------------------------------------------
  describe('2. SUBSCRIBE', () => {
    it('refuses every filter outside the device\'s own tree with SUBACK 0x80, the connection staying up', async () => {
      const before = await metric('parley_protocol_subscriptions_denied_total')
      const refused = ['u/bob/#', 'u/bob/m', 'u/+/m', 'u/+/#', '#', '+/#', 's/#', 's/dm/bob', 'u/alice/d/tablet/#', 'u/alice/d/+/res', 'u/alice/d/tablet/res']
      for (const filter of refused) {
        await assert.rejects(alice.client.subscribeAsync(filter, { qos: 1 }), /Subscribe error/, filter)
        assert.ok(alice.client.connected, `alice is still connected after the refusal of ${filter}`)
      }
      assert.equal((await metric('parley_protocol_subscriptions_denied_total')) - before, refused.length)
      // Refused before any plugin: reserved topics; and by limits: too deep, too long.
      for (const filter of ['$SYS/#', '$parley/deliver', 'u/alice/a/b/c/d/e', `u/alice/${'x'.repeat(130)}`]) {
        await assert.rejects(alice.client.subscribeAsync(filter, { qos: 1 }), /Subscribe error/, filter)
        assert.ok(alice.client.connected, `alice is still connected after the refusal of ${filter}`)
      }
      await controlPairAlive()
    })

    it('limits the subscriptions per client; refused filters do not count, unsubscribing frees a slot', async () => {
      // alice:phone holds u/alice/#; the 15 refusals above hold nothing.
      for (const filter of ['u/alice/m', 'u/alice/r', 'u/alice/e']) {
        const granted = await alice.client.subscribeAsync(filter, { qos: 1 })
        assert.deepEqual(granted.map((g) => g.qos), [1], filter)
      }
      await assert.rejects(alice.client.subscribeAsync('u/alice/x', { qos: 1 }), /Subscribe error/, 'the fifth filter')
      assert.ok(alice.client.connected)
      await alice.client.unsubscribeAsync('u/alice/e')
      const granted = await alice.client.subscribeAsync('u/alice/x', { qos: 1 })
      assert.deepEqual(granted.map((g) => g.qos), [1], 'after an unsubscribe')
      await controlPairAlive()
    })
  })

  // -------------------------------------------------------------------------------------------
  describe('3. PUBLISH refused, acknowledged, and explained', () => {
    const msg = (extra: Record<string, unknown> = {}) => JSON.stringify({ cmid: 'c0', body: 'hello', ...extra })
    type Attack = [topic: string, payload: string, code: string, message: RegExp, cmid?: string]

    /** Each attack from `d`, with the exact ErrorMessage it must earn. */
    async function attacks(d: Device, list: Attack[]): Promise<void> {
      assert.ok(list.length <= ANSWERED_REJECTIONS_PER_DEVICE)
      for (const [topic, payload, code, message, cmid] of list) {
        const e = await refusedPublish(d, topic, payload)
        assert.equal(e.code, code, `${topic}: ${e.message}`)
        assert.match(e.message, message, topic)
        assert.deepEqual(e.ref, { topic, ...(cmid ? { cmid } : {}) }, topic)
        assert.equal(e.retryAfterMs, undefined, topic)
      }
    }

    it('topics outside the protocol: forbidden (user trees, reserved) or unknown_topic', async () => {
      await attacks(mallory, [
        ['u/bob/m', msg({ cmid: 'c1' }), 'forbidden', /only the server publishes to user trees/, 'c1'],
        ['u/bob/d/phone/res', JSON.stringify({ id: 'x', ok: true, result: {} }), 'forbidden', /only the server publishes/],
        ['u/mallory/m', msg({ cmid: 'c1b' }), 'forbidden', /only the server publishes/, 'c1b'],
        ['random/topic', msg({ cmid: 'c2' }), 'unknown_topic', /random\/topic is not a topic of the protocol/, 'c2'],
        ['s/dm/b.ob', msg({ cmid: 'c2b' }), 'unknown_topic', /not a topic of the protocol/, 'c2b'],
        ['s/dm/bob/extra', msg({ cmid: 'c2c' }), 'unknown_topic', /not a topic of the protocol/, 'c2c'],
        // The node's internal delivery topic: a publish there could address any client.
        ['$parley/deliver', JSON.stringify({ topic: 'u/bob/m', payload: 'spoof' }), 'forbidden', /^\$parley\/ topics are reserved for the broker$/],
        ['$SYS/parley/rejected', msg({ cmid: 'c2d' }), 'forbidden', /^\$SYS\/ topics are reserved for the broker$/, 'c2d']
      ])
    })

    it('invalid payloads, spoofed sender fields included: invalid_payload naming the problem', async () => {
      await attacks(await connectDevice('mallory', 'm2', await mint('mallory', 'm2')), [
        ['s/dm/bob', msg({ cmid: 'c3', from: { user: 'alice', device: 'phone' } }), 'invalid_payload', /unknown field\(s\) "from"/, 'c3'],
        ['s/dm/bob', msg({ cmid: 'c4', sender: 'alice' }), 'invalid_payload', /unknown field\(s\) "sender"/, 'c4'],
        ['s/dm/bob', '{"cmid": "c5", "body": ', 'invalid_payload', /^payload is not JSON/],
        ['s/dm/bob', JSON.stringify({ body: 'no cmid' }), 'invalid_payload', /^cmid: /],
        ['s/dm/bob', msg({ cmid: 'c6', body: '' }), 'invalid_payload', /^body: /, 'c6'],
        ['s/dm/bob', msg({ cmid: 'c7', type: 'image' }), 'invalid_payload', /^type: /, 'c7'],
        ['s/dm/bob', JSON.stringify(['not', 'an', 'object']), 'invalid_payload', /^payload: /]
      ])
    })

    it('conversations one is not in: not_a_member; over the limits: payload_too_large, forbidden', async () => {
      await attacks(await connectDevice('mallory', 'm3', await mint('mallory', 'm3')), [
        ['s/g/somegroup', msg({ cmid: 'c8' }), 'not_a_member', /not a member of group somegroup/, 'c8'],
        ['s/typing/g/somegroup', JSON.stringify({ state: 'typing' }), 'not_a_member', /not a member of group somegroup/],
        ['s/read', JSON.stringify({ conversation: { kind: 'group', id: 'somegroup' }, seq: 1 }), 'not_a_member', /not a member of group somegroup/],
        ['s/dm/bob', msg({ cmid: 'c9', body: 'x'.repeat(3000) }), 'payload_too_large', /^payload of \d+ bytes exceeds 2048$/, 'c9'],
        ['s/a/b/c/d/e/f', msg({ cmid: 'c10' }), 'forbidden', /^topic deeper than 6 levels$/, 'c10'],
        [`s/dm/${'x'.repeat(130)}`, msg({ cmid: 'c11' }), 'forbidden', /^topic longer than 128 bytes$/, 'c11']
      ])
    })

    it('delivers nothing of it to bob, and the control pair keeps working', async () => {
      await controlPairAlive()
      assert.deepEqual(
        bob.inbox.all.filter((m) => m.topic !== resTopic(bob)),
        [],
        'bob received nothing but his own responses'
      )
    })
  })

  // -------------------------------------------------------------------------------------------
  describe('4. Rate flood', () => {
    let flood: Device
    const dm = (i: number) => JSON.stringify({ cmid: `f${i}`, body: 'spam' })
    /** Publishes something refused (at any rate) and waits for its error: every earlier error has come by then. */
    const marker = async (d: Device, n: number) => {
      const e = await refusedPublish(d, 's/dm/bob', JSON.stringify({ cmid: `marker${n}` }))
      assert.deepEqual([e.code, e.ref], ['invalid_payload', { topic: 's/dm/bob', cmid: `marker${n}` }])
    }
    const errorsOf = (d: Device, code: string) =>
      d.inbox.all.filter((m) => m.topic === errTopic(d) && field(m.payload, 'code') === code).map((m) => ErrorMessage.parse(json(m.payload)))

    before(async () => {
      // A device of its own: a fresh token bucket and a fresh rejection budget.
      flood = await connectDevice('mallory', 'flood', await mint('mallory', 'flood'))
    })

    it('holds QoS 1 publishes over the rate (back-pressure), then accepts them: nothing refused', async () => {
      const delayedBefore = await metric('parley_limits_hits_total', { limit: 'publish_delayed' })
      const n = LIMITS.publish.burstMessages + 2
      await bounded(
        Promise.all(Array.from({ length: n }, (_v, i) => flood.client.publishAsync('s/dm/bob', dm(i), { qos: 1 }))),
        `${n} PUBACKs`
      )
      await marker(flood, 1)
      assert.deepEqual(errorsOf(flood, 'rate_limited'), [], 'no QoS 1 publish within the hold was refused')
      assert.ok((await metric('parley_limits_hits_total', { limit: 'publish_delayed' })) - delayedBefore >= 1, 'some were held')
      assert.ok(flood.client.connected)
    })

    it('refuses QoS 0 publishes over the rate with rate_limited and retryAfterMs', async () => {
      // The bucket is empty now: a few QoS 0 publishes (fewer than the rejection budget) are refused.
      for (let i = 100; i < 100 + ANSWERED_REJECTIONS_PER_DEVICE - 1; i++) flood.client.publish('s/dm/bob', dm(i), { qos: 0 })
      await marker(flood, 2)
      const limited = errorsOf(flood, 'rate_limited')
      assert.ok(limited.length >= 1, 'at least one rate_limited error')
      for (const e of limited) {
        assert.equal(e.message, 'publishing too fast')
        assert.equal(e.ref.topic, 's/dm/bob')
        assert.match(e.ref.cmid ?? '', /^f1\d\d$/)
        assert.ok(Number.isInteger(e.retryAfterMs) && e.retryAfterMs! >= 0, `retryAfterMs ${e.retryAfterMs}`)
      }
      assert.ok(flood.client.connected, 'within the rejection budget: still connected')
    })

    it('disconnects a client that keeps flooding; legitimate traffic goes on during and after', async () => {
      const deniedBefore = await metric('parley_hook_denials_total', { hook: 'authorizePublish', outcome: 'deny' })
      const closed = new Promise<void>((resolve) => flood.client.once('close', () => resolve()))
      let isClosed = false
      void closed.then(() => (isClosed = true))
      const alicePing = ping(alice) // legitimate traffic during the flood
      for (let i = 1000; i < 3000 && !isClosed; i++) {
        flood.client.publish('s/dm/bob', dm(i), { qos: 0 })
        if (i % 50 === 0) await new Promise((r) => setTimeout(r, 5))
      }
      await bounded(closed, 'the flooding client disconnected')
      await alicePing
      flood.client.end(true)
      assert.ok((await metric('parley_hook_denials_total', { hook: 'authorizePublish', outcome: 'deny' })) - deniedBefore >= 1)
      await controlPairAlive()
      assert.deepEqual(bob.inbox.all.filter((m) => m.topic !== resTopic(bob)), [], 'bob received nothing of the flood')
    })
  })

  // -------------------------------------------------------------------------------------------
  describe('5. RPC', () => {
    it('answers an unknown method and invalid params on the res topic', async () => {
      assert.deepEqual(await rpc(alice, { id: 'u1', method: 'no.such_method' }), {
        id: 'u1',
        ok: false,
        error: { code: 'unknown_method', message: 'no method "no.such_method"' }
      })
      const bad = (await rpc(alice, { id: 'p1', method: 'ping', params: { x: 1 } })) as { error?: { message?: string } }
      assert.deepEqual(bad, { id: 'p1', ok: false, error: { code: 'invalid_params', message: bad.error?.message } })
      assert.match(bad.error?.message ?? '', /unknown field\(s\) "x"/)
    })

    it('answers a malformed request with invalid_payload on the err topic', async () => {
      const noId = await refusedPublish(alice, 's/rpc', JSON.stringify({ method: 'ping' }))
      assert.equal(noId.code, 'invalid_payload')
      assert.match(noId.message, /^id: /)
      assert.deepEqual(noId.ref, { topic: 's/rpc' })

      const badMethod = await refusedPublish(alice, 's/rpc', JSON.stringify({ id: 'b1', method: 'Not A Method!' }))
      assert.equal(badMethod.code, 'invalid_payload')
      assert.match(badMethod.message, /^method: expected a method name/)
      assert.deepEqual(badMethod.ref, { topic: 's/rpc', rpcId: 'b1' })

      const extra = await refusedPublish(alice, 's/rpc', JSON.stringify({ id: 'b2', method: 'ping', replyTo: 'u/bob/d/phone/res' }))
      assert.equal(extra.code, 'invalid_payload')
      assert.match(extra.message, /unknown field\(s\) "replyTo"/)
      assert.deepEqual(extra.ref, { topic: 's/rpc', rpcId: 'b2' })

      const notJson = await refusedPublish(alice, 's/rpc', 'ping')
      assert.equal(notJson.code, 'invalid_payload')
      assert.deepEqual(notJson.ref, { topic: 's/rpc' })
      await controlPairAlive()
    })

    it('sends a response to the requesting device only, never to the user\'s other devices', async () => {
      const tablet = await connectDevice('alice', 'tablet', await mint('alice', 'tablet'))
      await ping(tablet)
      await ping(alice) // a marker: tablet's response, had it been forwarded, came before this one
      await ping(tablet)
      assert.deepEqual(alice.inbox.all.filter((m) => m.topic.startsWith('u/alice/d/tablet/')), [], 'alice:phone saw nothing of alice:tablet')
      assert.deepEqual(tablet.inbox.all.filter((m) => m.topic.startsWith('u/alice/d/phone/')), [], 'alice:tablet saw nothing of alice:phone')
      await tablet.client.endAsync()
    })
  })

  // -------------------------------------------------------------------------------------------
  describe('6. Clients nobody here wrote (mosquitto)', { skip: !hasCommand('mosquitto_pub') && 'mosquitto-clients is not installed' }, () => {
    let token: string
    const common = () => ['-h', '127.0.0.1', '-p', String(broker.ports.tcp)]

    before(async () => {
      const cli = await runParley(['token', 'alice', '--device', 'laptop', '--ttl', '10m'], isolatedEnv(broker.dataDir))
      assert.equal(cli.code, 0, cli.stderr)
      token = cli.stdout.trim()
    })

    it('mosquitto_pub: a malformed payload with a valid token is acknowledged (exit 0)', async () => {
      const r = await run('mosquitto_pub', [...common(), '-i', 'alice:laptop', '-u', 'alice', '-P', token, '-q', '1', '-t', 's/dm/bob', '-m', 'not json'])
      assert.equal(r.code, 0, r.stderr)
    })

    it('mosquitto_pub: a bad token is refused (bad user name or password)', async () => {
      const r = await run('mosquitto_pub', [...common(), '-i', 'alice:laptop', '-u', 'alice', '-P', 'garbage', '-q', '1', '-t', 's/rpc', '-m', '{}'])
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /Connection Refused: bad user name or password/)
    })

    it('mosquitto_pub: a client id of another user is refused (identifier rejected)', async () => {
      const r = await run('mosquitto_pub', [...common(), '-i', 'bob:laptop', '-u', 'alice', '-P', token, '-q', '1', '-t', 's/rpc', '-m', '{}'])
      assert.notEqual(r.code, 0)
      assert.match(r.stderr, /Connection Refused: identifier rejected/)
    })

    it('mosquitto_sub: a subscription to another user\'s tree is denied', async () => {
      const r = await run('mosquitto_sub', [...common(), '-i', 'alice:laptop', '-u', 'alice', '-P', token, '-t', 'u/bob/#', '-C', '1', '-W', '10'])
      assert.match(r.stderr, /All subscription requests were denied/)
      assert.equal(r.stdout, '', 'nothing of bob\'s was printed')
    })

    it('mosquitto_rr: an s/rpc ping is answered on the device\'s res topic (MQTT 3.1.1)', { skip: !hasCommand('mosquitto_rr') && 'no mosquitto_rr' }, async () => {
      const r = await run('mosquitto_rr', [
        ...common(),
        '-V',
        'mqttv311',
        '-i',
        'alice:laptop',
        '-u',
        'alice',
        '-P',
        token,
        '-t',
        's/rpc',
        '-e',
        'u/alice/d/laptop/res',
        '-m',
        '{"id":"m1","method":"ping"}',
        '-W',
        '10'
      ])
      assert.equal(r.code, 0, r.stderr)
      assertPong(json(r.stdout.trim()), 'm1')
      await controlPairAlive()
    })
  })

  // -------------------------------------------------------------------------------------------
  describe('7. Connection flood (last: it spends the per-address budget)', () => {
    it('refuses connections beyond the per-IP rate without a CONNACK; connected clients are unaffected', async () => {
      const before = await metric('parley_limits_hits_total', { limit: 'connection_rate' })
      const seen: Array<number | 'closed'> = []
      for (let i = 0; i < 400 && !seen.includes('closed'); i++) seen.push(await connackCode(url, { clientId: `flood${i}` }))
      assert.ok(seen.includes('closed'), `a connection was refused within ${seen.length} attempts`)
      assert.deepEqual(new Set(seen.slice(0, -1)), new Set([4]), 'before the limit: CONNACK 4 (no token)')
      assert.ok((await metric('parley_limits_hits_total', { limit: 'connection_rate' })) - before >= 1)
      await controlPairAlive()
      assert.deepEqual(bob.inbox.all.filter((m) => m.topic !== resTopic(bob)), [], 'bob received nothing but his own responses')
    })
  })
})
