// Member lists of groups, cached: every group message reads its group's members (one publish per
// member), and that read was ~10% of the broker's CPU in the group-fanout benchmark. Every change
// of a group's members is announced (groups/index.ts), and the announcement drops the group's
// list on every node (a cluster broadcast) before the members are told. A read that was under way
// when its group changed does not store what it read (the generation moved on).
export class MemberListCache {
  /** Map iteration order is insertion order: the first key is the oldest, evicted first. */
  private readonly lists = new Map<string, { members: string[]; expires: number }>()
  private readonly generations = new Map<string, number>()

  constructor(
    private readonly ttlMs: number,
    private readonly maxGroups: number
  ) {}

  async get(groupId: string, load: (groupId: string) => Promise<string[]>): Promise<string[]> {
    const hit = this.lists.get(groupId)
    if (hit && hit.expires > Date.now()) return hit.members
    const generation = this.generations.get(groupId) ?? 0
    const members = await load(groupId)
    if (this.ttlMs > 0 && (this.generations.get(groupId) ?? 0) === generation) {
      this.lists.delete(groupId)
      this.lists.set(groupId, { members, expires: Date.now() + this.ttlMs })
      if (this.lists.size > this.maxGroups) this.lists.delete(this.lists.keys().next().value!)
    }
    return members
  }

  invalidate(groupId: string): void {
    this.lists.delete(groupId)
    // Generations are only compared while a read is under way; bound the map like the lists.
    this.generations.delete(groupId)
    this.generations.set(groupId, Date.now() + Math.random())
    if (this.generations.size > this.maxGroups) this.generations.delete(this.generations.keys().next().value!)
  }

  get size(): number {
    return this.lists.size
  }
}
