// The send side: every message the app sends until the server has said what became of it.
//
// What the protocol tells a sender (docs/protocol.md "One-to-one messages", "Group messages",
// "PUBACK semantics"):
//   - PUBACK on s/dm or s/g means "stored", unless an ErrorMessage for the same cmid follows on
//     u/{me}/d/{device}/err: a refused publish is acknowledged too (PUBACK first, then the error).
//   - The message's id and seq come with the carbon: the envelope on u/{me}/m whose cmid is ours
//     (from.user is us). For a group that copy is QoS 0 and may be missed; messages.sync returns
//     it, so every envelope the wiring sees, live or from a page, goes through `handleEnvelope`.
//   - No PUBACK (connection closed) means "unknown": resend after reconnecting. The same cmid
//     makes that safe: the server stores a (user, cmid) once and answers a retry with the stored
//     message (same id and seq).
//   - rate_limited is the one refusal to retry: same payload, same cmid, after retryAfterMs.
// So an entry goes queued -> sending -> acked -> stored(id, seq), or ends in failed(code).
//
// The Outbox owns no connection: `publish` is the wiring's QoS 1 publish (resolves on PUBACK,
// rejects when the connection drops first). Persistence is pluggable (OutboxStore) so an app can
// keep unsent messages across restarts; an in-memory store is provided.
import type { z } from 'zod'
import type { ConversationRef, ErrorCode, ErrorMessage, MessageEnvelope, SendMessage } from '../schemas/protocol.js'
import { newCmid } from './cmid.js'

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never

/** A SendMessage as the app writes it (`type` defaults to text, `e2e` to false), with or without a cmid. */
export type Draft = DistributiveOmit<z.input<typeof SendMessage>, 'cmid'> & { cmid?: string }
/** The payload published on s/dm/{peer} or s/g/{group}. */
export type OutgoingPayload = z.input<typeof SendMessage>

export type OutboxState =
  /** Waiting for a connection, for a free in-flight slot, or (rate_limited) for `notBefore`. */
  | { kind: 'queued'; notBefore?: number }
  /** Published, no PUBACK yet. */
  | { kind: 'sending' }
  /** PUBACK received: stored on the server unless an ErrorMessage follows; id and seq not known yet. */
  | { kind: 'acked' }
  /** The carbon (or a sync page) showed the stored message. Final. */
  | { kind: 'stored'; id: string; seq: number }
  /** Refused by the server with this code; kept until the app calls retry() or discard(). */
  | { kind: 'failed'; code: ErrorCode; message: string }

export interface OutboxEntry {
  cmid: string
  conversation: ConversationRef
  /** s/dm/{peer} or s/g/{group}. */
  topic: string
  payload: OutgoingPayload
  /** Client time of send(), epoch ms: the order in which entries are (re)published. */
  createdAt: number
  /** Publishes so far (1 after the first, more after reconnects and rate_limited retries). */
  attempts: number
  state: OutboxState
}

/**
 * Where the Outbox keeps its entries. `save` is called on every state change (an entry is
 * written before its first publish, so a crash right after publishing still resends it on the
 * next start); `remove` once the entry is stored or discarded. Calls are made one at a time, in
 * order. Entries are plain JSON.
 */
export interface OutboxStore {
  load(): Promise<OutboxEntry[]>
  save(entry: OutboxEntry): Promise<void>
  remove(cmid: string): Promise<void>
}

/** Keeps entries for the life of the process (tests, or apps that do not need restarts). */
export class MemoryOutboxStore implements OutboxStore {
  private readonly entries = new Map<string, OutboxEntry>()
  async load(): Promise<OutboxEntry[]> {
    return [...this.entries.values()].map(clone)
  }
  async save(entry: OutboxEntry): Promise<void> {
    this.entries.set(entry.cmid, clone(entry))
  }
  async remove(cmid: string): Promise<void> {
    this.entries.delete(cmid)
  }
}

export interface OutboxOptions {
  /** The signed-in user: only envelopes from this user are carbons of our sends (a cmid is unique per user only). */
  userId: string
  /** QoS 1 publish: resolves on PUBACK, rejects if the connection is lost before it. */
  publish(topic: string, payload: string): Promise<void>
  store?: OutboxStore
  /** Every state change (the entry is a copy). */
  onChange?(entry: OutboxEntry): void
  /** Persistence failures (the entry stays in memory and keeps going). */
  onError?(err: unknown): void
  /** Publishes waiting for their PUBACK at once (default 16); more stay queued. */
  maxInFlight?: number
  /** Wait before republishing after a publish that failed while still connected (default 1000 ms). */
  retryMs?: number
  /** rate_limited without retryAfterMs: wait this long (default 1000 ms). */
  rateLimitMs?: number
  now?: () => number
  /** Timer hook (default setTimeout), for tests and for platforms with their own scheduler. */
  schedule?: (fn: () => void, ms: number) => () => void
  newCmid?: () => string
}

/** s/dm/{peer} or s/g/{group}. Built here rather than with schemas' UP so the SDK never loads zod at run time. */
export function sendTopic(conversation: ConversationRef): string {
  return conversation.kind === 'dm' ? `s/dm/${conversation.id}` : `s/g/${conversation.id}`
}

const defaultSchedule = (fn: () => void, ms: number): (() => void) => {
  const t = setTimeout(fn, ms)
  return () => clearTimeout(t)
}

export class Outbox {
  private readonly entries = new Map<string, OutboxEntry>()
  /** Per entry: which publish attempt is current, so a late PUBACK of an abandoned attempt is ignored. */
  private readonly current = new Map<string, number>()
  private online = false
  private started = false
  private persisting: Promise<void> = Promise.resolve()
  private timer: (() => void) | undefined
  private timerAt = Infinity
  private readonly now: () => number
  private readonly schedule: (fn: () => void, ms: number) => () => void
  private readonly store: OutboxStore

  constructor(private readonly options: OutboxOptions) {
    this.now = options.now ?? (() => Date.now())
    this.schedule = options.schedule ?? defaultSchedule
    this.store = options.store ?? new MemoryOutboxStore()
  }

  /**
   * Loads what the store kept from an earlier run. An entry that was `sending` may or may not
   * have been stored: it goes back to `queued` and is resent with its cmid (stored once either
   * way). `acked` entries stay acked: their carbon or a sync page will complete them.
   */
  async start(): Promise<void> {
    if (this.started) return
    this.started = true
    for (const e of await this.store.load()) {
      if (this.entries.has(e.cmid)) continue
      if (e.state.kind === 'sending') e.state = { kind: 'queued' }
      this.entries.set(e.cmid, e)
    }
    this.pump()
  }

  /** Queues a message; it is written to the store before it is published. Returns a copy of the entry. */
  async send(conversation: ConversationRef, draft: Draft): Promise<OutboxEntry> {
    if (!this.started) await this.start()
    const cmid = draft.cmid ?? (this.options.newCmid ?? newCmid)()
    if (this.entries.has(cmid)) throw new Error(`cmid ${cmid} is already in the outbox`)
    const entry: OutboxEntry = {
      cmid,
      conversation: { kind: conversation.kind, id: conversation.id },
      topic: sendTopic(conversation),
      payload: { ...draft, cmid },
      createdAt: this.now(),
      attempts: 0,
      state: { kind: 'queued' }
    }
    this.entries.set(cmid, entry)
    this.emit(entry)
    await this.persist(entry)
    this.pump()
    return clone(entry)
  }

  /** The connection is up (CONNACK): publish what is queued. */
  connected(): void {
    this.online = true
    this.pump()
  }

  /**
   * The connection is gone. Publishes without a PUBACK become `queued` again and go out with the
   * same cmid on the next connected(): their PUBACK, if the server sent one, is lost with the
   * connection, so whether they were stored is unknown, and the retry is safe either way.
   */
  disconnected(): void {
    this.online = false
    for (const e of this.entries.values()) {
      if (e.state.kind === 'sending') this.setState(e, { kind: 'queued' })
    }
  }

  /**
   * Every envelope of u/{me}/m and of sync/pull pages. True when it completed one of our sends
   * (the app still gets the envelope through the Inbox, like every other).
   */
  handleEnvelope(envelope: Pick<MessageEnvelope, 'id' | 'seq' | 'cmid' | 'from'>): boolean {
    if (envelope.from.user !== this.options.userId) return false
    const e = this.entries.get(envelope.cmid)
    if (!e) return false
    // A carbon proves the message is stored, whatever came before it: even after an error (an
    // edit retried past its window is refused with too_late although the first attempt was
    // stored, docs/protocol.md "Message kinds").
    this.setState(e, { kind: 'stored', id: envelope.id, seq: envelope.seq })
    return true
  }

  /** Every ErrorMessage of u/{me}/d/{device}/err. True when it was about one of our sends. */
  handleError(error: Pick<ErrorMessage, 'code' | 'message' | 'ref' | 'retryAfterMs'>): boolean {
    const cmid = error.ref.cmid
    if (cmid === undefined) return false
    const e = this.entries.get(cmid)
    if (!e || error.ref.topic !== e.topic) return false
    if (e.state.kind === 'stored' || e.state.kind === 'failed') return true
    if (error.code === 'rate_limited') {
      // The one retryable refusal: same payload, same cmid, later (docs/protocol.md "Error codes").
      this.setState(e, { kind: 'queued', notBefore: this.now() + (error.retryAfterMs ?? this.options.rateLimitMs ?? 1000) })
    } else {
      this.setState(e, { kind: 'failed', code: error.code, message: error.message })
    }
    this.pump()
    return true
  }

  /** Sends a failed entry again, same cmid (e.g. after the user fixed the cause, or an `internal` error). */
  retry(cmid: string): void {
    const e = this.entries.get(cmid)
    if (!e || e.state.kind !== 'failed') return
    this.setState(e, { kind: 'queued' })
    this.pump()
  }

  /** Forgets an entry (the app gave up on it). Its cmid is never reused by this Outbox. */
  discard(cmid: string): void {
    const e = this.entries.get(cmid)
    if (!e) return
    this.entries.delete(cmid)
    this.current.delete(cmid)
    void this.enqueue(() => this.store.remove(cmid))
  }

  get(cmid: string): OutboxEntry | undefined {
    const e = this.entries.get(cmid)
    return e && clone(e)
  }

  /** Entries not yet stored, oldest first (what a conversation screen shows as pending or failed). */
  pending(conversation?: ConversationRef): OutboxEntry[] {
    return this.ordered()
      .filter((e) => !conversation || (e.conversation.kind === conversation.kind && e.conversation.id === conversation.id))
      .map(clone)
  }

  /** Resolves once every store write issued so far has finished. */
  flush(): Promise<void> {
    return this.persisting
  }

  /** Stops the timer; entries stay in the store. */
  close(): void {
    this.online = false
    this.timer?.()
    this.timer = undefined
  }

  /**
   * Publishes queued entries in creation order, up to maxInFlight. Order is kept for the first
   * publish and for resends after a reconnect; an entry held back by rate_limited can be
   * overtaken by later ones (it then gets a higher seq than they do).
   */
  private pump(): void {
    if (!this.online || !this.started) return
    const max = this.options.maxInFlight ?? 16
    let inFlight = 0
    for (const e of this.entries.values()) if (e.state.kind === 'sending') inFlight++
    const now = this.now()
    let wake = Infinity
    for (const e of this.ordered()) {
      if (inFlight >= max) break
      if (e.state.kind !== 'queued') continue
      if (e.state.notBefore !== undefined && e.state.notBefore > now) {
        wake = Math.min(wake, e.state.notBefore)
        continue
      }
      inFlight++
      this.publish(e)
    }
    if (wake < Infinity) this.wakeAt(wake)
  }

  private publish(e: OutboxEntry): void {
    e.attempts++
    const attempt = e.attempts
    this.current.set(e.cmid, attempt)
    this.setState(e, { kind: 'sending' })
    let promise: Promise<void>
    try {
      promise = this.options.publish(e.topic, JSON.stringify(e.payload))
    } catch (err) {
      promise = Promise.reject(err instanceof Error ? err : new Error(String(err)))
    }
    promise.then(
      () => {
        if (!this.isCurrent(e, attempt)) return
        // The error of a refused publish comes after its PUBACK: not "stored" yet, "acked".
        if (e.state.kind === 'sending') this.setState(e, { kind: 'acked' })
        this.pump()
      },
      () => {
        if (!this.isCurrent(e, attempt) || e.state.kind !== 'sending') return
        this.setState(e, { kind: 'queued' })
        // Still connected (a transport hiccup): try again a little later; otherwise connected() will.
        if (this.online) this.wakeAt(this.now() + (this.options.retryMs ?? 1000))
      }
    )
  }

  private isCurrent(e: OutboxEntry, attempt: number): boolean {
    return this.entries.get(e.cmid) === e && this.current.get(e.cmid) === attempt
  }

  private wakeAt(at: number): void {
    if (at >= this.timerAt) return
    this.timer?.()
    this.timerAt = at
    this.timer = this.schedule(() => {
      this.timer = undefined
      this.timerAt = Infinity
      // A queued entry whose publish failed has no notBefore: lift the pause for everything due.
      this.pump()
    }, Math.max(0, at - this.now()))
  }

  private setState(e: OutboxEntry, state: OutboxState): void {
    e.state = state
    this.emit(e)
    if (state.kind === 'stored') {
      // Done: the message now lives in the conversation (the Inbox delivers it); nothing to resend.
      this.entries.delete(e.cmid)
      this.current.delete(e.cmid)
      void this.enqueue(() => this.store.remove(e.cmid))
    } else {
      void this.persist(e)
    }
  }

  private persist(e: OutboxEntry): Promise<void> {
    const snapshot = clone(e)
    return this.enqueue(() => this.store.save(snapshot))
  }

  /** Store calls run one at a time, in order, so a later state never gets overwritten by an earlier one. */
  private enqueue(op: () => Promise<void>): Promise<void> {
    this.persisting = this.persisting.then(op).catch((err: unknown) => this.options.onError?.(err))
    return this.persisting
  }

  private emit(e: OutboxEntry): void {
    this.options.onChange?.(clone(e))
  }

  private ordered(): OutboxEntry[] {
    return [...this.entries.values()].sort((a, b) => a.createdAt - b.createdAt)
  }
}

function clone<T>(value: T): T {
  // structuredClone exists in browsers and Node 17+, but not in every React Native engine; entries are plain JSON.
  return JSON.parse(JSON.stringify(value)) as T
}
