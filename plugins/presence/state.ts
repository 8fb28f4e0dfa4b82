// Who is online, cluster-wide. A user is online while any of their devices is connected to any
// node; last seen is when the last one left. Two implementations of one contract: Redis (a
// cluster) and memory (one node).
//
// Every change is a transition of a per-user record {online, lastSeen, version}; `version` grows
// with each transition, so a client keeps the event with the highest version and a late event
// never overwrites a newer one. Transitions are atomic in Redis (Lua scripts), so two nodes racing
// (a device leaving node A while another of the user's devices joins node B) cannot both publish.
//
// Debounce: when a user's last device leaves, the user is not offline yet; an entry in a "due"
// set says "check this user at now + grace". Any node's sweep takes due entries (ZREM decides who
// owns one) and marks the user offline only if no device came back. A reconnect within the grace
// period removes the entry: no offline/online flap, even when the device comes back on another node.
//
// Dead nodes: each node refreshes its own liveness key (expiring after offlineAfterMs) and records
// which devices it holds. A sweep that finds a node without liveness removes that node's devices
// and checks their users at once, so a kill -9 takes the users offline within about
// offlineAfterMs plus one sweep, without waiting for Aedes' will timers.
import type { Redis } from 'ioredis'

export interface Transition {
  user: string
  online: boolean
  /** Epoch ms: when the user went offline (offline transitions), or came online. */
  at: number
  version: number
}

export interface UserPresence {
  user: string
  online: boolean
  lastSeen?: number
  version: number
}

export interface PresenceState {
  /** A device connected on this node; returns the transition when the user came online. */
  connect(user: string, device: string, connection: string, now: number): Promise<Transition | undefined>
  /** A device's connection ended; a user with no device left is checked after the grace period. */
  disconnect(user: string, device: string, connection: string, now: number): Promise<void>
  /** Offline transitions that are due (grace over, or the node holding the devices is dead). */
  sweep(now: number): Promise<Transition[]>
  /** This node is alive (call every few seconds). */
  heartbeat(now: number): Promise<void>
  get(users: readonly string[]): Promise<UserPresence[]>
  /** The devices of a user connected anywhere now. */
  devices(user: string): Promise<string[]>
  /** Graceful stop: this node's devices are due at once (the sweep of another node, or the next start, settles them). */
  leave(now: number): Promise<void>
}

export interface PresenceTiming {
  graceMs: number
  offlineAfterMs: number
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

// KEYS[1] devices hash of the user, KEYS[2] state hash, KEYS[3] this node's device set, KEYS[4] due zset
// ARGV: user, device, connection, now
const CONNECT = `
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1] .. '\\0' .. ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('HGET', KEYS[2], 'online') == '1' then return 0 end
local v = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('HSET', KEYS[2], 'online', '1', 'since', ARGV[4])
return v
`

// KEYS as CONNECT; ARGV: user, device, connection, due time
// Removes the device only if this connection still holds it (a takeover elsewhere keeps the new one).
const DISCONNECT = `
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('SREM', KEYS[3], ARGV[1] .. '\\0' .. ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1]) end
return 0
`

// KEYS[1] devices hash, KEYS[2] state hash; ARGV: now. Returns {version} when the user went offline.
const CHECK_OFFLINE = `
if redis.call('HLEN', KEYS[1]) > 0 then return 0 end
if redis.call('HGET', KEYS[2], 'online') ~= '1' then return 0 end
local v = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('HSET', KEYS[2], 'online', '0', 'lastSeen', ARGV[1])
return v
`

// KEYS[1] devices hash, KEYS[2] due zset; ARGV: user, device, dead node prefix, now
const REMOVE_DEAD_DEVICE = `
local held = redis.call('HGET', KEYS[1], ARGV[2])
if held and string.sub(held, 1, string.len(ARGV[3])) == ARGV[3] then redis.call('HDEL', KEYS[1], ARGV[2]) end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) end
return 0
`

/** Connection tokens are `<brokerId>|<connection id>`: a dead node's devices are found by prefix. */
export const connectionToken = (brokerId: string, connectionId: string): string => `${brokerId}|${connectionId}`

export class RedisPresenceState implements PresenceState {
  private readonly k: (name: string) => string

  constructor(
    private readonly redis: Redis,
    prefix: string,
    private readonly brokerId: string,
    private readonly timing: PresenceTiming
  ) {
    this.k = (name) => `${prefix}presence:${name}`
  }

  private keys(user: string): [string, string] {
    return [this.k(`dev:${user}`), this.k(`state:${user}`)]
  }

  async connect(user: string, device: string, connection: string, now: number): Promise<Transition | undefined> {
    const [dev, state] = this.keys(user)
    const version = Number(await this.redis.eval(CONNECT, 4, dev, state, this.k(`node:${this.brokerId}`), this.k('due'), user, device, connection, now))
    return version ? { user, online: true, at: now, version } : undefined
  }

  async disconnect(user: string, device: string, connection: string, now: number): Promise<void> {
    const [dev, state] = this.keys(user)
    await this.redis.eval(DISCONNECT, 4, dev, state, this.k(`node:${this.brokerId}`), this.k('due'), user, device, connection, now + this.timing.graceMs)
  }

  async heartbeat(): Promise<void> {
    await this.redis
      .multi()
      .set(this.k(`alive:${this.brokerId}`), '1', 'PX', this.timing.offlineAfterMs)
      .sadd(this.k('nodes'), this.brokerId)
      .exec()
  }

  async sweep(now: number): Promise<Transition[]> {
    await this.reapDeadNodes(now)
    const due = await this.redis.zrangebyscore(this.k('due'), '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
    const transitions: Transition[] = []
    for (let i = 0; i < due.length; i += 2) {
      const user = due[i]!
      if ((await this.redis.zrem(this.k('due'), user)) !== 1) continue // another node took it
      // Last seen is when the last device left, not when the grace period ended.
      const left = Math.min(now, Number(due[i + 1]) - this.timing.graceMs)
      const [dev, state] = this.keys(user)
      const version = Number(await this.redis.eval(CHECK_OFFLINE, 2, dev, state, left))
      if (version) transitions.push({ user, online: false, at: left, version })
    }
    return transitions
  }

  /** Removes the devices of nodes whose liveness key expired; their users become due at once. */
  private async reapDeadNodes(now: number): Promise<void> {
    const nodes = (await this.redis.smembers(this.k('nodes'))).filter((id) => id !== this.brokerId)
    for (const node of nodes) {
      if (await this.redis.exists(this.k(`alive:${node}`))) continue
      // One reaper per dead node; the lock expires in case this node dies halfway.
      if ((await this.redis.set(this.k(`reap:${node}`), this.brokerId, 'PX', 30_000, 'NX')) !== 'OK') continue
      // Due at once. Last seen comes out as now - graceMs: the node died at least offlineAfterMs ago.
      await this.reapNode(node, now)
    }
  }

  async get(users: readonly string[]): Promise<UserPresence[]> {
    if (!users.length) return []
    const pipeline = this.redis.pipeline()
    for (const u of users) pipeline.hmget(this.k(`state:${u}`), 'online', 'lastSeen', 'version')
    const rows = (await pipeline.exec()) ?? []
    return users.map((user, i) => {
      const [online, lastSeen, version] = (rows[i]?.[1] ?? []) as Array<string | null>
      return {
        user,
        online: online === '1',
        ...(online !== '1' && lastSeen ? { lastSeen: Number(lastSeen) } : {}),
        version: Number(version ?? 0)
      }
    })
  }

  async devices(user: string): Promise<string[]> {
    return (await this.redis.hkeys(this.k(`dev:${user}`))).sort()
  }

  async leave(now: number): Promise<void> {
    // Our devices go through the dead-node path of the other nodes, with the grace period a
    // leaving device gets (they may be reconnecting elsewhere during a drain).
    await this.redis.del(this.k(`alive:${this.brokerId}`))
    await this.reapNode(this.brokerId, now + this.timing.graceMs)
  }

  /** Removes a node's devices (only where it still holds them); their users are due at `due`. */
  private async reapNode(node: string, due: number): Promise<void> {
    const held = await this.redis.smembers(this.k(`node:${node}`))
    for (const entry of held) {
      const [user, device] = entry.split('\0') as [string, string]
      await this.redis.eval(REMOVE_DEAD_DEVICE, 2, this.k(`dev:${user}`), this.k('due'), user, device, `${node}|`, due)
    }
    await this.redis.multi().del(this.k(`node:${node}`)).srem(this.k('nodes'), node).exec()
  }
}

// ---------------------------------------------------------------------------------------------
// Memory (one node)
// ---------------------------------------------------------------------------------------------

export class MemoryPresenceState implements PresenceState {
  private readonly devices_ = new Map<string, Map<string, string>>()
  private readonly state = new Map<string, { online: boolean; lastSeen?: number; version: number }>()
  private readonly due = new Map<string, number>()

  constructor(private readonly timing: PresenceTiming) {}

  async connect(user: string, device: string, connection: string, now: number): Promise<Transition | undefined> {
    const devices = this.devices_.get(user) ?? new Map<string, string>()
    devices.set(device, connection)
    this.devices_.set(user, devices)
    this.due.delete(user)
    const s = this.state.get(user)
    if (s?.online) return undefined
    const version = (s?.version ?? 0) + 1
    this.state.set(user, { online: true, version })
    return { user, online: true, at: now, version }
  }

  async disconnect(user: string, device: string, connection: string, now: number): Promise<void> {
    const devices = this.devices_.get(user)
    if (devices?.get(device) === connection) devices.delete(device)
    if (!devices?.size) {
      this.devices_.delete(user)
      this.due.set(user, now + this.timing.graceMs)
    }
  }

  async sweep(now: number): Promise<Transition[]> {
    const transitions: Transition[] = []
    for (const [user, at] of this.due) {
      if (at > now) continue
      this.due.delete(user)
      const s = this.state.get(user)
      if (this.devices_.get(user)?.size || !s?.online) continue
      const left = Math.min(now, at - this.timing.graceMs)
      const version = s.version + 1
      this.state.set(user, { online: false, lastSeen: left, version })
      transitions.push({ user, online: false, at: left, version })
    }
    return transitions
  }

  async heartbeat(): Promise<void> {}

  async get(users: readonly string[]): Promise<UserPresence[]> {
    return users.map((user) => {
      const s = this.state.get(user)
      return { user, online: s?.online ?? false, ...(s && !s.online && s.lastSeen ? { lastSeen: s.lastSeen } : {}), version: s?.version ?? 0 }
    })
  }

  async devices(user: string): Promise<string[]> {
    return [...(this.devices_.get(user)?.keys() ?? [])].sort()
  }

  async leave(): Promise<void> {}
}
