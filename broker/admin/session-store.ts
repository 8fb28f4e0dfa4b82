// Persistent MQTT sessions as the admin routes see them: which exist, their stored subscriptions,
// and how many messages wait in each one's queue (queued while away, or sent and not acknowledged).
//
// Aedes' persistences have no "list every session" call, so:
//  - Redis (aedes-persistence-redis 12, asyncPersistence.js): the set `clients` holds the id of
//    every client with stored subscriptions, the hash `client:<encodeURIComponent(id)>` its
//    subscriptions and the list `outgoing:<encodeURIComponent(id)>` its queue. Shared by every node,
//    so the node answering reads them all. The keys are the persistence's, without our keyPrefix.
//  - Memory (one node, no cluster): every session there was created by a client connecting to this
//    node, so the ids are remembered at connect; a remembered id whose subscriptions are gone (a
//    clean session took the id over, or it was discarded) is no session any more. Queues are
//    counted from the persistence's own outgoing stream, which is exact.
import type { Redis } from 'ioredis'
import { redisOutgoingKey } from '../offline-queue.js'
import type { AdminPersistence, NodeAccess } from './node-access.js'

export interface SessionStats {
  subscriptions: number
  queued: number
}

export interface SessionStore {
  /** Ids of every persistent session that passes `keep`, sorted. */
  ids(keep: (id: string) => boolean): Promise<string[]>
  /** Stored subscription count and queue depth of each id (0 and 0 for an id without a session). */
  stats(ids: readonly string[]): Promise<SessionStats[]>
  /** Queue depth of each id. */
  queued(ids: readonly string[]): Promise<number[]>
  /** Stored subscriptions of a session (empty: no persistent session). */
  subscriptions(id: string): Promise<Array<{ topic: string; qos: number }>>
  /** A session was created (memory only: remembers its id). */
  remember(id: string): void
}

const subscriptionsKey = (id: string) => `client:${encodeURIComponent(id)}`

export function sessionStore(node: NodeAccess): SessionStore {
  const persistence = (): AdminPersistence => node.persistence()
  const subscriptions = async (id: string) => (await persistence().subscriptionsByClient({ id })) ?? []
  if (node.config.redis.url) return redisSessions(() => node.persistenceRedis(), subscriptions)

  const seen = new Set<string>()
  // A notification after the CONNACK: the session exists by then.
  node.host().add('admin', 'clientReady', (client) => {
    if (!client.clean) seen.add(client.id)
  })
  const queued = async (ids: readonly string[]) =>
    Promise.all(
      ids.map(async (id) => {
        let n = 0
        for await (const _ of persistence().outgoingStream({ id })) n++
        return n
      })
    )
  return {
    ids: async (keep) => {
      const out: string[] = []
      for (const id of [...seen].filter(keep).sort()) {
        if ((await subscriptions(id)).length) out.push(id)
        else seen.delete(id)
      }
      return out
    },
    stats: async (ids) => {
      const [subs, queues] = await Promise.all([Promise.all(ids.map(subscriptions)), queued(ids)])
      return ids.map((_, i) => ({ subscriptions: subs[i]!.length, queued: queues[i]! }))
    },
    queued,
    subscriptions,
    remember: (id) => seen.add(id)
  }
}

function redisSessions(connection: () => Redis | undefined, subscriptions: (id: string) => Promise<Array<{ topic: string; qos: number }>>): SessionStore {
  // The persistence's own connection: it reads the persistence's keys, and is already open.
  const withRedis = async <T>(work: (redis: Redis) => Promise<T>): Promise<T> => {
    const redis = connection()
    if (!redis || redis.status !== 'ready') throw new Error('Redis is not connected')
    return work(redis)
  }
  const lengths = (redis: Redis, keys: string[], command: 'llen' | 'hlen') => {
    const pipeline = redis.pipeline()
    for (const key of keys) pipeline[command](key)
    return pipeline.exec().then((results) =>
      (results ?? []).map(([err, n]) => {
        if (err) throw err
        return Number(n)
      })
    )
  }
  return {
    ids: (keep) =>
      withRedis(async (redis) => {
        const ids: string[] = []
        // SSCAN, not SMEMBERS: the set may hold every device that ever kept a session.
        for await (const batch of redis.sscanStream('clients', { count: 1000 }) as AsyncIterable<string[]>) {
          for (const id of batch) if (keep(id)) ids.push(id)
        }
        return [...new Set(ids)].sort()
      }),
    stats: (ids) =>
      ids.length === 0
        ? Promise.resolve([])
        : withRedis(async (redis) => {
            const [subs, queued] = await Promise.all([lengths(redis, ids.map(subscriptionsKey), 'hlen'), lengths(redis, ids.map(redisOutgoingKey), 'llen')])
            return ids.map((_, i) => ({ subscriptions: subs[i]!, queued: queued[i]! }))
          }),
    queued: (ids) => (ids.length === 0 ? Promise.resolve([]) : withRedis((redis) => lengths(redis, ids.map(redisOutgoingKey), 'llen'))),
    subscriptions,
    remember: () => undefined
  }
}
