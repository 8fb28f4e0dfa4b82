import assert from 'node:assert/strict'
import { after, before, describe, it } from 'node:test'
import type { MqttClient } from 'mqtt'
import { connectClient, startNode, type TestNode } from '../../../test/helpers/node.js'
import { TokenBucket } from '../token-bucket.js'

describe('token bucket', () => {
  it('gives a burst, then refills at its rate', () => {
    let now = 0
    const b = new TokenBucket(10, 5, () => now)
    for (let i = 0; i < 5; i++) assert.equal(b.take(1), true)
    assert.equal(b.take(1), false, 'burst spent')
    assert.equal(b.msUntil(1), 100)
    now += 100
    assert.equal(b.take(1), true, 'one token after 100 ms at 10/s')
    now += 10_000
    assert.equal(b.msUntil(5), 0, 'refill stops at the burst')
    assert.equal(b.take(6), false)
    assert.equal(b.msUntil(6), Number.POSITIVE_INFINITY, 'more than the burst never fits')
  })
})

/** Collects the error messages a device receives on its error topic. */
function errorsOf(client: MqttClient): Array<{ code: string; ref: { topic: string; cmid?: string }; retryAfterMs?: number }> {
  const errors: Array<{ code: string; ref: { topic: string; cmid?: string }; retryAfterMs?: number }> = []
  client.on('message', (topic, payload) => {
    if (topic.endsWith('/err')) errors.push(JSON.parse(payload.toString()) as (typeof errors)[number])
  })
  return errors
}

/** A ping round trip: proves the client is still served and that earlier answers have arrived. */
async function ping(client: MqttClient, user: string, device: string, id: string): Promise<void> {
  const response = new Promise<void>((resolve) => {
    const onMessage = (topic: string, payload: Buffer) => {
      if (topic === `u/${user}/d/${device}/res` && (JSON.parse(payload.toString()) as { id: string }).id === id) {
        client.off('message', onMessage)
        resolve()
      }
    }
    client.on('message', onMessage)
  })
  await client.publishAsync('s/rpc', JSON.stringify({ id, method: 'ping' }), { qos: 1 })
  await response
}

describe('limits plugin', () => {
  let t: TestNode
  before(async () => {
    t = await startNode({
      mqtt: { maxRejectionsPerSecond: 1000 },
      plugins: [
        {
          use: 'limits',
          config: {
            maxPayloadBytes: 200,
            maxTopicLevels: 5,
            maxSubscriptionsPerClient: 3,
            publish: { messagesPerSecond: 5, burstMessages: 5, maxDelayMs: 5000 },
            connections: { perIpPerSecond: 0.5, burstPerIp: 12 },
            keepalive: { minSeconds: 10, maxSeconds: 120 }
          }
        },
        'protocol'
      ]
    })
  })
  after(async () => t?.stop())

  it('refuses keepalives outside the bounds without a CONNACK', async () => {
    for (const keepalive of [0, 5, 300]) {
      await assert.rejects(connectClient(t.mqttUrl, { clientId: `ka:k${keepalive}`, keepalive }), `keepalive ${keepalive}`)
    }
    const ok = await connectClient(t.mqttUrl, { clientId: 'ka:ok', keepalive: 60 })
    await ok.endAsync()
  })

  it('answers an oversized payload and a too deep topic with an error, and keeps the client', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: 'big:phone', keepalive: 60 })
    const errors = errorsOf(c)
    await c.subscribeAsync('u/big/#', { qos: 1 })
    await c.publishAsync('s/dm/bob', JSON.stringify({ cmid: 'c1', body: 'x'.repeat(300) }), { qos: 1 })
    await c.publishAsync('s/a/b/c/d/e', '{}', { qos: 1 })
    await ping(c, 'big', 'phone', 'p1')
    assert.deepEqual(
      errors.map((e) => [e.code, e.ref.topic, e.ref.cmid]),
      [
        ['payload_too_large', 's/dm/bob', 'c1'],
        ['forbidden', 's/a/b/c/d/e', undefined]
      ]
    )
    await c.endAsync()
  })

  it('holds QoS 1 publishes over the rate instead of refusing them (back-pressure)', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: 'steady:phone', keepalive: 60 })
    const errors = errorsOf(c)
    await c.subscribeAsync('u/steady/#', { qos: 1 })
    // 12 messages at 5/s with a burst of 5: the last ones wait for tokens; all are accepted.
    await Promise.all(
      Array.from({ length: 12 }, (_, i) => c.publishAsync('s/dm/bob', JSON.stringify({ cmid: `m${i}`, body: 'hi' }), { qos: 1 }))
    )
    await ping(c, 'steady', 'phone', 'p2')
    assert.deepEqual(errors, [], 'nothing was refused')
    const metrics = await (await fetch(`http://127.0.0.1:${t.ops}/metrics`)).text()
    assert.match(metrics, /^parley_limits_hits_total\{limit="publish_delayed"\} [1-9]/m)
    await c.endAsync()
  })

  it('refuses QoS 0 publishes over the rate with rate_limited and when to retry', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: 'burst:phone', keepalive: 60 })
    const errors = errorsOf(c)
    await c.subscribeAsync('u/burst/#', { qos: 1 })
    for (let i = 0; i < 10; i++) await c.publishAsync('s/dm/bob', JSON.stringify({ cmid: `q${i}`, body: 'hi' }), { qos: 0 })
    await ping(c, 'burst', 'phone', 'p3')
    assert.ok(errors.length >= 4, `at least the messages past the burst are refused (${errors.length})`)
    for (const e of errors) {
      assert.equal(e.code, 'rate_limited')
      assert.ok(typeof e.retryAfterMs === 'number' && e.retryAfterMs >= 0)
      assert.match(e.ref.cmid ?? '', /^q\d$/)
    }
    await c.endAsync()
  })

  it('caps subscriptions per client, counting every filter of one SUBSCRIBE', async () => {
    const c = await connectClient(t.mqttUrl, { clientId: 'subs:phone', keepalive: 60 })
    // mqtt.js reports a partly refused SUBSCRIBE as an error; read the SUBACK itself.
    const suback = new Promise<number[]>((resolve) =>
      c.on('packetreceive', (p) => {
        if (p.cmd === 'suback') resolve(p.granted as number[])
      })
    )
    c.subscribe(['u/subs/m', 'u/subs/r', 'u/subs/e', 'u/subs/d/phone/res'], { qos: 1 }, () => undefined)
    assert.deepEqual(await suback, [1, 1, 1, 128], 'the fourth filter is over the cap')
    await c.unsubscribeAsync('u/subs/m')
    assert.deepEqual((await c.subscribeAsync('u/subs/d/phone/res', { qos: 1 })).map((g) => g.qos), [1], 'room again after unsubscribing')
    await c.endAsync()
  })

  it('limits the connection rate per address without a CONNACK', async () => {
    // The burst (12) is partly used by the tests above; keep connecting until refused, bounded.
    let refused = false
    const opened: MqttClient[] = []
    for (let i = 0; i < 20 && !refused; i++) {
      try {
        opened.push(await connectClient(t.mqttUrl, { clientId: `flood:${i}`, keepalive: 60 }))
      } catch {
        refused = true
      }
    }
    assert.equal(refused, true, 'a burst of connections from one address is cut off')
    await Promise.all(opened.map((c) => c.endAsync()))
    const metrics = await (await fetch(`http://127.0.0.1:${t.ops}/metrics`)).text()
    assert.match(metrics, /^parley_limits_hits_total\{limit="connection_rate"\} [1-9]/m)
    assert.match(metrics, /^parley_limits_hits_total\{limit="keepalive"\} 3$/m)
  })
})
