// The decision "may this device connect" for bans and revoked devices, and the per-user cache that
// keeps authenticate from reading the store on every CONNECT.
import type { Ban, Revocation, UserAccess } from './store.js'

export type Refusal = { reason: 'banned'; ban: Ban } | { reason: 'revoked'; revocation: Revocation }

/**
 * Why a device of `access`'s user may not connect (or stay connected) with a token issued at
 * `issuedAt` (epoch seconds; undefined when the token has no `iat`), or undefined when it may.
 * A revocation refuses the tokens issued up to and including its second: `iat` has second
 * precision, so a token of that second cannot be told to be newer.
 */
export function refusalOf(access: UserAccess, device: string, issuedAt: number | undefined, now: number): Refusal | undefined {
  const ban = access.ban
  if (ban && (ban.until === undefined || ban.until > now)) return { reason: 'banned', ban }
  const revocation = access.revocations.find((r) => r.device === device)
  if (revocation && (issuedAt === undefined || issuedAt <= Math.floor(revocation.revokedAt / 1000))) return { reason: 'revoked', revocation }
  return undefined
}

/**
 * Each user's bans and revocations, loaded on first use and kept `ttlMs` (at most `maxUsers`,
 * oldest first out). Changes call invalidate() on every node; the TTL only bounds how long a node
 * that missed one keeps the old answer. A load that overlapped an invalidation is returned but not
 * kept: it may predate the change.
 */
export class AccessCache {
  private readonly entries = new Map<string, { access: UserAccess; loadedAt: number }>()
  private readonly loading = new Map<string, Promise<UserAccess>>()
  private generation = 0

  constructor(
    private readonly load: (user: string) => Promise<UserAccess>,
    private readonly opts: { ttlMs: number; maxUsers: number; onStale?: (user: string, err: unknown) => void; now?: () => number }
  ) {}

  private now(): number {
    return this.opts.now?.() ?? Date.now()
  }

  async get(user: string): Promise<UserAccess> {
    const cached = this.entries.get(user)
    if (cached && this.now() - cached.loadedAt < this.opts.ttlMs) return cached.access
    let pending = this.loading.get(user)
    if (!pending) {
      const startedAt = this.generation
      const loadedAt = this.now()
      pending = this.load(user).then(
        (access) => {
          if (this.loading.get(user) === pending) this.loading.delete(user)
          if (this.generation === startedAt && this.opts.ttlMs > 0) {
            this.entries.delete(user) // re-inserted last: the Map's order is the eviction order
            this.entries.set(user, { access, loadedAt })
            if (this.entries.size > this.opts.maxUsers) this.entries.delete(this.entries.keys().next().value!)
          }
          return access
        },
        (err: unknown) => {
          if (this.loading.get(user) === pending) this.loading.delete(user)
          // The store is unreachable: an expired answer beats refusing everyone (an invalidated
          // user has none left, so a change made before the outage is never undone here).
          const stale = this.entries.get(user)
          if (stale) {
            this.opts.onStale?.(user, err)
            return stale.access
          }
          throw err
        }
      )
      this.loading.set(user, pending)
    }
    return pending
  }

  invalidate(user: string): void {
    this.generation++
    this.entries.delete(user)
    this.loading.delete(user)
  }

  get size(): number {
    return this.entries.size
  }
}
