// Relay latency at a fixed rate (issue 10, items 2 and 4): N pairs publish at a steady total rate,
// by default half of the maximum relay-p2p measured for that target at QoS 1 (in this invocation,
// or in a short calibration run here), and each message's end-to-end latency is taken at the
// receiver from the send time in its payload: p50, p99, p99.9 per target.
//   npm run bench relay-latency -- [--rate 0 (half of max) | N msg/s] [--pairs 32] [--seconds 10]
//                                  [--qos 1] [--calibrate-seconds 3] [--workers 2] [--client raw|mqttjs]
//                                  [--payload 100] [--targets a,b]
import { parseArgs } from 'node:util'
import { COMMON_ARGS, commonOptions, fmt, limitedBy, measuredMaxQos1, progress, withGenerator, withTarget, type RunResult, type TargetName } from './_relay.js'

export const description = 'relay latency at a fixed rate (half of the measured max): p50/p99/p99.9 end to end; Parley vs Aedes vs Mosquitto'
/** After relay-p2p, whose maxima it reuses. */
export const order = 1

interface Row extends RunResult {
  target: TargetName
  rate: number
  rateFrom: string
  limitedBy: string
}

export async function run(args: string[]): Promise<Record<string, unknown>> {
  const { values } = parseArgs({
    args,
    options: {
      ...COMMON_ARGS,
      rate: { type: 'string', default: '0' },
      pairs: { type: 'string', default: '32' },
      seconds: { type: 'string', default: '10' },
      qos: { type: 'string', default: '1' },
      'calibrate-seconds': { type: 'string', default: '3' }
    }
  })
  const common = commonOptions(values, ['parley', 'aedes', 'mosquitto', 'parley-chat'])
  const rate = Number(values.rate)
  const pairs = Number(values.pairs)
  const seconds = Number(values.seconds)
  const qos = Number(values.qos) as 0 | 1
  const calibrate = Number(values['calibrate-seconds'])
  if (!(rate >= 0 && pairs >= 1 && seconds > 0 && seconds <= 120 && (qos === 0 || qos === 1) && calibrate > 0 && calibrate <= 30)) throw new Error('--rate >= 0, --pairs >= 1, 0 < --seconds <= 120, --qos 0 or 1, 0 < --calibrate-seconds <= 30')

  const rows: Row[] = []
  for (const target of common.targets) {
    await withTarget(target, async (t) => {
      await withGenerator(t, common, { qos: target === 'parley-chat' ? 1 : qos, flows: pairs, subscribers: 1 }, async (gen) => {
        let r = rate
        let rateFrom = '--rate'
        if (!r) {
          let max = qos === 1 ? measuredMaxQos1.get(target) : undefined
          rateFrom = 'half of relay-p2p QoS 1 max'
          if (!max) {
            max = (await gen.run(t, { window: 16, rate: 0, warmupMs: common.warmupMs, durationMs: calibrate * 1000 })).deliveredPerSecond
            rateFrom = `half of a ${calibrate} s calibration max (${fmt(max)}/s)`
          }
          r = Math.max(1, Math.round(max / 2))
        }
        // A window far above rate x latency: it only bounds a target that cannot keep up.
        const res = await gen.run(t, { window: 1000, rate: r, warmupMs: common.warmupMs, durationMs: seconds * 1000 })
        // At a fixed rate "limited by" says whether the rate was held, and what was near saturation.
        const behind = res.deliveredPerSecond < 0.97 * r ? `could not keep up with the rate (${fmt(res.deliveredPerSecond)}/s delivered): latency is queueing; ` : ''
        const why = limitedBy(res, target)
        rows.push({ target, rate: r, rateFrom, ...res, limitedBy: `${behind}${why.startsWith('neither') ? 'the fixed rate (neither side saturated)' : why}` })
        progress(`${target} at ${fmt(r)}/s: delivered ${fmt(res.deliveredPerSecond)}/s, p50 ${res.latencyMs.p50} p99 ${res.latencyMs.p99} p99.9 ${res.latencyMs.p999} ms, broker ${res.brokerCores}, generator ${res.generatorCores} (ELU ${res.workerElu.join(', ')})`)
      })
    })
  }
  return { pairs, seconds, qos, workers: common.workers, client: common.client, payloadBytes: common.payload, rows }
}

export function markdown(result: Record<string, unknown>): string {
  const r = result as { pairs: number; seconds: number; qos: number; workers: number; client: string; payloadBytes: number; rows: Row[] }
  return [
    `${r.pairs} pairs publishing QoS ${r.qos} (parley-chat: QoS 1, stored) at a steady total rate, ${r.payloadBytes}-byte payloads, ${r.seconds} s measured per row; latency from the send time in the payload to its arrival at the subscriber; generator: ${r.workers} threads, ${r.client} client, sending each millisecond what is due.`,
    '',
    '| Target | Rate msg/s (from) | Delivered msg/s | p50 ms | p99 ms | p99.9 ms | max ms | Samples | Broker cores | Generator cores (thread ELU) | Other cores | Limited by |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.rows.map(
      (x) =>
        `| ${x.target} | ${fmt(x.rate)} (${x.rateFrom}) | ${fmt(x.deliveredPerSecond)} | ${x.latencyMs.p50} | ${x.latencyMs.p99} | ${x.latencyMs.p999} | ${x.latencyMs.max} | ${fmt(x.latencyMs.samples)} | ${x.brokerCores} | ${x.generatorCores} (${x.workerElu.join(', ')}) | ${x.otherCores} | ${x.limitedBy}${x.errors ? `; ${x.errors} errors` : ''} |`
    ),
    '',
    'Each target runs at half of its own maximum, so the rates differ between rows; compare latencies, not rates. The issue\'s target is p99 under 50 ms at that rate. The tail includes garbage-collection pauses of both the broker and the generator, and the scheduler sharing 2 cores between them.'
  ].join('\n')
}
