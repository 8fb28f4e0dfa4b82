// Group membership lookups, cached: every publish to a group checks it, so it must be cheap.
// Entries expire after a TTL and are dropped at once when a node broadcasts a change.

/** Answers whether a user belongs to a group (the groups plugin provides the real one). */
export type MembershipSource = (groupId: string, userId: string) => Promise<boolean>

export class MembershipCache {
  private source: MembershipSource = async () => false
  /** Map iteration order is insertion order: the first key is the oldest, evicted first. */
  private readonly entries = new Map<string, { member: boolean; expires: number }>()

  constructor(
    private readonly ttlMs: number,
    private readonly maxEntries: number
  ) {}

  setSource(source: MembershipSource): void {
    this.source = source
    this.entries.clear()
  }

  async check(groupId: string, userId: string): Promise<boolean> {
    const key = `${groupId}\u0000${userId}`
    const hit = this.entries.get(key)
    if (hit && hit.expires > Date.now()) return hit.member
    const member = await this.source(groupId, userId)
    if (this.ttlMs > 0) {
      this.entries.delete(key)
      this.entries.set(key, { member, expires: Date.now() + this.ttlMs })
      if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!)
    }
    return member
  }

  /** Forgets a group's cached answers, or one member's. */
  invalidate(groupId: string, userId?: string): void {
    if (userId !== undefined) {
      this.entries.delete(`${groupId}\u0000${userId}`)
      return
    }
    const prefix = `${groupId}\u0000`
    for (const key of this.entries.keys()) if (key.startsWith(prefix)) this.entries.delete(key)
  }

  get size(): number {
    return this.entries.size
  }
}
