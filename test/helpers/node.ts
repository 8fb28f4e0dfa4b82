// In-process broker nodes for tests that need to reach inside (plugins, hooks).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { createLogger } from '../../broker/logger.js'
import { BrokerNode } from '../../broker/node.js'
import type { ParleyPlugin } from '../../broker/plugin-api.js'
import { ConfigSchema, type ConfigInput } from '../../schemas/config.js'

export interface TestNode {
  node: BrokerNode
  tcp: number
  ops: number
  ws: number
  mqttUrl: string
  stop(): Promise<void>
}

export async function startNode(
  input: ConfigInput = {},
  extraBuiltins: Record<string, () => Promise<ParleyPlugin>> = {}
): Promise<TestNode> {
  const dataDir = mkdtempSync(join(tmpdir(), 'parley-node-'))
  const config = ConfigSchema.parse({
    dataDir,
    log: { level: process.env.TEST_LOG_LEVEL ?? 'silent' },
    // A bare broker unless the test names its plugins: these tests reach inside the core.
    plugins: [],
    ...input,
    mqtt: { allowAnonymous: true, ...input.mqtt },
    listeners: {
      tcp: { host: '127.0.0.1', port: 0 },
      ws: { host: '127.0.0.1', port: 0 },
      ops: { host: '127.0.0.1', port: 0 },
      ...input.listeners
    }
  })
  const node = new BrokerNode({ config, log: createLogger(config.log.level), extraBuiltins })
  try {
    await node.start()
  } catch (err) {
    await node.stop().catch(() => undefined)
    rmSync(dataDir, { recursive: true, force: true })
    throw err
  }
  const port = (name: string) => node.addresses().find((a) => a.name === name)?.port ?? -1
  return {
    node,
    tcp: port('tcp'),
    ops: port('ops'),
    ws: port('ws'),
    mqttUrl: `mqtt://127.0.0.1:${port('tcp')}`,
    stop: async () => {
      await node.stop()
      rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

/** Connects an mqtt.js client and fails fast (also when the socket closes without a CONNACK) instead of retrying. */
export async function connectClient(url: string, options: IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options }, false)
}

/**
 * Connects and resolves with the CONNACK return code mqtt.js reports: 0 when accepted, the refusal
 * code otherwise, or 'closed' when the socket closed without a CONNACK.
 */
export async function connackCode(url: string, options: IClientOptions): Promise<number | 'closed'> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options })
  try {
    return await new Promise((resolve) => {
      client.once('connect', () => resolve(0))
      client.once('error', (err) => resolve((err as Error & { code?: number }).code ?? 'closed'))
      client.once('close', () => resolve('closed'))
    })
  } finally {
    client.end(true)
  }
}

/** Resolves with the next message on a client (optionally only on one topic). */
export function nextMessage(client: MqttClient, topic?: string): Promise<{ topic: string; payload: string }> {
  return new Promise((resolve) => {
    const onMessage = (t: string, payload: Buffer) => {
      if (topic && t !== topic) return
      client.off('message', onMessage)
      resolve({ topic: t, payload: payload.toString() })
    }
    client.on('message', onMessage)
  })
}
