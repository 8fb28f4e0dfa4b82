// Groups appends that arrive within a short window into one store call, so a burst of messages
// costs a few round trips (and, embedded, a few transactions) instead of one each. One batch is
// written at a time, which also keeps a node's sequence allocation per conversation in order.
import type { AppendResult, MessageStore, NewMessage } from './store.js'

interface Waiting {
  message: NewMessage
  resolve: (r: AppendResult) => void
  reject: (err: unknown) => void
}

export class BatchingAppender {
  private queue: Waiting[] = []
  private timer: NodeJS.Timeout | undefined
  private writing: Promise<void> | undefined

  constructor(
    private readonly store: () => Promise<MessageStore>,
    private readonly windowMs: number,
    private readonly maxBatch: number,
    private readonly onBatch?: (size: number, ms: number, ok: boolean) => void
  ) {}

  append(message: NewMessage): Promise<AppendResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ message, resolve, reject })
      if (this.queue.length >= this.maxBatch) this.kick(0)
      else this.kick(this.windowMs)
    })
  }

  private kick(delay: number): void {
    if (this.writing) return // the running batch picks the queue up when it ends
    if (delay === 0) {
      clearTimeout(this.timer)
      this.timer = undefined
      this.writing = this.flush()
    } else {
      this.timer ??= setTimeout(() => {
        this.timer = undefined
        this.writing = this.flush()
      }, delay)
    }
  }

  private async flush(): Promise<void> {
    while (this.queue.length) {
      const batch = this.queue.splice(0, this.maxBatch)
      const started = performance.now()
      try {
        const results = await (await this.store()).append(batch.map((w) => w.message))
        batch.forEach((w, i) => w.resolve(results[i]!))
        this.onBatch?.(batch.length, performance.now() - started, true)
      } catch (err) {
        batch.forEach((w) => w.reject(err))
        this.onBatch?.(batch.length, performance.now() - started, false)
      }
    }
    this.writing = undefined
  }

  /** Resolves when everything queued so far is written (or failed). */
  async drain(): Promise<void> {
    if (this.timer) this.kick(0)
    while (this.writing) await this.writing
  }
}
