// A test device: a real mqtt.js client subscribed to its user's tree, sorting what arrives by topic
// (messages, system notices, receipts, events, errors) and answering RPCs by correlation id.
import type { IClientOptions, MqttClient } from 'mqtt'
import type { ErrorMessage, Event, MessageEnvelope, Receipt } from '../../schemas/protocol.js'
import { within } from './broker-process.js'
import { connectClient } from './node.js'

export interface RpcAnswer {
  ok: boolean
  result?: unknown
  error?: { code: string; message: string }
}

export interface TestDevice {
  user: string
  device: string
  client: MqttClient
  messages: MessageEnvelope[]
  /** System notices (type system) arrive here, not in `messages`. */
  notices: MessageEnvelope[]
  receipts: Receipt[]
  events: Event[]
  errors: ErrorMessage[]
  rpc(method: string, params?: object): Promise<RpcAnswer>
  /** rpc() that fails the test unless the answer is ok; returns the result. */
  call<T>(method: string, params?: object): Promise<T>
  /** Sends a one-to-one (`dm`) or group (`g`) message; resolves on PUBACK (stored). */
  send(to: { dm: string } | { g: string }, payload: object): Promise<void>
  publish(topic: string, payload: object): Promise<void>
  end(): Promise<void>
}

let rpcIds = 0

export async function testDevice(url: string, user: string, device = 'phone', options: IClientOptions = {}): Promise<TestDevice> {
  const client = await connectClient(url, { clientId: `${user}:${device}`, ...options })
  const d: Omit<TestDevice, 'rpc' | 'call' | 'send' | 'publish' | 'end'> = { user, device, client, messages: [], notices: [], receipts: [], events: [], errors: [] }
  const waiting = new Map<string, (r: RpcAnswer) => void>()
  client.on('message', (topic, payload) => {
    const body = JSON.parse(payload.toString()) as Record<string, unknown>
    if (topic === `u/${user}/m`) (body.type === 'system' ? d.notices : d.messages).push(body as unknown as MessageEnvelope)
    else if (topic === `u/${user}/r`) d.receipts.push(body as unknown as Receipt)
    else if (topic === `u/${user}/e`) d.events.push(body as unknown as Event)
    else if (topic === `u/${user}/d/${device}/err`) d.errors.push(body as unknown as ErrorMessage)
    else if (topic === `u/${user}/d/${device}/res`) waiting.get(body.id as string)?.(body as unknown as RpcAnswer)
  })
  await client.subscribeAsync(`u/${user}/#`, { qos: 1 })
  const rpc = (method: string, params: object = {}): Promise<RpcAnswer> => {
    const id = `t${++rpcIds}`
    const answered = new Promise<RpcAnswer>((resolve) => waiting.set(id, resolve))
    void client.publishAsync('s/rpc', JSON.stringify({ id, method, params }), { qos: 1 })
    return within(answered, 10_000, `${user}:${device} answer to ${method}`).finally(() => waiting.delete(id))
  }
  const publish = async (topic: string, payload: object): Promise<void> => {
    await within(client.publishAsync(topic, JSON.stringify(payload), { qos: 1 }), 10_000, `PUBACK of ${topic}`)
  }
  return {
    ...d,
    rpc,
    call: async <T>(method: string, params: object = {}) => {
      const answer = await rpc(method, params)
      if (!answer.ok) throw new Error(`${method} failed: ${JSON.stringify(answer.error)}`)
      return answer.result as T
    },
    send: (to, payload) => publish('dm' in to ? `s/dm/${to.dm}` : `s/g/${to.g}`, payload),
    publish,
    end: async () => {
      await within(client.endAsync(), 5000, `${user}:${device} disconnect`)
    }
  }
}
