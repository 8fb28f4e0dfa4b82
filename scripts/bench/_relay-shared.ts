// Types and the shared-memory layout of the relay load generator, used by both the main thread
// (_relay.ts) and the generator threads (_relay-worker.ts, whose module body runs only in a thread).
import type { MessagePort } from 'node:worker_threads'

export type ClientKind = 'raw' | 'mqttjs'
/** relay: plain topics; chat: Parley's chat protocol (publish s/dm/<peer>, receive u/<peer>/m). */
export type TopicKind = 'relay' | 'chat'

export interface WorkerInit {
  worker: number
  host: string
  port: number
  client: ClientKind
  kind: TopicKind
  qos: 0 | 1
  run: string
  flows: number
  /** Flows whose publisher lives in this thread. */
  pubs: number[]
  /** [flow, subscribers of it in this thread]. */
  subs: Array<[number, number]>
  /** Subscribers of each flow over all threads. */
  subsPerFlow: number[]
  shared: SharedArrayBuffer
  payloadBytes: number
  sampleCap: number
}

export type Command =
  | { cmd: 'connect' }
  | { cmd: 'run'; mode: 'window'; window: number }
  | { cmd: 'run'; mode: 'rate'; ratePerFlow: number; window: number }
  | { cmd: 'mark' }
  | { cmd: 'stop' }
  | { cmd: 'close' }

// Layout of the shared Int32Array.
export const RUNNING = 0
export const MEASURING = 1
export const sentIndex = (f: number): number => 2 + f
export const deliveredIndex = (flows: number, f: number): number => 2 + flows + f
export const sharedSize = (flows: number): number => (2 + 2 * flows) * 4

export const relayTopic = (run: string, f: number): string => `bench/${run}/f${f}`
export const chatUsers = (run: string, f: number): { from: string; to: string } => ({ from: `p${run}f${f}`, to: `r${run}f${f}` })

/**
 * A generator thread's side of _relay.ts's GenThread: says 'started', then answers each command with
 * `{ reply: cmd, ...result }` (or `error`); a `latencies` Float64Array is moved, not copied.
 */
export function serveThread<C extends { cmd: string }>(port: MessagePort, handle: (c: C) => Promise<Record<string, unknown>>): void {
  port.on('message', (c: C) => {
    handle(c).then(
      (reply) => port.postMessage({ reply: c.cmd, ...reply }, reply.latencies instanceof Float64Array ? [reply.latencies.buffer as ArrayBuffer] : []),
      (err: unknown) => port.postMessage({ reply: c.cmd, error: err instanceof Error ? err.message : String(err) })
    )
  })
  port.postMessage({ reply: 'started' })
}
