// APNs through @parse/node-apn (HTTP/2, token-based authentication with a .p8 key).
// - One library Provider per gateway (production, sandbox), made when first needed.
// - connectionRetryLimit 0: the library would retry 429/5xx at once (it reads "Retry-After" with a
//   capital R from HTTP/2 headers, which are lower case, so it never waits); we retry through the
//   durable queue with back-off instead.
// - Retry-After: the library drops the header, so the provider wraps the library client's request
//   function (8.x internals, guarded) to read `retry-after` from the response headers, keyed by the
//   apns-id we set on every notification. Without that wrapper the queue's back-off still applies.
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import apn from '@parse/node-apn'
import type { Logger } from '../../../broker/logger.js'
import { apnsRequest } from '../payload.js'
import type { Notice, PushProvider, Registration, SendOutcome } from '../types.js'

export interface ApnsOptions {
  /** Path of the .p8 key from the Apple Developer account. */
  keyFile: string
  keyId: string
  teamId: string
  /** Bundle id used when a registration names none. */
  defaultTopic?: string | undefined
  /** Overrides of the gateway (tests, an egress proxy): host, port and a CA bundle to trust. */
  address?: string | undefined
  port?: number | undefined
  caFile?: string | undefined
  requestTimeoutMs: number
}

/** Reasons for which Apple says the token will never work again. */
const DEAD_REASONS = new Set(['BadDeviceToken', 'Unregistered', 'DeviceTokenNotForTopic', 'ExpiredToken'])
/** Statuses worth another try later (throttling, Apple unavailable). */
const RETRY_STATUSES = new Set([429, 500, 503])

type LibProvider = InstanceType<typeof apn.Provider>
type RequestFn = (session: unknown, ...rest: unknown[]) => Promise<unknown>
interface H2Session {
  request(headers: Record<string, unknown>): NodeJS.EventEmitter
}

/** Parses Retry-After (seconds or an HTTP date) into milliseconds from now. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined
  const seconds = Number(value)
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000
  const date = Date.parse(value)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

export class ApnsProvider implements PushProvider {
  readonly name = 'apns' as const
  private readonly providers = new Map<'production' | 'sandbox', LibProvider>()
  private readonly retryAfter = new Map<string, string>()
  private readonly key: string
  private readonly ca: string[] | undefined

  constructor(
    private readonly options: ApnsOptions,
    private readonly log: Logger
  ) {
    this.key = readFileSync(options.keyFile, 'utf8')
    this.ca = options.caFile ? [readFileSync(options.caFile, 'utf8')] : undefined
  }

  private provider(environment: 'production' | 'sandbox'): LibProvider {
    let p = this.providers.get(environment)
    if (p) return p
    p = new apn.Provider({
      token: { key: this.key, keyId: this.options.keyId, teamId: this.options.teamId },
      production: environment === 'production',
      ...(this.options.address ? { address: this.options.address } : {}),
      ...(this.options.port ? { port: this.options.port } : {}),
      ...(this.ca ? { ca: this.ca } : {}),
      connectionRetryLimit: 0,
      requestTimeout: this.options.requestTimeoutMs
    })
    this.observeRetryAfter(p)
    this.providers.set(environment, p)
    return p
  }

  /** Wraps the library client's `request(session, ...)` to see the response headers. */
  private observeRetryAfter(p: LibProvider): void {
    const client = (p as unknown as { client?: { request?: RequestFn } }).client
    const original = client?.request
    if (!client || typeof original !== 'function') {
      this.log.warn('@parse/node-apn internals changed: Retry-After from APNs is not read (back-off still applies)')
      return
    }
    const seen = this.retryAfter
    client.request = function (this: unknown, session: unknown, ...rest: unknown[]) {
      const s = session as H2Session
      const observed = new Proxy(s, {
        get(target, prop, receiver) {
          if (prop !== 'request') {
            const value: unknown = Reflect.get(target, prop, receiver)
            return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value
          }
          return (headers: Record<string, unknown>) => {
            const stream = target.request(headers)
            const id = headers['apns-id']
            stream.once('response', (h: Record<string, unknown>) => {
              const value = h['retry-after']
              if (typeof id === 'string' && typeof value === 'string') seen.set(id, value)
            })
            return stream
          }
        }
      })
      return original.call(this, observed, ...rest)
    }
  }

  async send(registration: Registration, notice: Notice): Promise<SendOutcome> {
    const topic = registration.topic ?? this.options.defaultTopic
    if (!topic) return { ok: false, reason: 'MissingTopic', dead: false, retryable: false }
    const request = apnsRequest(notice)
    const n = new apn.Notification()
    const id = randomUUID()
    n.id = id
    n.topic = topic
    n.pushType = 'alert'
    n.priority = request.priority
    n.expiry = request.expiry
    if (request.collapseId) n.collapseId = request.collapseId
    n.rawPayload = request.payload
    try {
      const result = await this.provider(registration.environment ?? 'production').send(n, registration.token)
      if (result.sent.length) return { ok: true, id, status: 200 }
      const failure = result.failed[0]
      const reason = failure?.response?.reason ?? (failure?.error ? `error: ${failure.error.message}` : 'unknown')
      const status = typeof failure?.status === 'number' ? failure.status : Number(failure?.status) || undefined
      const retryAfterMs = parseRetryAfter(this.retryAfter.get(id))
      const dead = status === 410 || DEAD_REASONS.has(reason)
      // No status: a connection problem or a timeout, worth another try. ExpiredProviderToken: the
      // library has made a new provider token; the next try uses it.
      const retryable = !dead && (status === undefined || RETRY_STATUSES.has(status) || reason.includes('ExpiredProviderToken'))
      return { ok: false, reason, status, dead, retryable, retryAfterMs }
    } catch (err) {
      return { ok: false, reason: `error: ${(err as Error).message}`, dead: false, retryable: true }
    } finally {
      this.retryAfter.delete(id)
    }
  }

  async close(): Promise<void> {
    // shutdown() can hang after a session error (NOTES.md): bounded.
    await Promise.all(
      [...this.providers.values()].map((p) =>
        Promise.race([
          new Promise<void>((resolve) => void p.shutdown(() => resolve()).catch(() => resolve())),
          new Promise<void>((resolve) => setTimeout(resolve, 2000).unref())
        ])
      )
    )
    this.providers.clear()
  }
}
