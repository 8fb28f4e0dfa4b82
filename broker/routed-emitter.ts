// Routing channels for the cluster emitter: one exact Redis channel per user tree instead of one
// Redis pattern per subscription.
//
// Why: mqemitter-redis turns every wildcard subscription into a Redis PSUBSCRIBE, and Redis checks
// every published message against every pattern of every connection. Each Parley device subscribes
// to u/{userId}/#, so a cluster with N online users makes N patterns, and Redis' publish rate falls
// with N: measured here, about 14.4k publishes/s with no pattern, 2.2k with 10k patterns and 250
// with 100k (docs/scaling.md). Exact channels cost Redis a hash lookup, whatever their number.
//
// How: a message on u/{userId}/... is published to the Redis channel "u/{userId}", and a filter
// under one user's tree (u/{userId}/... without a wildcard in the first two levels) subscribes to
// that exact channel. Other filters keep mqemitter-redis' own mapping, except that a filter with a
// wildcard in its first two levels that could match a user tree (such as #, +/..., u/+/...)
// subscribes to a pattern that also covers the user channels. Redis only pre-selects: every node
// still matches the real topic of each message against its subscriptions locally (the emitter's
// own matcher), so what a subscriber receives is exactly what plain mqemitter-redis would give it.
import type { MQEmitterRedis } from 'mqemitter-redis'

const USER_ROOT = 'u'

/** The Redis channel a message on `topic` is published to. */
export function routeOf(topic: string): string {
  if (!topic.startsWith(`${USER_ROOT}/`)) return topic
  const end = topic.indexOf('/', USER_ROOT.length + 1)
  return end < 0 ? topic : topic.slice(0, end)
}

/**
 * The Redis subscription for a filter: an exact channel, or a pattern (wildcard true).
 * `original` is mqemitter-redis' own mapping, used for filters outside the user trees.
 */
export function subscriptionOf(filter: string, original: (f: string) => string): { channel: string; wildcard: boolean } {
  const [first, second] = filter.split('/')
  const wild = (level: string | undefined) => level === '+' || level === '#'
  if (first === USER_ROOT && second !== undefined && !wild(second)) {
    return { channel: `${USER_ROOT}/${second}`, wildcard: false }
  }
  // May match a user tree through a wildcard: pre-select broadly, the local matcher decides.
  if (wild(first)) return { channel: '*', wildcard: true }
  if (first === USER_ROOT && wild(second)) return { channel: `${USER_ROOT}/*`, wildcard: true }
  const wildcard = filter.includes('+') || filter.includes('#')
  return { channel: wildcard ? original(filter) : filter, wildcard }
}

interface Internals {
  _subTopic(topic: string): string
  _containsWildcard(topic: string): boolean
  emit(packet: { topic: string }, done?: (err?: Error) => void): void
}

/** Makes a mqemitter-redis instance publish and subscribe through routing channels. */
export function routeByUser(emitter: MQEmitterRedis): MQEmitterRedis {
  const e = emitter as unknown as Internals
  const originalSubTopic = e._subTopic.bind(e)
  const originalEmit = e.emit.bind(e)
  // mqemitter-redis asks these two for the Redis side of on() and removeListener(); answering
  // them consistently keeps its reference counts of channels and patterns right.
  e._subTopic = (filter) => subscriptionOf(filter, originalSubTopic).channel
  e._containsWildcard = (filter) => subscriptionOf(filter, originalSubTopic).wildcard
  // emit() publishes to msg.topic: give it the route and restore the topic inside the packet.
  e.emit = (packet, done) => {
    const route = routeOf(packet.topic)
    if (route === packet.topic) return originalEmit(packet, done)
    // mqemitter-redis' emit() calls pubConn.publish(msg.topic, encoded) synchronously; the packet
    // (msgpack of { id, msg }) keeps the real topic inside. Publish it to the route instead.
    const pub = (emitter as unknown as { pubConn: { publish: (channel: string, message: Buffer) => Promise<unknown> } }).pubConn
    const publish = pub.publish
    pub.publish = (_channel, message) => publish.call(pub, route, message)
    try {
      return originalEmit(packet, done)
    } finally {
      pub.publish = publish
    }
  }
  return emitter
}
