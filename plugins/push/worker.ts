// The worker every node runs: claims due jobs from the durable queue and sends them.
// For each job, in order:
//   1. the registration still exists (else dropped: the device unregistered or its token died);
//   2. the device has not connected since the newest message, and is not connected now (else
//      dropped: it has, or will sync, the messages);
//   3. the conversation is not muted (else dropped, or a badge-only push when `muted: badge`);
//   4. the device's rate limit allows a push (else put back, due when it does; more messages
//      coalesce into it meanwhile);
//   5. it is sent, while the claim is kept invisible to the other nodes;
//   6. the outcome: sent (counted for the badge) / dead token (registration removed) / retryable
//      (put back with back-off, honouring Retry-After, up to maxAttempts) / failed.
import type { Logger } from '../../broker/logger.js'
import type { Counter, Histogram } from 'prom-client'
import { retryDelay } from './backoff.js'
import { badgeNotice, messageNotice, textsFor, type Texts } from './payload.js'
import type { PushQueue } from './queue.js'
import type { DeviceRateLimiter } from './rate-limit.js'
import type { RegistryStore } from './registry.js'
import type { ClaimedJob, Notice, PushProvider, PushResult, Registration, SendOutcome } from './types.js'
import type { PushConfig } from './config.js'

/**
 * The reason label of parley_push_failed_total: the provider's reason (a fixed set: Apple's and
 * Google's error names), but "error" for ours, whose text (a network error's message) varies and
 * would make a new series each time. The full text is in the log and the last result.
 */
export function metricReason(reason: string): string {
  return reason.startsWith('error: ') || reason.startsWith('error:') ? 'error' : reason.slice(0, 64)
}

/** An outcome as the registry keeps it (the last result of a device). */
export function resultOf(outcome: SendOutcome, provider: PushProvider, type: Notice['type'], at = Date.now()): PushResult {
  return outcome.ok
    ? { at, ok: true, via: provider.name, type, ...(outcome.status !== undefined ? { status: outcome.status } : {}) }
    : { at, ok: false, via: provider.name, type, reason: outcome.reason.slice(0, 200), ...(outcome.status !== undefined ? { status: outcome.status } : {}) }
}

export interface WorkerMetrics {
  sent: Counter<'provider' | 'type'>
  failed: Counter<'provider' | 'reason'>
  skipped: Counter<'reason'>
  retried: Counter<'provider' | 'why'>
  deadTokens: Counter<'provider'>
  sendSeconds: Histogram<'provider'>
  delaySeconds: Histogram<'provider'>
}

export interface WorkerDeps {
  config: PushConfig
  log: Logger
  queue: () => Promise<PushQueue>
  registry: () => Promise<RegistryStore>
  limiter: DeviceRateLimiter
  providerFor: (registration: Registration) => PushProvider
  connectedDevices: (user: string) => Promise<string[]>
  groupName: (user: string, groupId: string) => Promise<string | undefined>
  /** The app badge for a push to this device: the user's unread total. */
  badge: (user: string, device: string, jobCount: number) => Promise<number>
  metrics: WorkerMetrics
}

export class PushWorker {
  private timer: NodeJS.Timeout | undefined
  private stopped = false
  private ticking = false
  /** The last claim took all it asked for: more jobs are probably due. */
  private backlog = false
  private readonly active = new Set<Promise<void>>()
  private readonly byDevice = new Map<string, Promise<void>>()

  constructor(private readonly d: WorkerDeps) {}

  start(): void {
    this.schedule(0)
  }

  private schedule(ms: number): void {
    if (this.stopped) return
    this.timer = setTimeout(() => void this.tick(), ms)
  }

  private async tick(): Promise<void> {
    const { worker } = this.d.config
    this.ticking = true
    try {
      const free = worker.concurrency - this.active.size
      if (free > 0) {
        const q = await this.d.queue()
        const want = Math.min(free, worker.batch)
        const jobs = await q.claim(Date.now(), want, worker.visibilityMs)
        this.backlog = jobs.length === want
        for (const job of jobs) {
          // One device's pushes go one after another (each badge counts the ones before it).
          const key = `${job.user}:${job.device}`
          const before = this.byDevice.get(key) ?? Promise.resolve()
          const running: Promise<void> = before
            .then(() => this.process(q, job))
            .catch((err: unknown) => this.d.log.error({ err, user: job.user, device: job.device }, 'push failed; retried after the claim expires'))
            .finally(() => {
              this.active.delete(running)
              if (this.byDevice.get(key) === running) this.byDevice.delete(key)
              this.wake()
            })
          this.active.add(running)
          this.byDevice.set(key, running)
        }
      }
    } catch (err) {
      this.d.log.warn({ err }, 'push queue not reachable; retried')
    } finally {
      this.ticking = false
      // A full claim: more may be due now; claim again as soon as a slot is free (wake), else poll.
      this.schedule(this.backlog && this.active.size < worker.concurrency ? 0 : worker.pollMs)
    }
  }

  /** A send finished: with a backlog, claim again now instead of at the next poll. */
  private wake(): void {
    if (!this.backlog || this.ticking || this.stopped) return
    clearTimeout(this.timer)
    this.schedule(0)
  }

  /** Keeps a claim invisible while `work` runs. */
  private async holding<T>(q: PushQueue, claim: string, work: Promise<T>): Promise<T> {
    const { visibilityMs } = this.d.config.worker
    const keep = setInterval(() => void q.extend(claim, Date.now() + visibilityMs).catch(() => undefined), Math.max(250, Math.floor(visibilityMs / 3)))
    try {
      return await work
    } finally {
      clearInterval(keep)
    }
  }

  async process(q: PushQueue, job: ClaimedJob): Promise<void> {
    const { config, metrics } = this.d
    const registry = await this.d.registry()
    const drop = async (reason: string) => {
      metrics.skipped.inc({ reason })
      await q.ack(job.claim)
    }
    const registration = await registry.get(job.user, job.device)
    if (!registration) return drop('unregistered')
    const connectedAt = await q.connectedAt(job.user, job.device)
    if (connectedAt !== undefined && connectedAt >= job.last.ts) return drop('connected')
    if ((await this.d.connectedDevices(job.user)).includes(job.device)) return drop('online')
    const now = Date.now()
    const muted = (await registry.mutedAmong([job.user], job.conversation, now)).has(job.user)
    if (muted && config.muted === 'nothing') return drop('muted')

    const deviceKey = `${job.user}:${job.device}`
    const allowedAt = await this.d.limiter.take(deviceKey, now)
    const provider = this.d.providerFor(registration)
    if (allowedAt > 0) {
      metrics.retried.inc({ provider: provider.name, why: 'rate_limited' })
      await q.retry(job.claim, allowedAt, job.attempts)
      return
    }

    const texts: Texts = textsFor(registration.locale, config.texts, config.locale)
    const badge = await this.d.badge(job.user, job.device, job.count)
    const groupName =
      registration.previews && job.conversation.startsWith('g:') && !job.last.e2e ? await this.d.groupName(job.user, job.conversation.slice(2)) : undefined
    const notice = muted ? badgeNotice(job, badge, config.ttlSeconds) : messageNotice(job, registration, badge, { texts, ttlSeconds: config.ttlSeconds, groupName })

    const started = performance.now()
    const outcome: SendOutcome = await this.holding(q, job.claim, provider.send(registration, notice))
    metrics.sendSeconds.observe({ provider: provider.name }, (performance.now() - started) / 1000)
    // For operators (parley admin push tokens); a failure to note it never fails the push.
    await registry
      .recordResult(job.user, job.device, registration.token, resultOf(outcome, provider, notice.type))
      .catch((err: unknown) => this.d.log.debug({ err, device: deviceKey }, 'push result not recorded'))

    if (outcome.ok) {
      await registry.addPushed(job.user, job.device, job.conversation, job.count, job.last.seq)
      if (!(await q.ack(job.claim))) this.d.log.warn({ device: deviceKey }, 'push claim expired during the send: another node may send it again')
      metrics.sent.inc({ provider: provider.name, type: notice.type })
      metrics.delaySeconds.observe({ provider: provider.name }, Math.max(0, Date.now() - job.firstTs) / 1000)
      return
    }
    metrics.failed.inc({ provider: provider.name, reason: metricReason(outcome.reason) })
    if (outcome.dead) {
      // Only while the registration still holds that token (the app may have registered a new one).
      if (await registry.removeToken(job.user, job.device, registration.token)) metrics.deadTokens.inc({ provider: provider.name })
      this.d.log.info({ device: deviceKey, provider: provider.name, reason: outcome.reason }, 'push token is dead: registration removed')
      await q.ack(job.claim)
      return
    }
    const attempts = job.attempts + 1
    if (outcome.retryable && attempts < config.retry.maxAttempts) {
      const delay = retryDelay(attempts, outcome.retryAfterMs, config.retry)
      metrics.retried.inc({ provider: provider.name, why: outcome.retryAfterMs !== undefined ? 'retry_after' : 'backoff' })
      this.d.log.debug({ device: deviceKey, reason: outcome.reason, attempts, delay }, 'push will be retried')
      await q.retry(job.claim, Date.now() + delay, attempts)
      return
    }
    this.d.log.warn({ device: deviceKey, provider: provider.name, reason: outcome.reason, status: outcome.status, attempts }, 'push given up')
    await q.ack(job.claim)
  }

  /** Stops claiming; waits (bounded) for sends in progress. Unfinished claims return after their visibility. */
  async stop(waitMs = 5000): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    if (this.active.size) {
      await Promise.race([Promise.allSettled([...this.active]), new Promise<void>((resolve) => setTimeout(resolve, waitMs).unref())])
    }
  }
}
