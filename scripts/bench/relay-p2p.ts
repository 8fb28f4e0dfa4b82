// Pure relay, point to point (issue 10, item 2): N publisher/subscriber pairs, each pair on its own
// topic, QoS 1 and QoS 0, for a fixed time, against Parley (no plugins), plain Aedes and Mosquitto,
// plus Parley with the chat plugins (stored one-to-one chat, QoS 1). Delivered messages per second,
// with the ratio to Aedes and Mosquitto beside each, and the CPU each side used.
//   npm run bench relay-p2p -- [--pairs 32] [--window 16] [--seconds 5] [--qos 1,0] [--workers 2]
//                              [--client raw|mqttjs] [--payload 100] [--warmup-ms 1000] [--targets a,b]
import { parseArgs } from 'node:util'
import { COMMON_ARGS, addRatios, commonOptions, fmt, limitedBy, measuredMaxQos1, progress, withGenerator, withTarget, type RelayRow } from './_relay.js'

export const description = 'pure relay 1->1: N pairs, QoS 1 and 0, msg/s delivered; Parley vs plain Aedes vs Mosquitto'

type Row = RelayRow

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const { values } = parseArgs({
    args,
    options: { ...COMMON_ARGS, pairs: { type: 'string', default: '32' }, window: { type: 'string', default: '16' }, seconds: { type: 'string', default: '5' }, qos: { type: 'string', default: '1,0' } }
  })
  const common = commonOptions(values, ['parley', 'aedes', 'mosquitto', 'parley-chat'])
  const pairs = Number(values.pairs)
  const window = Number(values.window)
  const seconds = Number(values.seconds)
  const qosList = values.qos.split(',').map(Number) as Array<0 | 1>
  if (!(pairs >= 1 && window >= 1 && seconds > 0 && seconds <= 120 && qosList.every((q) => q === 0 || q === 1))) throw new Error('--pairs >= 1, --window >= 1, 0 < --seconds <= 120, --qos of 0 and 1')

  const rows: Row[] = []
  for (const target of common.targets) {
    await withTarget(target, async (t) => {
      // Stored chat is QoS 1 only: the messages plugin acknowledges a send once stored.
      for (const qos of target === 'parley-chat' ? qosList.filter((q) => q === 1) : qosList) {
        await withGenerator(t, common, { qos, flows: pairs, subscribers: 1 }, async (gen) => {
          const r = await gen.run(t, { window, rate: 0, warmupMs: common.warmupMs, durationMs: seconds * 1000 })
          rows.push({ target, qos, ...r, limitedBy: limitedBy(r, target) })
          progress(`${target} QoS ${qos}: ${fmt(r.deliveredPerSecond)} msg/s${r.receiptsPerSecond !== undefined ? ` (${fmt(r.receiptsPerSecond)} receipted/s)` : ''}, p50 ${r.latencyMs.p50} ms, broker ${r.brokerCores} cores, generator ${r.generatorCores} cores (ELU ${r.workerElu.join(', ')})`)
          if (qos === 1) measuredMaxQos1.set(target, r.deliveredPerSecond)
        })
      }
    })
  }
  addRatios(rows)
  return { pairs, window, seconds, workers: common.workers, client: common.client, payloadBytes: common.payload, rows }
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as { pairs: number; window: number; seconds: number; workers: number; client: string; payloadBytes: number; rows: Row[] }
  return [
    `${r.pairs} publisher/subscriber pairs, one topic each, ${r.payloadBytes}-byte payloads, a window of ${r.window} undelivered messages per pair, ${r.seconds} s measured per row; generator: ${r.workers} threads, ${r.client} client.`,
    '',
    '| Target | QoS | Delivered msg/s | vs Aedes | vs Mosquitto | p50 / p99 ms | Broker cores | Generator cores (thread ELU) | Other cores | Limited by |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.target} | ${x.qos} | ${fmt(x.deliveredPerSecond)}${x.receiptsPerSecond !== undefined ? ` (${fmt(x.receiptsPerSecond)} receipted/s)` : ''} | ${x.vsAedes !== undefined ? `${x.vsAedes}x` : '—'} | ${x.vsMosquitto !== undefined ? `${x.vsMosquitto}x` : '—'} | ${x.latencyMs.p50} / ${x.latencyMs.p99} | ${x.brokerCores} | ${x.generatorCores} (${x.workerElu.join(', ')}) | ${x.otherCores} | ${x.limitedBy}${x.errors ? `; ${x.errors} errors` : ''} |`
    ),
    '',
    'Parley sets TCP_NODELAY on its sockets (`listeners.tcp.noDelay`, default true, as EMQX and VerneMQ do; plain Aedes and Debian\'s Mosquitto leave Nagle on): an RPC answer no longer waits ~40 ms for the device\'s delayed ACK (reconnect-storm\'s pull p50 went from 43.9 to 5.3 ms), but saturated relay throughput pays for the extra segments (bare relay QoS 1, same machine, back to back: 57,343 msg/s with Nagle, 49,122 without). Latency here is under saturation (a full window in flight): it is queueing, not the relay\'s latency; see relay-latency. `parley-chat` is stored one-to-one chat, not a relay: each message is stored (SQLite) before its PUBACK, goes to the recipient (a persistent session, as a phone keeps) and as a carbon to the sender, and the recipient\'s PUBACKs move its delivered marker and send the sender a delivered receipt "up to seq N" (the acknowledgements of one event-loop turn share one receipt; in brackets, the messages per second the senders saw receipted). Its ratios are the issue\'s chat targets (>= 0.7x Aedes QoS 1 and >= Mosquitto QoS 1).'
  ].join('\n')
}
