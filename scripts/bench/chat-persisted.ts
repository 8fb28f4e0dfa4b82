// Persisted one-to-one chat throughput: one sender device publishes N messages (QoS 1, 100-byte
// bodies, a window of in-flight publishes) to one recipient device; a message counts when the
// sender has its PUBACK (stored) and the recipient has it. Runs against an in-process node on the
// embedded store, and on MongoDB when TEST_MONGO_URL is set (e.g. from `npm run services -- up`).
//   npm run bench chat-persisted -- [--messages N] [--window W]
import { randomBytes } from 'node:crypto'
import { parseArgs } from 'node:util'
import { connectClient, startNode } from '../../test/helpers/node.js'

export const description = 'one-to-one messages stored before PUBACK and delivered: embedded store and MongoDB'

async function measure(mongo: { url: string; database: string } | undefined, messages: number, window: number) {
  const t = await startNode({ ...(mongo ? { mongo } : {}), plugins: ['protocol', 'groups', 'messages'] })
  try {
    // The store initialises in the background: wait until the node is ready.
    for (let i = 0; i < 200 && (await fetch(`http://127.0.0.1:${t.ops}/readyz`)).status !== 200; i++) await new Promise((r) => setTimeout(r, 50))
    const run = randomBytes(3).toString('hex')
    const [from, to] = [`s${run}`, `r${run}`]
    const sender = await connectClient(t.mqttUrl, { clientId: `${from}:phone` })
    const recipient = await connectClient(t.mqttUrl, { clientId: `${to}:phone` })
    await recipient.subscribeAsync(`u/${to}/#`, { qos: 1 })
    let received = 0
    const allReceived = new Promise<void>((resolve) =>
      recipient.on('message', (topic) => {
        if (topic === `u/${to}/m` && ++received === messages) resolve()
      })
    )
    const body = 'x'.repeat(100)
    const started = performance.now()
    let next = 0
    const worker = async () => {
      while (next < messages) {
        const i = next++
        await sender.publishAsync(`s/dm/${to}`, JSON.stringify({ cmid: `c${i}`, body }), { qos: 1 })
      }
    }
    await Promise.all(Array.from({ length: window }, worker))
    const acked = performance.now() - started
    await allReceived
    const delivered = performance.now() - started
    await Promise.all([sender.endAsync(), recipient.endAsync()])
    return {
      messages,
      window,
      ackedPerSecond: Math.round((messages * 1000) / acked),
      deliveredPerSecond: Math.round((messages * 1000) / delivered)
    }
  } finally {
    await t.stop()
  }
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const { values } = parseArgs({ args, options: { messages: { type: 'string', default: '5000' }, window: { type: 'string', default: '100' } } })
  const messages = Number(values.messages)
  const window = Number(values.window)
  const embedded = await measure(undefined, messages, window)
  process.stderr.write(`[bench] embedded store: ${embedded.ackedPerSecond} stored/s, ${embedded.deliveredPerSecond} delivered/s\n`)
  const url = process.env.TEST_MONGO_URL
  const mongo = url ? await measure({ url, database: `parley_bench_${randomBytes(3).toString('hex')}` }, messages, window) : undefined
  if (mongo) process.stderr.write(`[bench] MongoDB (${url}): ${mongo.ackedPerSecond} stored/s, ${mongo.deliveredPerSecond} delivered/s\n`)
  return { embedded, ...(mongo ? { mongo } : { mongo: 'skipped: set TEST_MONGO_URL' }) }
}
