// Per-device rate limit on pushes: GCRA (the generic cell rate algorithm, a token bucket kept as one
// timestamp), cluster-wide in Redis, in memory on a single node. A push over the limit is not
// dropped: its job is put back, due when the device may receive again, and later messages coalesce
// into it meanwhile.
import type { Redis } from 'ioredis'

export interface RateLimit {
  perMinute: number
  burst: number
}

export interface DeviceRateLimiter {
  /** Takes one push for the device: 0 when allowed, else the epoch ms from which it would be. */
  take(deviceKey: string, now: number): Promise<number>
}

/** One GCRA step: the new theoretical arrival time, or the time to wait for. */
export function gcra(tat: number | undefined, now: number, limit: RateLimit): { allowed: true; tat: number } | { allowed: false; retryAt: number } {
  const interval = 60_000 / limit.perMinute
  const tolerance = interval * (limit.burst - 1)
  const base = Math.max(tat ?? now, now)
  if (base - now > tolerance) return { allowed: false, retryAt: Math.ceil(base - tolerance) }
  return { allowed: true, tat: base + interval }
}

export class MemoryRateLimiter implements DeviceRateLimiter {
  private readonly tats = new Map<string, number>()
  constructor(private readonly limit: RateLimit) {}

  async take(deviceKey: string, now: number): Promise<number> {
    const step = gcra(this.tats.get(deviceKey), now, this.limit)
    if (!step.allowed) return step.retryAt
    this.tats.delete(deviceKey) // re-insert: the map stays ordered by last use
    this.tats.set(deviceKey, step.tat)
    if (this.tats.size > 100_000) this.tats.delete(this.tats.keys().next().value!)
    return 0
  }
}

// KEYS: the device's tat. ARGV: now, interval, tolerance
const TAKE = `
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
if tat - now > tolerance then return math.ceil(tat - tolerance) end
local new = tat + interval
redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
return 0
`

export class RedisRateLimiter implements DeviceRateLimiter {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly limit: RateLimit
  ) {}

  async take(deviceKey: string, now: number): Promise<number> {
    const interval = 60_000 / this.limit.perMinute
    return Number(await this.redis.eval(TAKE, 1, `${this.prefix}push:rate:${deviceKey}`, now, interval, interval * (this.limit.burst - 1)))
  }
}
