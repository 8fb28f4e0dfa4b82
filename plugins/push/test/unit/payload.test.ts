// Unit tests: what a push says (privacy of previews), back-off, the rate limit, Retry-After parsing.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { retryDelay } from '../../backoff.js'
import { apnsRequest, badgeNotice, fcmRequest, messageNotice, previewOf, testNotice, textsFor, threadIdFor, DEFAULT_TEXTS } from '../../payload.js'
import { parseRetryAfter } from '../../providers/apns.js'
import { MemoryRateLimiter, gcra } from '../../rate-limit.js'
import type { PushJob, Registration } from '../../types.js'

const en = DEFAULT_TEXTS.en!
const reg = (previews: boolean, locale?: string): Registration => ({ user: 'bob', device: 'phone', provider: 'apns', token: 'aa', previews, locale, updatedAt: 0 })
const job = (over: Partial<PushJob> = {}, last: Partial<PushJob['last']> = {}): PushJob => ({
  user: 'bob',
  device: 'phone',
  conversation: 'dm:alice:bob',
  count: 1,
  firstTs: 0,
  attempts: 0,
  last: { id: '0abcdefgh0123456789abcdef', seq: 7, ts: 0, from: 'alice', type: 'text', e2e: false, preview: 'hello', ...last },
  ...over
})

describe('push payloads', () => {
  it('previews only for devices that ask, never for end-to-end encrypted messages', () => {
    assert.equal(previewOf({ type: 'text', body: 'hi  there\n', e2e: false }, reg(true), 100, en), 'hi there')
    assert.equal(previewOf({ type: 'text', body: 'hi', e2e: false }, reg(false), 100, en), undefined)
    assert.equal(previewOf({ type: 'text', body: 'cipher', e2e: true }, reg(true), 100, en), undefined)
    assert.equal(previewOf({ type: 'media', body: '', e2e: false }, reg(true), 100, en), 'Media')
    assert.equal(previewOf({ type: 'text', body: 'x'.repeat(50), e2e: false }, reg(true), 10, en), `${'x'.repeat(9)}…`)
  })

  it('says "New message" with the id when there is no preview, and the sender and text when there is', () => {
    const generic = messageNotice(job(), reg(false), 3, { texts: en, ttlSeconds: 60 })
    assert.equal(generic.body, 'New message')
    assert.equal(generic.title, undefined)
    assert.equal(generic.generic, true)
    assert.deepEqual(generic.conversation, { kind: 'dm', id: 'alice' })
    const apns = apnsRequest(generic, 1_000_000)
    assert.deepEqual(apns.payload.aps, { alert: { body: 'New message' }, sound: 'default', badge: 3, 'thread-id': generic.threadId, 'mutable-content': 1 })
    assert.deepEqual(apns.payload.parley, { type: 'message', conversation: { kind: 'dm', id: 'alice' }, id: '0abcdefgh0123456789abcdef', seq: 7, count: 1 })
    assert.equal(apns.priority, 10)
    assert.equal(apns.collapseId, generic.threadId)
    assert.equal(apns.expiry, 1000 + 60)

    const preview = messageNotice(job({ count: 2 }), reg(true), 2, { texts: en, ttlSeconds: 60 })
    assert.deepEqual(apnsRequest(preview).payload.aps.alert, { title: 'alice (2)', body: 'hello' })
    assert.equal(apnsRequest(preview).payload.aps['mutable-content'], undefined)
    const group = messageNotice(job({ conversation: 'g:g1' }), reg(true), 1, { texts: en, ttlSeconds: 60, groupName: 'Climbers' })
    assert.deepEqual(apnsRequest(group).payload.aps.alert, { title: 'Climbers', body: 'alice: hello' })
    const e2e = messageNotice(job({}, { e2e: true }), reg(true), 1, { texts: en, ttlSeconds: 60 })
    assert.equal(e2e.generic, true, 'e2e: generic even when a preview slipped into the job')
    const many = messageNotice(job({ count: 5 }), reg(false), 5, { texts: textsFor('de-AT', {}, 'en'), ttlSeconds: 60 })
    assert.equal(many.body, '5 neue Nachrichten')
  })

  it('makes FCM data messages of strings, high priority, collapsed per conversation', () => {
    const notice = messageNotice(job(), reg(false), 4, { texts: en, ttlSeconds: 120 })
    const fcm = fcmRequest(notice)
    assert.ok(Object.values(fcm.data).every((v) => typeof v === 'string'))
    assert.deepEqual(fcm.data, {
      type: 'message',
      badge: '4',
      conversationKind: 'dm',
      conversationId: 'alice',
      messageId: '0abcdefgh0123456789abcdef',
      seq: '7',
      count: '1',
      body: 'New message',
      generic: '1'
    })
    assert.deepEqual(fcm.android, { priority: 'high', ttl: 120_000, collapseKey: notice.threadId })
    assert.equal(fcmRequest(testNotice(en)).data.body, 'Test notification from Parley')
  })

  it('sends a muted conversation\'s badge without alert or sound, at low priority', () => {
    const badge = badgeNotice(job({ count: 2 }), 9, 60)
    assert.deepEqual(apnsRequest(badge).payload.aps, { badge: 9 })
    assert.equal(apnsRequest(badge).priority, 5)
    assert.equal(apnsRequest(badge).collapseId, undefined)
    assert.equal(fcmRequest(badge).android.priority, 'normal')
    assert.equal(fcmRequest(badge).data.body, undefined)
  })

  it('picks texts by locale: exact, language, configured default, English', () => {
    const table = { 'pt-BR': { one: 'Nova mensagem', many: '{count} novas', media: 'Mídia', test: 'Teste' } }
    assert.equal(textsFor('pt-BR', table, 'en').one, 'Nova mensagem')
    assert.equal(textsFor('fr-CA', table, 'en').one, 'Nouveau message')
    assert.equal(textsFor('xx', table, 'de').one, 'Neue Nachricht')
    assert.equal(textsFor(undefined, table, 'zz').one, 'New message')
  })

  it('names threads opaquely and stably, within APNs\' 64-byte collapse id', () => {
    const t = threadIdFor('bob', 'dm:alice:bob')
    assert.equal(t, threadIdFor('bob', 'dm:alice:bob'))
    assert.notEqual(t, threadIdFor('alice', 'dm:alice:bob'))
    assert.ok(Buffer.byteLength(t) <= 64)
    assert.ok(!t.includes('alice'))
  })
})

describe('push timing rules', () => {
  it('backs off exponentially with jitter, and never retries before Retry-After', () => {
    const b = { baseMs: 1000, maxMs: 60_000 }
    assert.equal(retryDelay(1, undefined, b, () => 0), 500)
    assert.equal(retryDelay(1, undefined, b, () => 1), 1000)
    assert.equal(retryDelay(4, undefined, b, () => 1), 8000)
    assert.equal(retryDelay(20, undefined, b, () => 1), 60_000)
    assert.equal(retryDelay(1, 7000, b, () => 0), 7000)
    assert.ok(retryDelay(1, 7000, b, () => 1) <= 7700)
    assert.equal(parseRetryAfter('120'), 120_000)
    assert.equal(parseRetryAfter(new Date(61_000).toUTCString(), 1000), 60_000)
    assert.equal(parseRetryAfter('soon'), undefined)
    assert.equal(parseRetryAfter(undefined), undefined)
  })

  it('limits pushes per device: a burst, then one per interval', async () => {
    const limit = { perMinute: 60, burst: 3 }
    let tat: number | undefined
    for (let i = 0; i < 3; i++) {
      const step = gcra(tat, 0, limit)
      assert.equal(step.allowed, true)
      if (step.allowed) tat = step.tat
    }
    assert.deepEqual(gcra(tat, 0, limit), { allowed: false, retryAt: 1000 })
    assert.equal(gcra(tat, 1000, limit).allowed, true)
    const limiter = new MemoryRateLimiter(limit)
    assert.equal(await limiter.take('bob:phone', 0), 0)
    assert.equal(await limiter.take('bob:phone', 0), 0)
    assert.equal(await limiter.take('bob:phone', 0), 0)
    assert.equal(await limiter.take('bob:phone', 0), 1000)
    assert.equal(await limiter.take('bob:tablet', 0), 0, 'per device')
  })
})
