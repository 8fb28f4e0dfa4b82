// The receive side of the client rules in docs/delivery.md, without any transport.
//
// MQTT hands a device its envelopes at least once and in no guaranteed order: Aedes reorders and
// duplicates around reconnects, group messages are QoS 0 (never queued, may be missed), and the
// same envelope also comes back from messages.sync and messages.pull pages. The server numbers
// every conversation gap-free from 1, so per conversation the Inbox keeps the next expected seq and:
//   1. releases an envelope to the application only when it is the next one, then every held
//      envelope that follows it without a hole;
//   2. drops an envelope whose seq is below the next expected one or already held (within a
//      conversation seq and id name the same message, so this is also the "drop known ids" rule);
//   3. holds a later envelope and asks for a sync of exactly the hole below it, once per hole.
// Live envelopes, persistent-session replays and sync/pull pages all go through `receive`, so they
// may interleave freely: whichever copy comes first is released, the others are dropped.
//
// The Inbox never calls the network: it asks through `requestSync` and the wiring (mqtt.js, later)
// runs messages.sync. It has no timers either, so it runs unchanged in browsers and React Native.
import type { ConversationRef, MessageEnvelope } from '../schemas/protocol.js'

/** What the Inbox needs of an envelope. MessageEnvelope has it; tests may pass less. */
export type Sequenced = Pick<MessageEnvelope, 'id' | 'seq' | 'conversation'>

/**
 * "Fetch the messages after `afterSeq` up to `untilSeq` (inclusive)": one messages.sync call with
 * `afterSeq` and `limit = untilSeq - afterSeq`, paging while `hasMore` if the range is larger than
 * a page (the server caps `limit` at messages.maxSyncPage, 200). Every returned envelope goes back
 * through `Inbox.receive`.
 */
export interface SyncRequest {
  conversation: ConversationRef
  /** The last seq the device has below the hole (messages.sync's `afterSeq`). */
  afterSeq: number
  /** The last missing seq of the range. */
  untilSeq: number
  /** `gap`: an envelope arrived above a hole. `overflow`: envelopes were dropped at the held cap. */
  reason: 'gap' | 'overflow'
}

/** What `receive` did with an envelope (for counters, logs and tests). */
export type ReceiveOutcome = 'released' | 'held' | 'duplicate' | 'dropped'

export interface InboxOptions<M extends Sequenced> {
  /** The application: every message exactly once, in seq order within its conversation. */
  deliver(message: M): void
  /** Asked once per missing range; the wiring runs messages.sync and feeds the pages to `receive`. */
  requestSync(request: SyncRequest): void
  /**
   * The highest contiguous seq of a conversation moved (once per `receive`/`advanceTo` call, not
   * per message). This is what s/delivered carries; the wiring should debounce it (one marker
   * covers everything up to N, docs/protocol.md "Delivered and read markers").
   */
  onContiguous?(conversation: ConversationRef, seq: number): void
  /**
   * Most envelopes held out of order per conversation (default 1000). Beyond it the Inbox keeps
   * the lowest seqs (the ones closest to being released), drops the highest, and asks for a sync
   * from the contiguous point up to the highest dropped seq: the store has every dropped
   * envelope, so nothing is lost, only fetched again.
   */
  maxHeld?: number
  /** deliver() threw. The message still counts as released (redelivering would break "exactly once"). Default: rethrown asynchronously. */
  onError?(err: unknown): void
}

export interface InboxCounters {
  released: number
  duplicates: number
  held: number
  /** Envelopes dropped at the held cap (fetched again by an overflow sync). */
  dropped: number
  syncRequests: number
}

interface Range {
  from: number
  to: number
}

interface Conversation<M extends Sequenced> {
  ref: ConversationRef
  /** The next seq to release; everything below it has been released. */
  next: number
  held: Map<number, M>
  /** Holes already asked for and not yet filled: never asked twice (until `retryGaps`). */
  requested: Range[]
  /** Highest seq dropped at the cap and not yet released (0: none). */
  maxDropped: number
  /** The outstanding overflow sync, if any: at most one at a time. */
  overflow: Range | undefined
}

const DEFAULT_MAX_HELD = 1000

/** A stable map key for a conversation (kind and id are both `Id`-safe, so ':' cannot collide). */
export const conversationKey = (c: ConversationRef): string => `${c.kind}:${c.id}`

export class Inbox<M extends Sequenced = MessageEnvelope> {
  readonly counters: InboxCounters = { released: 0, duplicates: 0, held: 0, dropped: 0, syncRequests: 0 }
  private readonly conversations = new Map<string, Conversation<M>>()
  private readonly maxHeld: number

  constructor(private readonly options: InboxOptions<M>) {
    this.maxHeld = Math.max(1, options.maxHeld ?? DEFAULT_MAX_HELD)
  }

  /** One envelope, from any source: live, a persistent session's replay, a sync or pull page. */
  receive(message: M): ReceiveOutcome {
    const c = this.conversation(message.conversation)
    const before = c.next
    const outcome = this.accept(c, message)
    this.settle(c, before)
    return outcome
  }

  /** A page (sync or pull): the same rules as live envelopes, one onContiguous call per conversation. */
  receiveAll(messages: Iterable<M>): void {
    const moved = new Map<Conversation<M>, number>()
    for (const m of messages) {
      const c = this.conversation(m.conversation)
      if (!moved.has(c)) moved.set(c, c.next)
      this.accept(c, m)
    }
    for (const [c, before] of moved) this.settle(c, before)
  }

  /**
   * Skip forward: the device has (or gave up on) everything up to `seq`. For a state restored
   * from the app's storage, and for a messages.pull `reset` (the device is too far behind: it
   * drops what it holds and loads recent history itself; pass the change's `lastSeq`). Never moves
   * backwards. Held envelopes above `seq` that now follow without a hole are released.
   */
  advanceTo(conversation: ConversationRef, seq: number): void {
    const c = this.conversation(conversation)
    const before = c.next
    if (seq + 1 <= c.next) return
    c.next = seq + 1
    for (const s of c.held.keys()) if (s < c.next) c.held.delete(s)
    this.drain(c)
    this.settle(c, before)
  }

  /**
   * Forget every outstanding sync request and ask again for every hole that still exists (and for
   * envelopes dropped at the cap). Call it on every (re)connect, since an RPC answer in flight is
   * lost with the connection, and after a sync that failed (with the wiring's own backoff).
   */
  retryGaps(conversation?: ConversationRef): void {
    const list = conversation ? [this.conversation(conversation)] : [...this.conversations.values()]
    for (const c of list) {
      c.requested = []
      c.overflow = undefined
      for (const hole of this.holes(c)) this.ask(c, hole, 'gap')
      this.askOverflow(c)
    }
  }

  /** The highest seq released with none missing below it (0: nothing yet): what s/delivered carries. */
  contiguous(conversation: ConversationRef): number {
    return (this.conversations.get(conversationKey(conversation))?.next ?? 1) - 1
  }

  /** How many envelopes a conversation holds out of order. */
  heldCount(conversation: ConversationRef): number {
    return this.conversations.get(conversationKey(conversation))?.held.size ?? 0
  }

  /** The current holes of a conversation (seq ranges missing below held envelopes), lowest first. */
  missing(conversation: ConversationRef): Range[] {
    const c = this.conversations.get(conversationKey(conversation))
    return c ? this.holes(c) : []
  }

  /** Every conversation seen, with its contiguous seq: what a reconnect syncs from (rule 3). */
  known(): Array<{ conversation: ConversationRef; contiguous: number }> {
    return [...this.conversations.values()].map((c) => ({ conversation: { ...c.ref }, contiguous: c.next - 1 }))
  }

  private conversation(ref: ConversationRef): Conversation<M> {
    const k = conversationKey(ref)
    let c = this.conversations.get(k)
    if (!c) {
      // A conversation never seen starts at 1 (docs/delivery.md); advanceTo() moves it on.
      c = { ref: { kind: ref.kind, id: ref.id }, next: 1, held: new Map(), requested: [], maxDropped: 0, overflow: undefined }
      this.conversations.set(k, c)
    }
    return c
  }

  private accept(c: Conversation<M>, m: M): ReceiveOutcome {
    if (m.seq < c.next || c.held.has(m.seq)) {
      this.counters.duplicates++
      return 'duplicate'
    }
    if (m.seq === c.next) {
      this.release(c, m)
      this.drain(c)
      return 'released'
    }
    // Above a hole.
    if (c.held.size >= this.maxHeld) {
      const highest = Math.max(...c.held.keys())
      if (m.seq > highest) {
        this.drop(c, m.seq)
        return 'dropped'
      }
      // Keep the lower one: it is nearer to release. The evicted one comes back with the overflow sync.
      c.held.delete(highest)
      this.drop(c, highest)
    }
    c.held.set(m.seq, m)
    this.counters.held++
    const hole = this.holeBelow(c, m.seq)
    if (hole && !this.isRequested(c, hole)) this.ask(c, hole, 'gap')
    return 'held'
  }

  private drop(c: Conversation<M>, seq: number): void {
    this.counters.dropped++
    if (seq > c.maxDropped) c.maxDropped = seq
    this.askOverflow(c)
  }

  /**
   * One overflow sync at a time, from the contiguous point up to the highest dropped seq. Drops
   * while it runs do not ask again: when it is satisfied (`next` passes its end), `settle` asks
   * for whatever was dropped above it. That bounds the requests while a conversation is stalled
   * and the live stream keeps coming.
   */
  private askOverflow(c: Conversation<M>): void {
    if (c.overflow || c.maxDropped < c.next) return
    c.overflow = { from: c.next, to: c.maxDropped }
    this.ask(c, c.overflow, 'overflow')
  }

  private ask(c: Conversation<M>, range: Range, reason: SyncRequest['reason']): void {
    if (reason === 'gap') c.requested.push(range)
    this.counters.syncRequests++
    this.options.requestSync({ conversation: { ...c.ref }, afterSeq: range.from - 1, untilSeq: range.to, reason })
  }

  /**
   * A new hole is either inside one already asked for (an envelope landed in the middle of it,
   * splitting it) or entirely above every earlier one (it ends just below the newest envelope), so
   * containment is the whole test.
   */
  private isRequested(c: Conversation<M>, hole: Range): boolean {
    const inside = (r: Range): boolean => r.from <= hole.from && hole.to <= r.to
    return c.requested.some(inside) || (c.overflow !== undefined && inside(c.overflow))
  }

  /** The hole right below a held seq, if any. O(held): bounded by maxHeld. */
  private holeBelow(c: Conversation<M>, seq: number): Range | undefined {
    let below = c.next - 1
    for (const s of c.held.keys()) if (s < seq && s > below) below = s
    return below < seq - 1 ? { from: below + 1, to: seq - 1 } : undefined
  }

  private holes(c: Conversation<M>): Range[] {
    const out: Range[] = []
    let prev = c.next - 1
    for (const s of [...c.held.keys()].sort((a, b) => a - b)) {
      if (s > prev + 1) out.push({ from: prev + 1, to: s - 1 })
      prev = s
    }
    return out
  }

  private drain(c: Conversation<M>): void {
    for (let h = c.held.get(c.next); h; h = c.held.get(c.next)) {
      c.held.delete(h.seq)
      this.release(c, h)
    }
  }

  private release(c: Conversation<M>, m: M): void {
    c.next = m.seq + 1 // first: a deliver() that throws must not stall the conversation
    this.counters.released++
    try {
      this.options.deliver(m)
    } catch (err) {
      if (this.options.onError) this.options.onError(err)
      else queueMicrotask(() => { throw err })
    }
  }

  /** After a call: forget filled holes, follow up on overflow, report the contiguous seq once. */
  private settle(c: Conversation<M>, before: number): void {
    if (c.next === before) return
    c.requested = c.requested.filter((r) => r.to >= c.next)
    if (c.maxDropped < c.next) c.maxDropped = 0
    if (c.overflow && c.overflow.to < c.next) {
      c.overflow = undefined
      this.askOverflow(c) // dropped again while the first one ran
    }
    this.options.onContiguous?.({ ...c.ref }, c.next - 1)
  }
}
