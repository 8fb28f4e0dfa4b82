// The shapes the push plugin's parts share: a device's registration, a pending push (a job), what
// to tell the device (a notice) and what a provider answered (an outcome).
import type { ConversationRef } from '../../schemas/protocol.js'

export type ProviderName = 'apns' | 'fcm'

/** One device's push registration (per user and device: the client id `<user>:<device>`). */
export interface Registration {
  user: string
  device: string
  provider: ProviderName
  /** APNs: the hex device token; FCM: the registration token. */
  token: string
  /** APNs: the app's bundle id (apns-topic). */
  topic?: string | undefined
  /** APNs: which gateway issued the token. */
  environment?: 'production' | 'sandbox' | undefined
  /** BCP 47 tag (e.g. `de-CH`) for the generic texts; undefined: the configured default. */
  locale?: string | undefined
  /** Show the sender and the text on the lock screen (never for end-to-end encrypted messages). */
  previews: boolean
  updatedAt: number
}

/** What the provider answered the last push to a device (admin: parley admin push tokens). */
export interface PushResult {
  /** Epoch ms. */
  at: number
  ok: boolean
  /** The provider that handled it: apns, fcm, or log (no credentials configured). */
  via: ProviderName | 'log'
  type: 'message' | 'badge' | 'test'
  status?: number | undefined
  reason?: string | undefined
}

/** A registration as operators see it: when it was created and how the last push went. */
export interface DeviceStatus extends Registration {
  /** First registration of this device; undefined for registrations older than this field. */
  createdAt?: number | undefined
  /** The last push to the token it holds now; undefined until one was sent. */
  lastResult?: PushResult | undefined
}

/** The message a pending push is about (the newest of its conversation). */
export interface JobMessage {
  id: string
  seq: number
  ts: number
  from: string
  type: string
  e2e: boolean
  /** Only when the device wants previews and the message is not end-to-end encrypted. */
  preview?: string | undefined
}

/** A pending push: one per device and conversation; later messages coalesce into it. */
export interface PushJob {
  user: string
  device: string
  /** The stored conversation key (`dm:a:b` or `g:id`). */
  conversation: string
  /** Messages coalesced into this push. */
  count: number
  /** When the oldest of them was stored (epoch ms). */
  firstTs: number
  last: JobMessage
  /** Failed sends so far. */
  attempts: number
}

/** A job a worker holds until it acks or retries it (or its visibility runs out). */
export interface ClaimedJob extends PushJob {
  claim: string
}

/** What a device is told, provider-neutral; payload.ts turns it into APNs / FCM requests. */
export interface Notice {
  type: 'message' | 'badge' | 'test'
  conversation?: ConversationRef | undefined
  /** Stable per conversation: APNs thread-id and apns-collapse-id, FCM collapse key. */
  threadId?: string | undefined
  messageId?: string | undefined
  seq?: number | undefined
  count: number
  badge: number
  title?: string | undefined
  body: string
  /** True when the text is generic (previews off, or end-to-end encrypted): mutable-content. */
  generic: boolean
  /** Seconds the provider keeps trying to reach the device. */
  ttlSeconds: number
}

export type SendOutcome =
  | { ok: true; id?: string | undefined; status?: number | undefined }
  | {
      ok: false
      /** A short, stable reason: the provider's (Unregistered, BadDeviceToken, UNREGISTERED, ...) or ours. */
      reason: string
      status?: number | undefined
      /** The token will never work again: remove the registration. */
      dead: boolean
      /** Worth trying again later (throttled, provider unavailable, network). */
      retryable: boolean
      /** The provider's Retry-After, when it sent one. */
      retryAfterMs?: number | undefined
    }

export interface PushProvider {
  readonly name: ProviderName | 'log'
  send(registration: Registration, notice: Notice): Promise<SendOutcome>
  close(): Promise<void>
}
