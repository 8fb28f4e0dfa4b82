// messages.pull: "everything since my cursor", across all of a user's conversations, with the
// device's cursor kept on the server.
//   1. The device calls messages.pull {}; the answer holds, per conversation with something new,
//      the messages after the device's cursor (in seq order), or `reset` when the device is too far
//      behind (more than maxDeltaMessages): it should drop what it has of that conversation and
//      load recent history (messages.history) when it shows it. A device's first pull answers
//      `fresh: true` and starts its cursors at the present: a new device builds its screens from
//      conversations.list and messages.history, then follows deltas.
//   2. The answer carries `cursor`, the positions after this page. The device stores the page, then
//      calls messages.pull { ack: cursor }: the server moves the device's cursors (forward only)
//      and answers the next page. A device that crashes before acking gets the page again; the ids
//      let it drop what it already has. When hasMore is false, one last ack commits the end.
import { z } from 'zod'
import type { ConversationRef } from '../../schemas/protocol.js'
import type { StateStore } from './state-store.js'
import type { ConversationKey, MessageStore, StoredMessage } from './store.js'

export const PullParams = z
  .object({
    ack: z.string().max(65_536).optional().describe('The cursor of the previous answer, once its page is stored'),
    limit: z.number().int().positive().optional()
  })
  .strict()

/** The cursor a device acks: positions per conversation, as opaque base64url. */
const Positions = z.array(z.tuple([z.string().min(1).max(200), z.number().int().min(0)])).max(10_000)

export function encodeCursor(positions: ReadonlyMap<ConversationKey, number>): string {
  return Buffer.from(JSON.stringify([...positions])).toString('base64url')
}

/** The positions of a cursor, or undefined when it is not one of ours. */
export function decodeCursor(cursor: string): Map<ConversationKey, number> | undefined {
  try {
    const parsed = Positions.safeParse(JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')))
    return parsed.success ? new Map(parsed.data) : undefined
  } catch {
    return undefined
  }
}

export interface PullChange<E> {
  conversation: ConversationRef
  lastSeq: number
  messages: E[]
  reset?: true
}

export interface PullDeps<E> {
  store: MessageStore
  state: StateStore
  /** Every conversation of the user (one-to-one and groups). */
  conversations: ConversationKey[]
  toRef(key: ConversationKey): ConversationRef
  toEnvelope(m: StoredMessage): E
  maxDeltaMessages: number
}

/** Runs `fn` over `items`, `width` at a time (a user may have thousands of conversations). */
export async function mapLimited<T, R>(items: readonly T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = []
  for (let i = 0; i < items.length; i += width) out.push(...(await Promise.all(items.slice(i, i + width).map(fn))))
  return out
}

/** Where every conversation ends now: a new device's starting cursors. */
export async function presentPositions(deps: Pick<PullDeps<unknown>, 'store' | 'conversations'>): Promise<Map<ConversationKey, number>> {
  return new Map(await mapLimited(deps.conversations, 32, async (key) => [key, await deps.store.lastSeq(key)] as const))
}

/** One page of changes after the device's cursors; a reset costs one unit of the page like a message. */
export async function pullPage<E>(
  deps: PullDeps<E>,
  cursors: ReadonlyMap<ConversationKey, number>,
  limit: number
): Promise<{ changes: Array<PullChange<E>>; cursor: string; hasMore: boolean }> {
  const behind = (
    await mapLimited(deps.conversations, 32, async (key) => ({ key, cursor: cursors.get(key) ?? 0, lastSeq: await deps.store.lastSeq(key) }))
  ).filter((c) => c.lastSeq > c.cursor)
  const changes: Array<PullChange<E>> = []
  const positions = new Map<ConversationKey, number>()
  let budget = limit
  for (const c of behind) {
    if (budget <= 0) break
    const conversation = deps.toRef(c.key)
    if (c.lastSeq - c.cursor > deps.maxDeltaMessages) {
      changes.push({ conversation, lastSeq: c.lastSeq, messages: [], reset: true })
      positions.set(c.key, c.lastSeq)
      budget -= 1
      continue
    }
    const messages = await deps.store.after(c.key, c.cursor, budget)
    if (!messages.length) continue
    changes.push({ conversation, lastSeq: c.lastSeq, messages: messages.map((m) => deps.toEnvelope(m)) })
    positions.set(c.key, messages.at(-1)!.seq)
    budget -= messages.length
  }
  const hasMore = behind.some((c) => (positions.get(c.key) ?? c.cursor) < c.lastSeq)
  return { changes, cursor: encodeCursor(positions), hasMore }
}
