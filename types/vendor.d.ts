// Type declarations for dependencies that ship none.
declare module 'aedes-persistence-redis' {
  import type { Redis, Cluster } from 'ioredis'
  interface RedisPersistenceOptions {
    conn?: Redis
    cluster?: unknown[]
    maxSessionDelivery?: number
    packetTTL?: (packet: unknown) => number
  }
  interface RedisPersistence {
    destroy(): Promise<void>
  }
  export default function persistence(opts?: RedisPersistenceOptions): RedisPersistence
  export type { Cluster }
}

declare module 'mqemitter-redis' {
  import type { EventEmitter } from 'node:events'
  import type { Redis } from 'ioredis'
  interface MQEmitterRedisOptions {
    subConn?: Redis
    pubConn?: Redis
    connectionString?: string
  }
  interface MQEmitterRedis {
    state: EventEmitter
    close(cb?: () => void): void
  }
  export default function mqemitterRedis(opts?: MQEmitterRedisOptions): MQEmitterRedis
}
