// FCM through firebase-admin 13 (HTTP v1 API, service-account credentials).
// - One firebase App per plugin instance (a unique name), deleted at shutdown.
// - Data messages with high priority (the app decides what to show; see payload.ts).
// - Retry-After: firebase-admin retries 503 itself (honouring Retry-After, up to 4 times) but does
//   not expose the header of a 429. Node's `http.client.request.start` diagnostics channel shows
//   us each request firebase-admin makes; an AsyncLocalStorage marks the ones made for one send,
//   so its response's `retry-after` can be read without touching library internals.
// - `connectTo` dials FCM's and Google OAuth's hard-coded hosts at another address (tests, an
//   egress proxy), keeping the real host name for TLS (NOTES.md: the only public way).
import { AsyncLocalStorage } from 'node:async_hooks'
import diagnostics from 'node:diagnostics_channel'
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { ClientRequest, IncomingMessage } from 'node:http'
import https from 'node:https'
import type { Duplex } from 'node:stream'
import tls from 'node:tls'
import { cert, deleteApp, initializeApp, type App } from 'firebase-admin/app'
import { getMessaging, type Messaging } from 'firebase-admin/messaging'
import { fcmRequest } from '../payload.js'
import type { Notice, PushProvider, Registration, SendOutcome } from '../types.js'
import { parseRetryAfter } from './apns.js'

export interface FcmOptions {
  /** Path of the service-account JSON file (Firebase console, Project settings, Service accounts). */
  serviceAccountFile: string
  /** Dial Google's hosts here instead (host:port), trusting `caFile`: tests, an egress proxy. */
  connectTo?: { host: string; port: number } | undefined
  caFile?: string | undefined
}

/** firebase-admin error codes (after `messaging/`) and the FCM v1 error they stand for. */
const REASONS: Record<string, string> = {
  'registration-token-not-registered': 'UNREGISTERED',
  'invalid-registration-token': 'INVALID_REGISTRATION_TOKEN',
  'message-rate-exceeded': 'QUOTA_EXCEEDED',
  'device-message-rate-exceeded': 'QUOTA_EXCEEDED',
  'server-unavailable': 'UNAVAILABLE',
  'internal-error': 'INTERNAL',
  'invalid-argument': 'INVALID_ARGUMENT',
  'third-party-auth-error': 'THIRD_PARTY_AUTH_ERROR',
  'mismatched-credential': 'SENDER_ID_MISMATCH'
}
const DEAD = new Set(['UNREGISTERED', 'INVALID_REGISTRATION_TOKEN'])
const RETRYABLE = new Set(['QUOTA_EXCEEDED', 'UNAVAILABLE', 'INTERNAL', 'unknown-error', 'network-error', 'network-timeout', 'invalid-credential'])

// One subscription per process; each send marks its own requests through the AsyncLocalStorage.
const sending = new AsyncLocalStorage<{ retryAfter?: string }>()
let subscribed = false
function watchRetryAfter(): void {
  if (subscribed) return
  subscribed = true
  diagnostics.subscribe('http.client.request.start', (message) => {
    const store = sending.getStore()
    if (!store) return
    const { request } = message as { request: ClientRequest }
    request.once('response', (res: IncomingMessage) => {
      const value = res.headers['retry-after']
      if (typeof value === 'string') store.retryAfter = value
    })
  })
}

/** An https.Agent that connects to `to` whatever host a request names (TLS still checks that name). */
class DialAgent extends https.Agent {
  constructor(
    private readonly to: { host: string; port: number },
    options: https.AgentOptions
  ) {
    super(options)
  }

  override createConnection(options: tls.ConnectionOptions & { host?: string }, callback?: (err: Error | null, socket: Duplex) => void): Duplex {
    const socket = tls.connect({ ...options, host: this.to.host, port: this.to.port, servername: options.servername || options.host })
    if (callback) socket.once('secureConnect', () => callback(null, socket))
    return socket
  }
}

export class FcmProvider implements PushProvider {
  readonly name = 'fcm' as const
  /** The Firebase project of the service account (shown to operators). */
  readonly projectId: string | undefined
  private readonly app: App
  private readonly messaging: Messaging
  private readonly agent: https.Agent

  constructor(options: FcmOptions) {
    watchRetryAfter()
    try {
      const account = JSON.parse(readFileSync(options.serviceAccountFile, 'utf8')) as { project_id?: unknown }
      this.projectId = typeof account.project_id === 'string' ? account.project_id : undefined
    } catch {
      this.projectId = undefined // cert() below reports an unreadable file
    }
    const ca = options.caFile ? readFileSync(options.caFile, 'utf8') : undefined
    this.agent = options.connectTo
      ? new DialAgent(options.connectTo, { keepAlive: true, ...(ca ? { ca } : {}) })
      : new https.Agent({ keepAlive: true, ...(ca ? { ca } : {}) })
    // A path, not the parsed object: with an object, the agent is not used for the token (firebase-admin-node#2960).
    this.app = initializeApp(
      { credential: cert(options.serviceAccountFile, this.agent), httpAgent: this.agent },
      `parley-push-${randomBytes(6).toString('hex')}`
    )
    this.messaging = getMessaging(this.app)
    // sendEach* would use HTTP/2, whose `:scheme` some servers refuse (NOTES.md); send() is HTTP/1.1 anyway.
    this.messaging.enableLegacyHttpTransport()
  }

  async send(registration: Registration, notice: Notice): Promise<SendOutcome> {
    const request = fcmRequest(notice)
    const store: { retryAfter?: string } = {}
    try {
      const name = await sending.run(store, () => this.messaging.send({ token: registration.token, ...request }))
      return { ok: true, id: name }
    } catch (err) {
      const raw = (err as { code?: unknown }).code
      const code = typeof raw === 'string' ? raw : 'unknown-error'
      const short = code.replace(/^(messaging|app)\//, '')
      const reason = REASONS[short] ?? short
      const dead = DEAD.has(reason)
      return { ok: false, reason, dead, retryable: !dead && RETRYABLE.has(reason), retryAfterMs: parseRetryAfter(store.retryAfter) }
    }
  }

  async close(): Promise<void> {
    await deleteApp(this.app).catch(() => undefined)
    this.agent.destroy()
  }
}
