// The example topic guard against a real in-process node and real mqtt.js clients:
// refused publishes close the client, refused subscriptions get SUBACK 0x80, refusals
// are counted in a metric and on the plugin's route, and its API serves dependants.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before, describe, it } from 'node:test'
import type { MqttClient } from 'mqtt'
import { definePlugin, type ParleyPlugin } from '../../../broker/plugin-api.js'
import { connectClient, nextMessage, startNode, type TestNode } from '../../../test/helpers/node.js'
import type { ConfigInput } from '../../../schemas/config.js'
import type { TopicGuardApi } from '../index.js'

const GUARD = { use: 'example-topic-guard', config: { deniedRoots: ['internal/audit'], maxPayloadBytes: 64 } }
const CONFIG: ConfigInput = { plugins: [GUARD] }

/** Clients opened by a test, ended after it whatever happened. */
function clientPool() {
  const open: MqttClient[] = []
  return {
    async connect(url: string, clientId: string): Promise<MqttClient> {
      const client = await connectClient(url, { clientId })
      // A client the broker closes may see a socket error; the tests assert on 'close' instead.
      client.on('error', () => undefined)
      open.push(client)
      return client
    },
    async endAll(): Promise<void> {
      await Promise.all(open.splice(0).map((c) => c.endAsync(true)))
    }
  }
}

/** Resolves when the broker has closed the client's connection. */
function closed(client: MqttClient): Promise<void> {
  return new Promise((resolve) => client.once('close', () => resolve()))
}

/** Publishes at QoS 1 and tells whether the broker closed the client or acknowledged the message. */
async function publishQos1(client: MqttClient, topic: string, payload: string): Promise<'closed' | 'acked'> {
  const gone = closed(client).then(() => 'closed' as const)
  const acked = client.publishAsync(topic, payload, { qos: 1 }).then(
    () => 'acked' as const,
    // Without a PUBACK the publish fails only when the client is ended; the close comes first.
    () => gone
  )
  return Promise.race([gone, acked])
}

/**
 * A test-only plugin that sees every client message the broker hands to its subscribers
 * (the `published` hook). The guard refuses any subscription that could match a denied
 * root, so no MQTT client could watch those topics; the broker itself can.
 */
function witnessPlugin() {
  const seen: string[] = []
  const waiting = new Map<string, () => void>()
  const plugin = definePlugin({
    name: 'witness',
    register(ctx) {
      ctx.hook('published', (packet, client) => {
        // Aedes passes null for the broker's own messages ($SYS heartbeats and the like).
        if (!client) return
        seen.push(packet.topic)
        waiting.get(packet.topic)?.()
      })
    }
  })
  return {
    plugin,
    seen,
    /** Resolves once a client message on this topic went through the broker. */
    published(topic: string): Promise<void> {
      if (seen.includes(topic)) return Promise.resolve()
      return new Promise((resolve) => waiting.set(topic, resolve))
    }
  }
}

/** The value of one labelled sample in Prometheus text format, or undefined when absent. */
function sample(text: string, name: string, labels: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1))
}

describe('example-topic-guard on a node', () => {
  const witness = witnessPlugin()
  const clients = clientPool()
  let node: TestNode

  before(async () => {
    node = await startNode({ plugins: [GUARD, 'witness'] }, { witness: async () => witness.plugin })
  })
  afterEach(async () => {
    await clients.endAll()
  })
  after(async () => {
    await node?.stop()
  })

  /**
   * Publishes from a fresh client and waits for the broker to close it. Then publishes a
   * sentinel from another client and waits until the broker has passed it on, to show the
   * broker was still relaying while the refused message never went through.
   */
  async function assertRefusedPublish(clientId: string, topic: string, payload: string, qos: 0 | 1): Promise<void> {
    const publisher = await clients.connect(node.mqttUrl, clientId)
    const gone = closed(publisher)
    const outcome = publisher.publishAsync(topic, payload, { qos }).then(
      () => 'written',
      () => 'failed'
    )
    // Whichever comes first: the broker closing the client, or the message going through.
    const first = await Promise.race([gone.then(() => 'closed'), witness.published(topic).then(() => 'relayed')])
    assert.equal(first, 'closed')
    assert.equal(publisher.connected, false)
    if (qos === 1) {
      // No PUBACK ever came: ending the client fails the pending publish.
      await publisher.endAsync(true)
      assert.equal(await outcome, 'failed')
    }

    const sentinel = `public/sentinel/${clientId}`
    const other = await clients.connect(node.mqttUrl, `${clientId}-sentinel`)
    await other.publishAsync(sentinel, 'still relaying', { qos: 1 })
    await witness.published(sentinel)
    assert.ok(!witness.seen.includes(topic), `${topic} must never be relayed`)
  }

  it('relays an allowed publish', async () => {
    const sub = await clients.connect(node.mqttUrl, 'allowed-sub')
    const pub = await clients.connect(node.mqttUrl, 'allowed-pub')
    await sub.subscribeAsync('public/#', { qos: 1 })
    const got = nextMessage(sub, 'public/chat')
    await pub.publishAsync('public/chat', 'hello', { qos: 1 })
    assert.deepEqual(await got, { topic: 'public/chat', payload: 'hello' })
    await witness.published('public/chat')
    assert.ok(pub.connected)
  })

  it('relays topics that only share a string prefix with a denied root', async () => {
    const sub = await clients.connect(node.mqttUrl, 'prefix-sub')
    const pub = await clients.connect(node.mqttUrl, 'prefix-pub')
    await sub.subscribeAsync('internal/auditing', { qos: 1 })
    const got = nextMessage(sub, 'internal/auditing')
    await pub.publishAsync('internal/auditing', 'not the audit root', { qos: 1 })
    assert.deepEqual(await got, { topic: 'internal/auditing', payload: 'not the audit root' })
  })

  it('closes a client that publishes to a denied root (QoS 1, no PUBACK)', async () => {
    await assertRefusedPublish('deny-root', 'internal/audit', 'secret', 1)
  })

  it('closes a client that publishes below a denied root (QoS 0)', async () => {
    await assertRefusedPublish('deny-below', 'internal/audit/2024/log', 'secret', 0)
  })

  it('closes a client whose payload is larger than maxPayloadBytes', async () => {
    await assertRefusedPublish('too-big', 'public/big', 'x'.repeat(65), 1)
  })

  it('accepts a payload of exactly maxPayloadBytes', async () => {
    const sub = await clients.connect(node.mqttUrl, 'fits-sub')
    const pub = await clients.connect(node.mqttUrl, 'fits-pub')
    await sub.subscribeAsync('public/fits', { qos: 1 })
    const got = nextMessage(sub, 'public/fits')
    await pub.publishAsync('public/fits', 'y'.repeat(64), { qos: 1 })
    assert.equal((await got).payload.length, 64)
  })

  for (const filter of ['internal/audit', 'internal/audit/log', 'internal/#', 'internal/+', '+/audit', '+/+/log', '#']) {
    it(`refuses the subscription ${filter} with SUBACK 0x80 and keeps the client`, async () => {
      const client = await clients.connect(node.mqttUrl, `sub-${filter.replace(/[^a-z]/g, '_')}`)
      await assert.rejects(client.subscribeAsync(filter, { qos: 1 }), /Subscribe error/)
      assert.ok(client.connected, 'a refused subscription does not close the client')
    })
  }

  for (const filter of ['internal/other', 'public/#', 'internal/auditing', '+/other']) {
    it(`grants the subscription ${filter}`, async () => {
      const client = await clients.connect(node.mqttUrl, `grant-${filter.replace(/[^a-z]/g, '_')}`)
      const granted = await client.subscribeAsync(filter, { qos: 1 })
      assert.deepEqual(
        granted.map((g) => [g.topic, g.qos]),
        [[filter, 1]]
      )
    })
  }
})

describe('example-topic-guard refusal metric and route', () => {
  const clients = clientPool()
  let node: TestNode

  before(async () => {
    node = await startNode(CONFIG)
  })
  after(async () => {
    await clients.endAll()
    await node?.stop()
  })

  it('counts each refusal by reason in /metrics and on GET /plugins/example-topic-guard', async () => {
    const metricsUrl = `http://127.0.0.1:${node.ops}/metrics`
    const before = await (await fetch(metricsUrl)).text()
    assert.match(before, /# TYPE parley_topic_guard_refusals_total counter/)
    assert.equal(sample(before, 'parley_topic_guard_refusals_total', 'reason="publish"'), undefined)

    for (const [clientId, topic, payload] of [
      ['m-pub-1', 'internal/audit', 'a'],
      ['m-pub-2', 'internal/audit/x', 'b'],
      ['m-size', 'public/x', 'z'.repeat(100)]
    ] as const) {
      const client = await clients.connect(node.mqttUrl, clientId)
      assert.equal(await publishQos1(client, topic, payload), 'closed')
    }
    const subscriber = await clients.connect(node.mqttUrl, 'm-sub')
    for (const filter of ['internal/#', '+/audit', '#']) {
      await assert.rejects(subscriber.subscribeAsync(filter), /Subscribe error/)
    }

    const res = await fetch(metricsUrl)
    assert.equal(res.status, 200)
    const text = await res.text()
    assert.equal(sample(text, 'parley_topic_guard_refusals_total', 'reason="publish"'), 2)
    assert.equal(sample(text, 'parley_topic_guard_refusals_total', 'reason="size"'), 1)
    assert.equal(sample(text, 'parley_topic_guard_refusals_total', 'reason="subscribe"'), 3)

    const route = await fetch(`http://127.0.0.1:${node.ops}/plugins/example-topic-guard`)
    assert.equal(route.status, 200)
    assert.deepEqual(await route.json(), {
      deniedRoots: ['internal/audit'],
      maxPayloadBytes: 64,
      refusals: { publish: 2, subscribe: 3, size: 1 }
    })
  })
})

describe('example-topic-guard configuration', () => {
  /** Starts a node that is expected to fail, in a data directory removed afterwards. */
  async function startFails(input: ConfigInput, extra: Record<string, () => Promise<ParleyPlugin>> = {}): Promise<Error> {
    const dataDir = mkdtempSync(join(tmpdir(), 'parley-guard-'))
    try {
      let node: TestNode | undefined
      try {
        node = await startNode({ ...input, dataDir }, extra)
      } catch (err) {
        return err as Error
      }
      await node.stop()
      throw new assert.AssertionError({ message: 'the node started' })
    } finally {
      rmSync(dataDir, { recursive: true, force: true })
    }
  }

  it('refuses a denied root with a wildcard, naming the setting', async () => {
    const err = await startFails({ plugins: [{ use: 'example-topic-guard', config: { deniedRoots: ['a/#'] } }] })
    assert.match(err.message, /plugins\.example-topic-guard\.config\.deniedRoots/)
    assert.match(err.message, /expected a topic without wildcards/)
  })

  it('refuses unknown settings and a non-positive payload limit', async () => {
    const unknown = await startFails({ plugins: [{ use: 'example-topic-guard', config: { deniedRoot: ['a'] } }] })
    assert.match(unknown.message, /plugins\.example-topic-guard\.config/)
    assert.match(unknown.message, /deniedRoot/)
    const zero = await startFails({ plugins: [{ use: 'example-topic-guard', config: { maxPayloadBytes: 0 } }] })
    assert.match(zero.message, /plugins\.example-topic-guard\.config\.maxPayloadBytes/)
  })

  it('applies the defaults when the plugin is named without a config section', async () => {
    const node = await startNode({ plugins: ['example-topic-guard'] })
    try {
      const res = await fetch(`http://127.0.0.1:${node.ops}/plugins/example-topic-guard`)
      assert.deepEqual(await res.json(), {
        deniedRoots: [],
        maxPayloadBytes: 256 * 1024,
        refusals: { publish: 0, subscribe: 0, size: 0 }
      })
    } finally {
      await node.stop()
    }
  })
})

describe('example-topic-guard API for dependants', () => {
  it('serves isDenied and refusals to a plugin that declares the dependency', async () => {
    const answers: Record<string, boolean> = {}
    let refusalsAtRegister: ReturnType<TopicGuardApi['refusals']> | undefined
    let guard: TopicGuardApi | undefined
    const guardUser = definePlugin({
      name: 'guard-user',
      dependencies: ['example-topic-guard'],
      register(ctx) {
        guard = ctx.dependency('example-topic-guard')
        for (const topic of ['internal/audit', 'internal/audit/x', 'internal/auditing', 'internal', 'public/a']) {
          answers[topic] = guard.isDenied(topic)
        }
        refusalsAtRegister = guard.refusals()
      }
    })
    // Listed before the guard: dependency order, not configuration order, decides who registers first.
    const node = await startNode({ plugins: ['guard-user', GUARD] }, { 'guard-user': async () => guardUser })
    const clients = clientPool()
    try {
      assert.deepEqual(answers, {
        'internal/audit': true,
        'internal/audit/x': true,
        'internal/auditing': false,
        internal: false,
        'public/a': false
      })
      assert.deepEqual(refusalsAtRegister, { publish: 0, subscribe: 0, size: 0 })

      // The API reads live state: refusals() reflects what the hooks refused since.
      const client = await clients.connect(node.mqttUrl, 'dep-sub')
      await assert.rejects(client.subscribeAsync('internal/#'), /Subscribe error/)
      assert.deepEqual(guard?.refusals(), { publish: 0, subscribe: 1, size: 0 })
    } finally {
      await clients.endAll()
      await node.stop()
    }
  })

  it('throws when a plugin uses another plugin it did not declare as a dependency', async () => {
    let thrown: unknown
    const sneaky = definePlugin({
      name: 'sneaky',
      register(ctx) {
        try {
          ctx.dependency('example-topic-guard')
        } catch (err) {
          thrown = err
        }
      }
    })
    const node = await startNode({ plugins: [GUARD, 'sneaky'] }, { sneaky: async () => sneaky })
    try {
      assert.ok(thrown instanceof Error, 'ctx.dependency threw')
      assert.match(thrown.message, /plugin "sneaky" uses "example-topic-guard" without declaring it as a dependency/)
    } finally {
      await node.stop()
    }
  })

  it('refuses to start when a declared dependency is not configured', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'parley-guard-'))
    const lonely = definePlugin({ name: 'guard-user', dependencies: ['example-topic-guard'], register() {} })
    try {
      await assert.rejects(
        startNode({ dataDir, plugins: ['guard-user'] }, { 'guard-user': async () => lonely }),
        /plugin "guard-user" depends on "example-topic-guard", which is not loaded/
      )
    } finally {
      rmSync(dataDir, { recursive: true, force: true })
    }
  })
})
