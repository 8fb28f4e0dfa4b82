// Delivered and read state, and the receipts it produces.
//  - A marker says "user U has (delivered) or has read (read) conversation C up to seq N". It moves
//    on s/read, on s/delivered, on a device's PUBACK of a one-to-one message (persistent sessions:
//    Aedes has the packet only then), and on sending (sending reads).
//  - One-to-one: a marker that moves sends a receipt to the other user's devices (u/{peer}/r). Read
//    receipts go only when both users share them (the reciprocity WhatsApp users know); otherwise
//    the reader's peer gets a delivered receipt instead.
//  - Groups: per-member receipts would flood the senders of a large group. Moves are collected for
//    `receiptBatchMs`, then each sender gets one "delivered to k of n, read by m" summary for its
//    messages in the moved range; messages.receipts answers the same counts on request.
import type { PluginContext } from '../../broker/plugin-api.js'
import { DOWN, type ConversationRef, type Event, type Receipt } from '../../schemas/protocol.js'
import type { GroupsApi } from '../groups/index.js'
import { mapLimited } from './pull.js'
import type { Marker, Moved, StateStore } from './state-store.js'
import type { ConversationKey, MessageStore, StoredMessage } from './store.js'

export type ReceiptCount = Extract<Receipt, { kind: 'group' }>['messages'][number]

/** What the receipts code counts (prom-client counters of the messages plugin). */
export interface ReceiptMetrics {
  markersMoved: { inc(labels: { marker: Marker; kind: 'dm' | 'group' }): void }
  receiptsSent: { inc(labels: { kind: Receipt['kind'] }): void }
}

interface PendingMove {
  user: string
  conversation: ConversationRef
  key: ConversationKey
  marker: Marker
  wanted: number
  /** Whether `wanted` must be clamped to the conversation's last seq (it came from a device). */
  clamp: boolean
  waiters: Array<{ resolve: (moved: Moved) => void; reject: (err: unknown) => void }>
}

export class Receipts {
  /** Per group, the seq range whose counts changed since the last summary. */
  private readonly pending = new Map<string, { from: number; to: number }>()
  private timer: NodeJS.Timeout | undefined
  private flushing: Promise<void> | undefined

  constructor(
    private readonly ctx: PluginContext<unknown>,
    private readonly store: () => Promise<MessageStore>,
    private readonly state: () => Promise<StateStore>,
    private readonly groups: GroupsApi,
    private readonly settings: { batchMs: number; moveBatchMs: number; maxRange: number; systemUser: string; metrics: ReceiptMetrics }
  ) {}

  /** Moves waiting for the next write, one per marker, user and conversation (see move()). */
  private readonly moving = new Map<string, PendingMove>()
  private moveFlush: Promise<void> | undefined

  /**
   * Moves `user`'s marker in a conversation (clamped to its last message) and tells whoever must
   * know. Resolves once the marker is stored; the caller's PUBACK then means "recorded".
   * Moves asked for while a write is under way, or within `moveBatchMs` of the first, are
   * coalesced: a recipient acknowledging a burst of N messages costs one marker write and one
   * receipt "delivered up to the last", not N of each. Receipts carry upToSeq, so nothing is lost.
   * `clamp` false: `wanted` is the seq of a stored message (a PUBACK of an envelope this server
   * sent), so the store is not asked for the conversation's last seq.
   */
  move(user: string, conversation: ConversationRef, key: ConversationKey, marker: Marker, wanted: number, clamp = true): Promise<Moved> {
    return new Promise<Moved>((resolve, reject) => {
      const id = `${marker}\u0000${user}\u0000${key}`
      const pending = this.moving.get(id)
      if (pending) {
        pending.wanted = Math.max(pending.wanted, wanted)
        pending.clamp ||= clamp
        pending.waiters.push({ resolve, reject })
      } else this.moving.set(id, { user, conversation, key, marker, wanted, clamp, waiters: [{ resolve, reject }] })
      this.moveFlush ??= this.flushMoves()
    })
  }

  private async flushMoves(): Promise<void> {
    await new Promise((r) => setTimeout(r, this.settings.moveBatchMs)) // let the acknowledgements of the next few ms join
    try {
      while (this.moving.size) {
        const batch = [...this.moving.values()]
        this.moving.clear()
        try {
          const results = await this.write(batch)
          batch.forEach((m, i) => m.waiters.forEach((w) => w.resolve(results[i]!)))
        } catch (err) {
          batch.forEach((m) => m.waiters.forEach((w) => w.reject(err)))
        }
      }
    } finally {
      this.moveFlush = undefined
    }
  }

  /** Stores a batch of moves (one state-store call), then sends what each move that moved must. */
  private async write(batch: readonly PendingMove[]): Promise<Moved[]> {
    const [s, st] = [await this.store(), await this.state()]
    // On MongoDB a lastSeq is a query per conversation: only markers sent by devices need it.
    const keys = [...new Set(batch.filter((m) => m.clamp).map((m) => m.key))]
    const last = new Map(await mapLimited(keys, 8, async (k) => [k, await s.lastSeq(k)] as const))
    const results = await st.advanceMany(batch.map((m) => ({ user: m.user, conversation: m.key, marker: m.marker, seq: m.clamp ? Math.min(m.wanted, last.get(m.key)!) : m.wanted })))
    await Promise.all(batch.map((m, i) => this.tell(st, m, results[i]!)))
    return results
  }

  private async tell(st: StateStore, m: PendingMove, moved: Moved): Promise<void> {
    const { user, conversation, marker } = m
    const { before, after } = moved
    if (after <= before) return
    this.settings.metrics.markersMoved.inc({ marker, kind: conversation.kind })
    const ts = Date.now()
    if (marker === 'read') {
      const event: Event = { type: 'read', conversation, seq: after }
      await this.ctx.publish({ topic: DOWN.events(user), payload: JSON.stringify(event), qos: 1 })
    }
    if (conversation.kind === 'group') {
      this.schedule(conversation.id, before + 1, after)
      return
    }
    const peer = conversation.id
    // Notes to self have nobody to tell; the system user has no devices to tell.
    if (peer === user || peer === this.settings.systemUser) return
    let kind = marker
    if (kind === 'read') {
      const privacy = await st.privacy([user, peer])
      if (!privacy.get(user)!.readReceipts || !privacy.get(peer)!.readReceipts) kind = 'delivered'
    }
    const receipt: Receipt = { kind, conversation: { kind: 'dm', id: user }, upToSeq: after, by: user, ts }
    await this.ctx.publish({ topic: DOWN.receipts(peer), payload: JSON.stringify(receipt), qos: 1 })
    this.settings.metrics.receiptsSent.inc({ kind })
  }

  /** Counts for messages of `requester` from `fromSeq` on (at most maxRange seqs are looked at). */
  async counts(requester: string, conversation: ConversationRef, key: ConversationKey, fromSeq: number): Promise<{ messages: ReceiptCount[]; nextSeq?: number }> {
    const s = await this.store()
    const window = await s.after(key, fromSeq - 1, this.settings.maxRange + 1)
    const mine = window.slice(0, this.settings.maxRange).filter((m) => m.sender.user === requester)
    const counted = await this.count(conversation, key, mine, requester)
    const next = window[this.settings.maxRange]
    return { messages: counted, ...(next ? { nextSeq: next.seq } : {}) }
  }

  /** delivered/read/of for each message, from the current members' markers. */
  private async count(conversation: ConversationRef, key: ConversationKey, messages: readonly StoredMessage[], requester?: string): Promise<ReceiptCount[]> {
    if (!messages.length) return []
    const st = await this.state()
    const members = conversation.kind === 'group' ? await this.groups.members(conversation.id) : [...new Set([requester!, conversation.id])]
    const markers = new Map((await st.markers(key)).map((m) => [m.user, m]))
    const privacy = await st.privacy(members)
    // One-to-one read counts are reciprocal (see move()); in groups each member's own choice counts.
    const requesterShares = conversation.kind === 'dm' ? privacy.get(requester!)!.readReceipts : true
    return messages
      .filter((m) => m.type !== 'system')
      .map((m) => {
        const others = members.filter((u) => u !== m.sender.user)
        return {
          seq: m.seq,
          id: m.id,
          delivered: others.filter((u) => (markers.get(u)?.deliveredSeq ?? 0) >= m.seq).length,
          read: requesterShares ? others.filter((u) => privacy.get(u)!.readReceipts && (markers.get(u)?.readSeq ?? 0) >= m.seq).length : 0,
          of: others.length
        }
      })
  }

  private schedule(group: string, from: number, to: number): void {
    const p = this.pending.get(group)
    this.pending.set(group, { from: Math.min(from, p?.from ?? from), to: Math.max(to, p?.to ?? to) })
    this.timer ??= setTimeout(() => {
      this.timer = undefined
      this.flushing = this.flush().finally(() => (this.flushing = undefined))
    }, this.settings.batchMs)
  }

  /** One summary per sender and group for the seqs that moved. */
  private async flush(): Promise<void> {
    const batch = [...this.pending]
    this.pending.clear()
    for (const [group, range] of batch) {
      try {
        const conversation: ConversationRef = { kind: 'group', id: group }
        const key = `g:${group}`
        // A huge jump (a member back after weeks) summarises the newest messages of the range.
        const from = Math.max(range.from, range.to - this.settings.maxRange + 1)
        const messages = await (await this.store()).after(key, from - 1, range.to - from + 1)
        const bySender = new Map<string, ReceiptCount[]>()
        const counts = await this.count(conversation, key, messages)
        counts.forEach((c, i) => {
          const sender = messages.filter((m) => m.type !== 'system')[i]!.sender.user
          bySender.set(sender, [...(bySender.get(sender) ?? []), c])
        })
        const ts = Date.now()
        await Promise.all(
          [...bySender].map(([sender, rows]) => {
            const receipt: Receipt = { kind: 'group', conversation, messages: rows, ts }
            return this.ctx
              .publish({ topic: DOWN.receipts(sender), payload: JSON.stringify(receipt), qos: 1 })
              .then(() => this.settings.metrics.receiptsSent.inc({ kind: 'group' }))
          })
        )
      } catch (err) {
        this.ctx.log.error({ err, group }, 'group receipt summary not sent')
      }
    }
  }

  /** Sends what is pending now (shutdown). */
  async drain(): Promise<void> {
    while (this.moveFlush) await this.moveFlush
    if (this.timer) {
      clearTimeout(this.timer)
      this.timer = undefined
      await this.flush()
    }
    await this.flushing
  }
}
