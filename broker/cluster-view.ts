// The cluster as operators see it: which nodes are alive, how many clients each holds, when each
// last reported. Each node writes its own record to Redis every heartbeat with an expiry of three
// heartbeats, so a node that dies (kill -9, lost network) drops out by itself; a node that stops
// gracefully removes its record. Without Redis the view is this node alone.
// Served on the operations listener at GET /cluster.
import type { Redis } from 'ioredis'
import type { Logger } from './logger.js'

export interface NodeRecord {
  brokerId: string
  nodeName: string
  host: string
  pid: number
  startedAt: number
  lastHeartbeat: number
  clients: number
  /** Accepting new connections (false while draining or stopping). */
  accepting: boolean
  listeners: Array<{ name: string; host: string; port: number }>
}

export interface ClusterViewOptions {
  redis?: Redis | undefined
  keyPrefix: string
  intervalMs: number
  log: Logger
  /** This node's record as of now. */
  self(): NodeRecord
}

export class ClusterView {
  private timer: NodeJS.Timeout | undefined
  private readonly indexKey: string

  constructor(private readonly opts: ClusterViewOptions) {
    this.indexKey = `${opts.keyPrefix}cluster:nodes`
  }

  private recordKey(brokerId: string): string {
    return `${this.opts.keyPrefix}cluster:node:${brokerId}`
  }

  start(): void {
    if (!this.opts.redis) return
    const beat = () =>
      void this.report().catch((err: unknown) => this.opts.log.debug({ err: (err as Error).message }, 'cluster heartbeat not written'))
    beat()
    this.timer = setInterval(beat, this.opts.intervalMs)
    this.timer.unref()
  }

  /** Writes this node's record now (also on changes operators should see at once, like draining). */
  async report(): Promise<void> {
    const redis = this.opts.redis
    if (!redis || redis.status !== 'ready') return
    const self = this.opts.self()
    await redis
      .multi()
      .set(this.recordKey(self.brokerId), JSON.stringify(self), 'PX', this.opts.intervalMs * 3)
      .sadd(this.indexKey, self.brokerId)
      .exec()
  }

  /** Every live node, this one first; expired members are removed from the index on the way. */
  async nodes(): Promise<NodeRecord[]> {
    const self = this.opts.self()
    const redis = this.opts.redis
    if (!redis) return [self]
    const ids = (await redis.smembers(this.indexKey)).filter((id) => id !== self.brokerId)
    const records = ids.length ? await redis.mget(ids.map((id) => this.recordKey(id))) : []
    const gone = ids.filter((_, i) => records[i] === null)
    if (gone.length) await redis.srem(this.indexKey, ...gone)
    const others = records.filter((r): r is string => r !== null).map((r) => JSON.parse(r) as NodeRecord)
    return [self, ...others.sort((a, b) => a.brokerId.localeCompare(b.brokerId))]
  }

  /** Stops reporting and removes this node's record (graceful stop). */
  async leave(): Promise<void> {
    clearInterval(this.timer)
    this.timer = undefined
    const redis = this.opts.redis
    if (!redis || redis.status !== 'ready') return
    const id = this.opts.self().brokerId
    await redis.multi().del(this.recordKey(id)).srem(this.indexKey, id).exec()
  }
}
