// Cluster-wide admin requests: ask every node (this one included) and gather the answers. A request
// goes out on the cluster emitter (Redis pub/sub in a cluster, in-process otherwise); each node
// answers on a channel of the asking node. The asker waits for every node of the cluster view, or
// until admin.queryTimeoutMs, and says which nodes did not answer.
import { randomBytes } from 'node:crypto'
import type { Logger } from '../logger.js'

// Exact channels (no pattern): Redis checks every publish against every pattern subscription.
const REQUEST_TOPIC = '$parley/admin/request'
const REPLY_PREFIX = '$parley/admin/reply/'

interface Emitter {
  on<P>(topic: string, fn: (packet: P, cb: () => void) => void, done?: () => void): void
  removeListener?(topic: string, fn: (packet: never, cb: () => void) => void, done?: () => void): void
  emit(packet: { topic: string; [field: string]: unknown }, cb?: (err?: Error) => void): void
}

interface RequestPacket {
  topic: string
  payload: Buffer | Uint8Array | string
}

export type QueryHandler = (args: unknown) => Promise<unknown>

export interface NodeAnswer<T> {
  node: string
  ok: boolean
  result?: T
  error?: string
}

export interface GatherResult<T> {
  answers: Array<NodeAnswer<T>>
  /** Nodes in the cluster view that did not answer in time. */
  missing: string[]
}

export class ClusterQuery {
  private readonly handlers = new Map<string, QueryHandler>()
  private readonly pending = new Map<string, { expected: string[]; answers: Array<NodeAnswer<unknown>>; wake: () => void }>()
  private mq: Emitter | undefined

  constructor(
    private readonly opts: {
      brokerId: string
      log: Logger
      timeoutMs: number
      /** Ids of the live nodes (the cluster view). */
      nodes(): Promise<string[]>
    }
  ) {}

  /** Answers `name` on this node (declare before start). */
  handle(name: string, handler: QueryHandler): void {
    if (this.handlers.has(name)) throw new Error(`cluster query ${name} has two handlers`)
    this.handlers.set(name, handler)
  }

  async start(mq: Emitter): Promise<void> {
    this.mq = mq
    const on = (topic: string, fn: (packet: RequestPacket, cb: () => void) => void) =>
      new Promise<void>((resolve) => mq.on<RequestPacket>(topic, fn, resolve))
    await on(REQUEST_TOPIC, (packet, cb) => {
      cb()
      void this.answer(packet)
    })
    await on(`${REPLY_PREFIX}${this.opts.brokerId}`, (packet, cb) => {
      cb()
      try {
        const reply = JSON.parse(Buffer.from(packet.payload as Uint8Array).toString('utf8')) as { id: string } & NodeAnswer<unknown>
        const waiting = this.pending.get(reply.id)
        if (!waiting) return
        // Redis pub/sub ignores the database number: nodes of another cluster on the same Redis
        // server hear our requests too. Only the nodes of our cluster view count.
        if (!waiting.expected.includes(reply.node)) return
        waiting.answers.push({ node: reply.node, ok: reply.ok, result: reply.result, ...(reply.error ? { error: reply.error } : {}) })
        waiting.wake()
      } catch (err) {
        this.opts.log.warn({ err }, 'malformed admin reply ignored')
      }
    })
  }

  private async answer(packet: RequestPacket): Promise<void> {
    let request: { id: string; from: string; name: string; args: unknown; only?: string }
    try {
      request = JSON.parse(Buffer.from(packet.payload as Uint8Array).toString('utf8')) as typeof request
    } catch {
      this.opts.log.warn('malformed admin request ignored')
      return
    }
    if (request.only && request.only !== this.opts.brokerId) return
    const handler = this.handlers.get(request.name)
    let reply: NodeAnswer<unknown>
    if (!handler) reply = { node: this.opts.brokerId, ok: false, error: `this node does not answer ${request.name}` }
    else {
      try {
        reply = { node: this.opts.brokerId, ok: true, result: await handler(request.args) }
      } catch (err) {
        reply = { node: this.opts.brokerId, ok: false, error: (err as Error).message }
      }
    }
    this.mq?.emit({ topic: `${REPLY_PREFIX}${request.from}`, payload: Buffer.from(JSON.stringify({ id: request.id, ...reply })) })
  }

  /**
   * Asks every live node (or only `node`) and resolves with the answers once each has answered or
   * the timeout passed.
   */
  async ask<T>(name: string, args: unknown, options: { node?: string } = {}): Promise<GatherResult<T>> {
    const mq = this.mq
    if (!mq) throw new Error('the broker is not started yet')
    const expected = options.node ? [options.node] : await this.opts.nodes()
    const id = randomBytes(8).toString('hex')
    const answers: Array<NodeAnswer<unknown>> = []
    let wake = () => {}
    const everyone = new Promise<void>((resolve) => {
      wake = () => {
        if (expected.every((n) => answers.some((a) => a.node === n))) resolve()
      }
    })
    this.pending.set(id, { expected, answers, wake: () => wake() })
    let timer: NodeJS.Timeout | undefined
    try {
      const payload = Buffer.from(JSON.stringify({ id, from: this.opts.brokerId, name, args, ...(options.node ? { only: options.node } : {}) }))
      await new Promise<void>((resolve, reject) => mq.emit({ topic: REQUEST_TOPIC, payload }, (err) => (err ? reject(err) : resolve())))
      await Promise.race([everyone, new Promise<void>((resolve) => (timer = setTimeout(resolve, this.opts.timeoutMs)))])
    } finally {
      clearTimeout(timer)
      this.pending.delete(id)
    }
    const missing = expected.filter((n) => !answers.some((a) => a.node === n))
    return { answers: answers as Array<NodeAnswer<T>>, missing }
  }
}
