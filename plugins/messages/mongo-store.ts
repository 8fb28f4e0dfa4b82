// The MongoDB message store. Sequence numbers are claimed by inserting: a unique index on
// (conversation, seq) lets exactly one insert win a number, on MongoDB and on FerretDB alike
// (FerretDB's findAndModify is not atomic, so a $inc counter could hand out a number twice).
// A node keeps the last seq it saw per conversation; when another node got there first the insert
// fails with E11000, the node rereads the conversation's last seq and tries again.
// Inserts are ordered: a batch stops at its first failure, so a message never takes seq N+1 while
// N stays free (an unordered batch could store N+1 after losing N to a send already stored on
// another node, leaving a hole readers would wait on forever). Seqs therefore have no gaps.
import { MongoBulkWriteError, type Collection, type Db } from 'mongodb'
import { newMessageId, type AppendResult, type ConversationKey, type MessageStore, type NewMessage, type StoredMessage } from './store.js'

interface Doc extends Omit<StoredMessage, 'id'> {
  _id: string
}

/** The stored form; absent optional fields are left out (the driver would write undefined as null). */
const toMessage = ({ _id, ...rest }: Doc): StoredMessage => {
  const m: StoredMessage = { id: _id, ...rest }
  for (const k of ['replyTo', 'media', 'ref', 'notice', 'deleted'] as const) if (m[k] === undefined || m[k] === null) delete m[k]
  return m
}
const toDoc = (m: NewMessage, id: string, seq: number): Doc => {
  const doc: Doc = { _id: id, ...m, seq }
  for (const k of ['replyTo', 'media', 'ref', 'notice'] as const) if (doc[k] === undefined) delete doc[k]
  return doc
}

/** How many attempts in a row may store nothing (every number lost to other nodes) before the append gives up. */
const MAX_ATTEMPTS = 20

export class MongoMessageStore implements MessageStore {
  private readonly col: Collection<Doc>
  private readonly lastSeqCache = new Map<ConversationKey, number>()

  constructor(db: Db, collection = 'messages') {
    this.col = db.collection<Doc>(collection)
  }

  async init(): Promise<void> {
    await this.col.createIndex({ conversation: 1, seq: 1 }, { unique: true, name: 'conversation_seq' })
    await this.col.createIndex({ 'sender.user': 1, cmid: 1 }, { unique: true, name: 'sender_cmid' })
  }

  private async currentLastSeq(conversation: ConversationKey): Promise<number> {
    const cached = this.lastSeqCache.get(conversation)
    if (cached !== undefined) return cached
    const seq = await this.lastSeq(conversation)
    this.lastSeqCache.set(conversation, seq)
    return seq
  }

  private async findExisting(batch: readonly NewMessage[]): Promise<Map<string, StoredMessage>> {
    const key = (user: string, cmid: string) => `${user}\u0000${cmid}`
    const users = [...new Set(batch.map((m) => m.sender.user))]
    const cmids = [...new Set(batch.map((m) => m.cmid))]
    // A superset query (every sender x every cmid) keeps to operators every backend has; filtered below.
    const docs = await this.col.find({ 'sender.user': { $in: users }, cmid: { $in: cmids } }).toArray()
    const wanted = new Set(batch.map((m) => key(m.sender.user, m.cmid)))
    return new Map(docs.filter((d) => wanted.has(key(d.sender.user, d.cmid))).map((d) => [key(d.sender.user, d.cmid), toMessage(d)]))
  }

  async append(batch: readonly NewMessage[]): Promise<AppendResult[]> {
    const key = (m: NewMessage) => `${m.sender.user}\u0000${m.cmid}`
    const results: Array<AppendResult | undefined> = Array.from({ length: batch.length }, () => undefined)
    const existing = await this.findExisting(batch)
    const firstInBatch = new Map<string, number>()
    let pending: number[] = []
    batch.forEach((m, i) => {
      const found = existing.get(key(m))
      if (found) results[i] = { message: found, duplicate: true }
      else if (firstInBatch.has(key(m))) return // the same send twice in one batch: answered below
      else {
        firstInBatch.set(key(m), i)
        pending.push(i)
      }
    })

    for (let fruitless = 0; pending.length; ) {
      if (fruitless >= MAX_ATTEMPTS) throw new Error(`could not claim sequence numbers in ${MAX_ATTEMPTS} attempts`)
      const docs: Doc[] = []
      const next = new Map<ConversationKey, number>()
      for (const i of pending) {
        const m = batch[i]!
        const seq = (next.get(m.conversation) ?? (await this.currentLastSeq(m.conversation))) + 1
        next.set(m.conversation, seq)
        docs.push(toDoc(m, newMessageId(m.ts), seq))
      }
      // Every doc before the first failure is stored; it and everything after it are not.
      let firstFailed = docs.length
      try {
        await this.col.insertMany(docs, { ordered: true })
      } catch (err) {
        if (!(err instanceof MongoBulkWriteError)) {
          this.lastSeqCache.clear()
          throw err
        }
        const raw: unknown = err.writeErrors
        const writeErrors = (Array.isArray(raw) ? raw : [raw]) as Array<{ code: number; index: number }>
        if (writeErrors.length === 0 || writeErrors.some((e) => e.code !== 11000)) {
          this.lastSeqCache.clear()
          throw err
        }
        firstFailed = Math.min(...writeErrors.map((e) => e.index))
      }
      const retry: number[] = []
      docs.forEach((doc, j) => {
        const i = pending[j]!
        if (j < firstFailed) {
          results[i] = { message: toMessage(doc), duplicate: false }
          this.lastSeqCache.set(doc.conversation, Math.max(this.lastSeqCache.get(doc.conversation) ?? 0, doc.seq))
        } else retry.push(i)
      })
      fruitless = firstFailed === 0 ? fruitless + 1 : 0
      if (retry.length) {
        // Either another node took the first failed number, or that send was stored meanwhile
        // elsewhere; the ones after it were not tried.
        const stored = await this.findExisting(retry.map((i) => batch[i]!))
        pending = []
        for (const i of retry) {
          const found = stored.get(key(batch[i]!))
          if (found) results[i] = { message: found, duplicate: true }
          else {
            this.lastSeqCache.delete(batch[i]!.conversation)
            pending.push(i)
          }
        }
      } else pending = []
    }

    // Repeats of a send within the batch get the first one's result.
    batch.forEach((m, i) => {
      if (!results[i]) results[i] = { message: results[firstInBatch.get(key(m))!]!.message, duplicate: true }
    })
    return results as AppendResult[]
  }

  async after(conversation: ConversationKey, afterSeq: number, limit: number): Promise<StoredMessage[]> {
    const docs = await this.col.find({ conversation, seq: { $gt: afterSeq } }).sort({ seq: 1 }).limit(limit).toArray()
    return docs.map(toMessage)
  }

  async before(conversation: ConversationKey, beforeSeq: number, limit: number): Promise<StoredMessage[]> {
    const docs = await this.col.find({ conversation, seq: { $lt: beforeSeq } }).sort({ seq: -1 }).limit(limit).toArray()
    return docs.map(toMessage).reverse()
  }

  async lastSeq(conversation: ConversationKey): Promise<number> {
    const [doc] = await this.col.find({ conversation }).sort({ seq: -1 }).limit(1).project<{ seq: number }>({ seq: 1 }).toArray()
    return doc?.seq ?? 0
  }

  async get(conversation: ConversationKey, id: string): Promise<StoredMessage | undefined> {
    const doc = await this.col.findOne({ _id: id, conversation })
    return doc ? toMessage(doc) : undefined
  }

  async findSent(user: string, cmid: string): Promise<StoredMessage | undefined> {
    const doc = await this.col.findOne({ 'sender.user': user, cmid })
    return doc ? toMessage(doc) : undefined
  }

  async redact(conversation: ConversationKey, id: string): Promise<void> {
    await this.col.updateOne({ _id: id, conversation }, { $set: { body: '', deleted: true }, $unset: { media: '' } })
    await this.col.updateMany({ conversation, type: 'edit', ref: id }, { $set: { body: '', deleted: true } })
  }

  async close(): Promise<void> {
    this.lastSeqCache.clear()
  }
}
