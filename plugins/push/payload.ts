// What a push says, and how each provider is told it. Pure functions (unit-tested).
//
// Privacy: a preview (sender and text) is shown only to a device that asked for previews, and never
// for an end-to-end encrypted message; otherwise the text is generic ("New message") and the push
// carries only ids: the app's notification service extension (iOS, mutable-content) or the app
// itself (Android, data message) fetches and decrypts the message over MQTT.
import { createHash } from 'node:crypto'
import type { ConversationRef } from '../../schemas/protocol.js'
import type { JobMessage, Notice, PushJob, Registration } from './types.js'

export interface Texts {
  /** One new message (generic). */
  one: string
  /** Several new messages; `{count}` is replaced. */
  many: string
  /** A media message without caption, in a preview. */
  media: string
  /** The admin test notification. */
  test: string
}

export const DEFAULT_TEXTS: Record<string, Texts> = {
  en: { one: 'New message', many: '{count} new messages', media: 'Media', test: 'Test notification from Parley' },
  de: { one: 'Neue Nachricht', many: '{count} neue Nachrichten', media: 'Medien', test: 'Testbenachrichtigung von Parley' },
  fr: { one: 'Nouveau message', many: '{count} nouveaux messages', media: 'Média', test: 'Notification de test de Parley' },
  es: { one: 'Mensaje nuevo', many: '{count} mensajes nuevos', media: 'Multimedia', test: 'Notificación de prueba de Parley' }
}

/** The texts for a locale: the exact tag, then its language, then the default locale, then English. */
export function textsFor(locale: string | undefined, table: Record<string, Texts>, fallback: string): Texts {
  const tags = locale ? [locale, locale.toLowerCase(), locale.split(/[-_]/)[0]!.toLowerCase()] : []
  for (const tag of [...tags, fallback, 'en']) {
    const t = table[tag] ?? DEFAULT_TEXTS[tag]
    if (t) return t
  }
  return DEFAULT_TEXTS.en!
}

/** The conversation as the reader sees it (a dm names the other user). */
export function conversationRef(key: string, reader: string): ConversationRef {
  if (key.startsWith('g:')) return { kind: 'group', id: key.slice(2) }
  const [, a, b] = key.split(':') as [string, string, string]
  return { kind: 'dm', id: a === reader ? b : a }
}

/**
 * A stable, opaque id per reader and conversation: APNs thread-id and apns-collapse-id (at most 64
 * bytes), FCM collapse key. Hashed so that the lock screen's grouping key names nobody.
 */
export function threadIdFor(user: string, conversation: string): string {
  return createHash('sha256').update(`${user}\u0000${conversation}`).digest('base64url').slice(0, 32)
}

/** The preview a device may see of a message, or undefined (no previews, or end-to-end encrypted). */
export function previewOf(message: { type: string; body: string; e2e: boolean }, registration: Pick<Registration, 'previews'>, maxChars: number, texts: Texts): string | undefined {
  if (!registration.previews || message.e2e) return undefined
  const text = message.body.replace(/\s+/g, ' ').trim()
  if (message.type === 'media' && !text) return texts.media
  if (!text) return undefined
  return text.length > maxChars ? `${text.slice(0, Math.max(1, maxChars - 1))}…` : text
}

export interface NoticeOptions {
  texts: Texts
  ttlSeconds: number
  /** The group's name, for a preview title (undefined: the group id). */
  groupName?: string | undefined
}

/** The notice for a pending push of new messages. */
export function messageNotice(job: PushJob, registration: Registration, badge: number, o: NoticeOptions): Notice {
  const conversation = conversationRef(job.conversation, job.user)
  const last: JobMessage = job.last
  const preview = registration.previews && !last.e2e ? last.preview : undefined
  const generic = job.count > 1 ? o.texts.many.replace('{count}', String(job.count)) : o.texts.one
  let title: string | undefined
  let body = generic
  if (preview !== undefined) {
    title = conversation.kind === 'dm' ? last.from : (o.groupName ?? conversation.id)
    body = conversation.kind === 'dm' ? preview : `${last.from}: ${preview}`
    if (job.count > 1) title = `${title} (${job.count})`
  }
  return {
    type: 'message',
    conversation,
    threadId: threadIdFor(job.user, job.conversation),
    messageId: last.id,
    seq: last.seq,
    count: job.count,
    badge,
    title,
    body,
    generic: preview === undefined,
    ttlSeconds: o.ttlSeconds
  }
}

/** A silent badge update (a muted conversation, when configured so). */
export function badgeNotice(job: PushJob, badge: number, ttlSeconds: number): Notice {
  return { type: 'badge', conversation: conversationRef(job.conversation, job.user), count: job.count, badge, body: '', generic: true, ttlSeconds }
}

export function testNotice(texts: Texts): Notice {
  return { type: 'test', count: 0, badge: 0, body: texts.test, generic: false, ttlSeconds: 300 }
}

/** The APNs request: headers the library sets from Notification fields, and the JSON body. */
export interface ApnsRequest {
  priority: 5 | 10
  collapseId?: string | undefined
  /** Epoch seconds after which APNs stops trying. */
  expiry: number
  payload: { aps: Record<string, unknown>; parley: Record<string, unknown> }
}

export function apnsRequest(notice: Notice, now = Date.now()): ApnsRequest {
  const expiry = Math.floor(now / 1000) + notice.ttlSeconds
  const parley: Record<string, unknown> = { type: notice.type }
  if (notice.conversation) parley.conversation = notice.conversation
  if (notice.messageId) parley.id = notice.messageId
  if (notice.seq !== undefined) parley.seq = notice.seq
  if (notice.count) parley.count = notice.count
  if (notice.type === 'badge') {
    // Badge only: no alert, no sound; low priority (delivered when the device is awake anyway).
    return { priority: 5, expiry, payload: { aps: { badge: notice.badge }, parley } }
  }
  const aps: Record<string, unknown> = {
    alert: notice.title !== undefined ? { title: notice.title, body: notice.body } : { body: notice.body },
    sound: 'default'
  }
  if (notice.type === 'message') {
    aps.badge = notice.badge
    aps['thread-id'] = notice.threadId
    // The notification service extension may replace the generic text (fetch and decrypt by id).
    if (notice.generic) aps['mutable-content'] = 1
  }
  return { priority: 10, collapseId: notice.threadId, expiry, payload: { aps, parley } }
}

/** The FCM message (firebase-admin `Message`, minus the token): a data message, high priority. */
export interface FcmRequest {
  data: Record<string, string>
  android: { priority: 'high' | 'normal'; ttl: number; collapseKey?: string | undefined }
}

export function fcmRequest(notice: Notice): FcmRequest {
  const data: Record<string, string> = { type: notice.type, badge: String(notice.badge) }
  if (notice.conversation) {
    data.conversationKind = notice.conversation.kind
    data.conversationId = notice.conversation.id
  }
  if (notice.messageId) data.messageId = notice.messageId
  if (notice.seq !== undefined) data.seq = String(notice.seq)
  if (notice.count) data.count = String(notice.count)
  if (notice.type !== 'badge') {
    data.body = notice.body
    data.generic = notice.generic ? '1' : '0'
    if (notice.title !== undefined) data.title = notice.title
  }
  return {
    data,
    android: {
      priority: notice.type === 'badge' ? 'normal' : 'high',
      ttl: notice.ttlSeconds * 1000,
      ...(notice.threadId ? { collapseKey: notice.threadId } : {})
    }
  }
}
