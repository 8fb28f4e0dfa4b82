// The client-side delivery rules of docs/delivery.md as one small class (it is meant to move into
// the client SDK). MQTT gives a device its messages at least once and in no guaranteed order (Aedes
// reorders and duplicates around reconnects; group messages are QoS 0 and never queued). The
// server numbers every conversation gap-free from 1, so a device can rebuild exactly-once, in-order
// delivery itself:
//   1. per conversation, keep the next expected seq;
//   2. hand a message to the application only when it is the next one; drop one it has already
//      handed over or already holds (a duplicate: same seq, so the same id); hold a later one;
//   3. on a gap (a held message), and after every (re)connect, call messages.sync from the last
//      contiguous seq, paging while hasMore.
// Live messages and sync pages go through the same path, so they may interleave freely: whatever
// arrives first is delivered, the other copy is a duplicate. One sync runs per conversation at a
// time; a request while it runs makes it go round once more.

/** What the reader needs of a message: the server's id, seq and conversation (MessageEnvelope has them). */
export interface Sequenced {
  id: string
  seq: number
  conversation: { kind: 'dm' | 'group'; id: string }
}

export interface SyncPage<M extends Sequenced> {
  messages: M[]
  hasMore: boolean
  lastSeq: number
}

export interface ReaderOptions<M extends Sequenced> {
  /** The application: gets every message exactly once, in seq order within its conversation. */
  deliver(message: M): void
  /** messages.sync: messages after `afterSeq`, ascending. Should reject when the connection is lost. */
  sync(conversation: M['conversation'], afterSeq: number): Promise<SyncPage<M>>
  /** conversations.list (optional): finds conversations this device has not seen yet, and skips syncing idle ones. */
  list?(): Promise<Array<{ conversation: M['conversation']; lastSeq: number }>>
  /** Delay before a failed or unfinished sync is tried again (default 500 ms; a reconnect tries at once). */
  retryMs?: number
  /** Most messages held per conversation while waiting for a gap to fill (default 10,000); beyond it they are dropped and synced later. */
  maxHeld?: number
  /** Most pages one sync round fetches (default 1,000), a bound on a runaway conversation. */
  maxPages?: number
  /** Failures that the reader recovers from by itself (a sync that failed, a deliver() that threw). */
  onError?(err: unknown): void
}

export interface ReaderCounters {
  /** Messages handed to the application. */
  delivered: number
  /** ... of which came from a sync page rather than live. */
  deliveredFromSync: number
  /** Copies dropped: a seq already delivered or already held (live copies and sync pages overlapping them). */
  duplicates: number
  /** ... of which arrived live: MQTT redeliveries and retried sends. */
  duplicatesLive: number
  /** Messages held because an earlier seq had not arrived yet. */
  heldOutOfOrder: number
  /** Held messages dropped to stay under maxHeld (synced again later). */
  droppedOverflow: number
  /** Syncs started because of a gap. */
  gapSyncs: number
  /** Resyncs after a (re)connect. */
  reconnectResyncs: number
  /** messages.sync calls (pages). */
  syncRequests: number
  /** Sync calls that failed (usually: the connection dropped meanwhile); retried. */
  syncFailures: number
}

interface Conversation<M extends Sequenced> {
  ref: M['conversation']
  /** The next seq the application expects; everything below it has been delivered. */
  next: number
  held: Map<number, M>
  syncing: boolean
  again: boolean
  retry: NodeJS.Timeout | undefined
}

export class OrderedReader<M extends Sequenced> {
  readonly counters: ReaderCounters = {
    delivered: 0,
    deliveredFromSync: 0,
    duplicates: 0,
    duplicatesLive: 0,
    heldOutOfOrder: 0,
    droppedOverflow: 0,
    gapSyncs: 0,
    reconnectResyncs: 0,
    syncRequests: 0,
    syncFailures: 0
  }
  private readonly conversations = new Map<string, Conversation<M>>()
  private readonly running = new Set<Promise<void>>()
  private closed = false

  constructor(private readonly options: ReaderOptions<M>) {}

  /** A message that arrived live (u/{userId}/m). */
  receive(message: M): void {
    if (this.closed) return
    const c = this.conversation(message.conversation)
    this.accept(c, message, false)
    if (c.held.size > 0) {
      this.counters.gapSyncs += c.syncing ? 0 : 1
      this.requestSync(c)
    }
  }

  /** Call on every (re)connect: sync every conversation that may have moved while offline. */
  resync(): Promise<void> {
    if (this.closed) return Promise.resolve()
    this.counters.reconnectResyncs++
    const run = this.findAndSync().finally(() => this.running.delete(run))
    this.running.add(run)
    return run
  }

  private async findAndSync(): Promise<void> {
    let listed: Array<{ conversation: M['conversation']; lastSeq: number }> | undefined
    if (this.options.list) {
      try {
        listed = await this.options.list()
      } catch (err) {
        this.options.onError?.(err) // then sync every conversation we know
      }
    }
    const skip = new Set<Conversation<M>>()
    for (const row of listed ?? []) {
      const c = this.conversation(row.conversation)
      if (row.lastSeq < c.next && c.held.size === 0) skip.add(c) // nothing new there
    }
    for (const c of this.conversations.values()) if (!skip.has(c)) this.requestSync(c)
  }

  /** The next seq expected in a conversation (1 + the last delivered one). */
  nextSeq(conversation: M['conversation']): number {
    return this.conversations.get(key(conversation))?.next ?? 1
  }

  /** Resolves when no sync is running (a retry may still be scheduled: see `busy`). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running])
  }

  /** A sync is running or scheduled to be retried. */
  get busy(): boolean {
    return this.running.size > 0 || [...this.conversations.values()].some((c) => c.retry !== undefined)
  }

  /** Stops timers and syncs; later messages are ignored. */
  close(): void {
    this.closed = true
    for (const c of this.conversations.values()) {
      clearTimeout(c.retry)
      c.retry = undefined
    }
  }

  private conversation(ref: M['conversation']): Conversation<M> {
    const k = key(ref)
    let c = this.conversations.get(k)
    if (!c) {
      c = { ref: { kind: ref.kind, id: ref.id }, next: 1, held: new Map(), syncing: false, again: false, retry: undefined }
      this.conversations.set(k, c)
    }
    return c
  }

  /** The one path for live messages and sync pages. */
  private accept(c: Conversation<M>, m: M, fromSync: boolean): void {
    if (m.seq < c.next || c.held.has(m.seq)) {
      this.counters.duplicates++
      if (!fromSync) this.counters.duplicatesLive++
      return
    }
    if (m.seq > c.next) {
      if (c.held.size >= (this.options.maxHeld ?? 10_000)) {
        this.counters.droppedOverflow++ // the store has it: a sync brings it back
        return
      }
      c.held.set(m.seq, m)
      this.counters.heldOutOfOrder++
      return
    }
    this.hand(c, m, fromSync)
    for (let h = c.held.get(c.next); h; h = c.held.get(c.next)) {
      c.held.delete(h.seq)
      this.hand(c, h, false)
    }
  }

  private hand(c: Conversation<M>, m: M, fromSync: boolean): void {
    c.next = m.seq + 1
    this.counters.delivered++
    if (fromSync) this.counters.deliveredFromSync++
    try {
      this.options.deliver(m)
    } catch (err) {
      this.options.onError?.(err) // the application's bug; the message counts as handed over
    }
  }

  private requestSync(c: Conversation<M>): void {
    if (this.closed) return
    clearTimeout(c.retry)
    c.retry = undefined
    if (c.syncing) {
      c.again = true
      return
    }
    c.syncing = true
    const run = this.runSync(c).finally(() => {
      c.syncing = false
      this.running.delete(run)
    })
    this.running.add(run)
  }

  /** Pages from the last contiguous seq until hasMore is false; goes round again while asked to or while a gap remains. */
  private async runSync(c: Conversation<M>): Promise<void> {
    const maxPages = this.options.maxPages ?? 1000
    try {
      for (let round = 0; round < 10 && !this.closed; round++) {
        c.again = false
        const before = c.next
        let after = c.next - 1
        for (let page = 0; page < maxPages && !this.closed; page++) {
          this.counters.syncRequests++
          const result = await this.options.sync(c.ref, after)
          for (const m of result.messages) this.accept(c, m, true)
          const last = result.messages.at(-1)
          if (!result.hasMore || !last) break
          after = Math.max(c.next - 1, last.seq)
        }
        // Done unless asked again, or a gap remains that this round narrowed (the rest may still be in flight).
        if (!c.again && (c.held.size === 0 || c.next === before)) break
      }
    } catch (err) {
      this.counters.syncFailures++
      this.options.onError?.(err)
      c.again = true
    }
    if (!this.closed && (c.again || c.held.size > 0)) {
      // Failed (the connection dropped?), or a gap the store did not fill yet: try again later; a reconnect tries at once.
      c.retry = setTimeout(() => {
        c.retry = undefined
        this.requestSync(c)
      }, this.options.retryMs ?? 500)
    }
  }
}

function key(ref: { kind: string; id: string }): string {
  return `${ref.kind}:${ref.id}`
}
