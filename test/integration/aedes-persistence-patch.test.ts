// patches/aedes-persistence+11.0.0.patch: a persistent session subscribing to several filters in
// one SUBSCRIBE over Redis. Aedes stores the SUBSCRIBE's whole list once per filter, at the same
// time, and aedes-persistence's broadcast step kept one waiter per key: all but the last store
// never finished, so the client never got its SUBACK. Patched, each store waits for its own echo.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import mqtt from 'mqtt'
import { eventually, within } from '../helpers/broker-process.js'
import { connectClient, startNode } from '../helpers/node.js'
import { redisDb } from '../helpers/services.js'

describe('aedes-persistence over Redis (patched)', () => {
  it('answers a persistent session\'s SUBSCRIBE of several filters, and delivers on each', { timeout: 60_000 }, async () => {
    const t = await startNode({ redis: { url: redisDb(45) } })
    const id = randomBytes(3).toString('hex')
    const device = mqtt.connect(t.mqttUrl, { clientId: `multi${id}:phone`, clean: false, reconnectPeriod: 0 })
    try {
      await within(new Promise((resolve) => device.once('connect', resolve)), 5000, 'connect')
      const filters = { [`a/${id}`]: { qos: 1 as const }, [`b/${id}/#`]: { qos: 1 as const }, [`c/${id}/+`]: { qos: 0 as const } }
      const granted = await within(device.subscribeAsync(filters), 10_000, 'the SUBACK of three filters at once')
      assert.deepEqual(granted.map((g) => [g.topic, g.qos]), [
        [`a/${id}`, 1],
        [`b/${id}/#`, 1],
        [`c/${id}/+`, 0]
      ])
      const got: string[] = []
      device.on('message', (topic) => got.push(topic))
      const sender = await connectClient(t.mqttUrl, { clientId: `sender${id}` })
      for (const topic of [`a/${id}`, `b/${id}/x`, `c/${id}/y`]) await sender.publishAsync(topic, 'hi', { qos: 1 })
      await eventually(() => got.length === 3, 10_000, 'one message on each filter')
      assert.deepEqual(got.sort(), [`a/${id}`, `b/${id}/x`, `c/${id}/y`])
      await sender.endAsync()
    } finally {
      device.end(true)
      await t.stop()
    }
  })
})
