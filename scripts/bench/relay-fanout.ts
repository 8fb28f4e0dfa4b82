// Pure relay, fan-out (issue 10, item 2): one publisher, one topic, 1,000 subscribers all online,
// QoS 0 and QoS 1, against Parley (no plugins), plain Aedes and Mosquitto. Deliveries per second
// (messages x subscribers) and the broker's memory: idle, with the subscribers connected, after the
// traffic, and its peak.
//   npm run bench relay-fanout -- [--subscribers 1000] [--window 10] [--seconds 5] [--qos 0,1]
//                                 [--workers 2] [--client raw|mqttjs] [--payload 100] [--targets a,b]
import { parseArgs } from 'node:util'
import { memoryMiB, round } from './_common.js'
import { COMMON_ARGS, addRatios, commonOptions, fmt, limitedBy, progress, withGenerator, withTarget, type RelayRow } from './_relay.js'

export const description = 'pure relay fan-out: 1 publisher to 1,000 online subscribers, deliveries/s and broker RSS; Parley vs Aedes vs Mosquitto'

interface Row extends RelayRow {
  rssMiB: { idle: number; connected: number; afterRun: number; peak: number }
  kibPerSubscriber: number
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const { values } = parseArgs({
    args,
    options: { ...COMMON_ARGS, subscribers: { type: 'string', default: '1000' }, window: { type: 'string', default: '10' }, seconds: { type: 'string', default: '5' }, qos: { type: 'string', default: '0,1' } }
  })
  const common = commonOptions(values, ['parley', 'aedes', 'mosquitto'])
  const subscribers = Number(values.subscribers)
  const window = Number(values.window)
  const seconds = Number(values.seconds)
  const qosList = values.qos.split(',').map(Number) as Array<0 | 1>
  if (!(subscribers >= 1 && subscribers <= 15_000 && window >= 1 && seconds > 0 && seconds <= 120 && qosList.every((q) => q === 0 || q === 1))) throw new Error('1 <= --subscribers <= 15000, --window >= 1, 0 < --seconds <= 120, --qos of 0 and 1')
  if (common.targets.includes('parley-chat')) throw new Error('relay-fanout is a relay scenario: parley-chat has no plain topic to fan out (group fan-out is its own scenario)')

  const rows: Row[] = []
  for (const target of common.targets) {
    // A fresh broker per QoS, so each memory column starts from an idle process.
    for (const qos of qosList) {
      await withTarget(target, async (t) => {
        const idle = memoryMiB(t.pid).rss
        await withGenerator(t, common, { qos, flows: 1, subscribers }, async (gen) => {
          const connected = memoryMiB(t.pid).rss
          const r = await gen.run(t, { window, rate: 0, warmupMs: common.warmupMs, durationMs: seconds * 1000 })
          const row: Row = {
            target,
            qos,
            ...r,
            rssMiB: { idle, connected, afterRun: r.brokerRssMiB, peak: memoryMiB(t.pid).peak },
            kibPerSubscriber: round(((connected - idle) * 1024) / subscribers, 1),
            limitedBy: limitedBy(r, target)
          }
          rows.push(row)
          progress(`${target} QoS ${qos}: ${fmt(r.deliveredPerSecond)} deliveries/s, RSS ${idle} -> ${connected} -> ${r.brokerRssMiB} MiB (peak ${row.rssMiB.peak}), broker ${r.brokerCores} cores, generator ${r.generatorCores} (ELU ${r.workerElu.join(', ')})`)
        })
      })
    }
  }
  addRatios(rows)
  return { subscribers, window, seconds, workers: common.workers, client: common.client, payloadBytes: common.payload, rows }
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as { subscribers: number; window: number; seconds: number; workers: number; client: string; payloadBytes: number; rows: Row[] }
  return [
    `One publisher, one topic, ${fmt(r.subscribers)} subscribers (all online, spread over the generator threads), ${r.payloadBytes}-byte payloads, at most ${r.window} messages not yet delivered to every subscriber, ${r.seconds} s measured per row; generator: ${r.workers} threads, ${r.client} client. RSS: the idle broker, with the subscribers connected, after the traffic, and its peak (VmHWM).`,
    '',
    '| Target | QoS | Deliveries/s | vs Aedes | vs Mosquitto | p50 / p99 ms | RSS MiB idle → connected → after | KiB per subscriber | Broker cores | Generator cores (thread ELU) | Other cores | Limited by |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.target} | ${x.qos} | ${fmt(x.deliveredPerSecond)} | ${x.vsAedes !== undefined ? `${x.vsAedes}x` : '—'} | ${x.vsMosquitto !== undefined ? `${x.vsMosquitto}x` : '—'} | ${x.latencyMs.p50} / ${x.latencyMs.p99} | ${x.rssMiB.idle} → ${x.rssMiB.connected} → ${x.rssMiB.afterRun} (peak ${x.rssMiB.peak}) | ${x.kibPerSubscriber} | ${x.brokerCores} | ${x.generatorCores} (${x.workerElu.join(', ')}) | ${x.otherCores} | ${x.limitedBy}${x.errors ? `; ${x.errors} errors` : ''} |`
    ),
    '',
    'Each delivery of a fan-out is a write to a different socket, so the generator reads as many packets as the broker writes: on 2 cores, fan-out is where the generator weighs most. Growth "after" the traffic is what the run left behind (buffers, V8 heap not yet collected), not a per-message leak.'
  ].join('\n')
}
