// A bound on each persistent session's queue of QoS 1 messages. Aedes 1.2 ignores its own
// `queueLimit` for stored sessions (it only caps packets held while a client is connecting), so a
// device that never comes back would grow its queue in Redis or memory without end.
//
// Where: Aedes enqueues a QoS >= 1 publish for every persistent subscriber (online or not) through
// persistence.outgoingEnqueueCombi (aedes.js enqueueOffline); a live delivery then updates that
// entry and the PUBACK removes it. We wrap outgoingEnqueueCombi and leave out the subscribers whose
// queue is full: the newest messages are the ones not queued. Chat loses nothing by it: messages
// are in the message store, and a device back after a long time catches up with messages.pull,
// which tells it to reset when it is too far behind anyway.
// The bound is exact on one node; nodes enqueueing for the same client at the same instant may
// overshoot it by one message each.
//
// How long is a queue?
//  - Redis persistence: the length of its list outgoing:<encoded clientId> (aedes-persistence-redis 12,
//    asyncPersistence.js outgoingKey), read in one pipelined round trip per publish.
//  - In memory (one node): a count kept here, +1 per queued message, -1 per PUBACK of a stored
//    session (Aedes' ack event carries the packet only for those), 0 when a clean session starts.
import type { Redis } from 'ioredis'

export interface QueueablePersistence {
  outgoingEnqueueCombi(subs: Array<{ clientId: string }>, packet: unknown): Promise<void>
}

export interface QueueLengths {
  lengths(clientIds: readonly string[]): Promise<number[]>
  /** A message was queued for these clients. */
  queued(clientIds: readonly string[]): void
  /** A client acknowledged a queued message. */
  acked(clientId: string): void
  /** A client's queue was emptied (a clean session started). */
  cleared(clientId: string): void
}

/** Lengths read from aedes-persistence-redis's own lists: exact across the cluster. */
/** aedes-persistence-redis's key of a client's queue: the id is URI-encoded (a chat id has a ":"). */
export const redisOutgoingKey = (clientId: string): string => `outgoing:${encodeURIComponent(clientId)}`

export function redisQueueLengths(redis: Redis): QueueLengths {
  return {
    lengths: async (ids) => {
      const pipeline = redis.pipeline()
      for (const id of ids) pipeline.llen(redisOutgoingKey(id))
      const results = (await pipeline.exec()) ?? []
      return results.map(([err, n]) => (err ? 0 : Number(n)))
    },
    queued: () => undefined,
    acked: () => undefined,
    cleared: () => undefined
  }
}

/** Counted here: the in-memory persistence serves one node, and its queues are private. */
export function memoryQueueLengths(): QueueLengths {
  const counts = new Map<string, number>()
  return {
    lengths: async (ids) => ids.map((id) => counts.get(id) ?? 0),
    queued: (ids) => ids.forEach((id) => counts.set(id, (counts.get(id) ?? 0) + 1)),
    acked: (id) => {
      const n = (counts.get(id) ?? 0) - 1
      if (n > 0) counts.set(id, n)
      else counts.delete(id)
    },
    cleared: (id) => counts.delete(id)
  }
}

/**
 * Makes `persistence` queue at most `limit` messages per client (0: no limit). `dropped` is called
 * with the clients a message was not queued for.
 */
export function limitOfflineQueues(persistence: QueueablePersistence, limit: number, queues: QueueLengths, dropped: (clientIds: string[]) => void): void {
  if (limit <= 0) return
  const enqueue = persistence.outgoingEnqueueCombi.bind(persistence)
  // Aedes enqueues several messages at once (the PUBACK does not wait for it), so "check the
  // length, then enqueue" runs one at a time per client on this node; otherwise a burst would pass
  // the check together and overshoot the limit.
  const tails = new Map<string, Promise<void>>()
  const oneAtATime = async (ids: readonly string[], fn: () => Promise<void>): Promise<void> => {
    const before = ids.map((id) => tails.get(id) ?? Promise.resolve())
    let release!: () => void
    const mine = new Promise<void>((resolve) => (release = resolve))
    for (const id of ids) tails.set(id, mine)
    await Promise.all(before)
    try {
      await fn()
    } finally {
      release()
      for (const id of ids) if (tails.get(id) === mine) tails.delete(id)
    }
  }
  persistence.outgoingEnqueueCombi = async (subs, packet) => {
    if (!subs?.length) return enqueue(subs, packet)
    const ids = subs.map((s) => s.clientId)
    await oneAtATime(ids, async () => {
      const lengths = await queues.lengths(ids)
      const keep = subs.filter((_, i) => lengths[i]! < limit)
      if (keep.length < subs.length) dropped(subs.filter((_, i) => lengths[i]! >= limit).map((s) => s.clientId))
      if (!keep.length) return
      await enqueue(keep, packet)
      queues.queued(keep.map((s) => s.clientId))
    })
  }
}
