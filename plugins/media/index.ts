// media: images, video, audio and files, uploaded and downloaded by devices straight to and from
// the object store through short-lived URLs, scoped to a conversation. Media never travels
// through MQTT.
//   media.upload   (RPC) a device names the conversation, the type and the exact size (and, if it
//                  likes, the SHA-256); the server checks the device's user may write there and the
//                  type and size are allowed for their kind, records the upload, and answers with a
//                  media id and a presigned POST the store itself enforces (size, type, checksum).
//   media message  the messages plugin runs our send check before storing it: the id must be an
//                  upload of this conversation by this user, uploaded, matching the declared type
//                  and size, and not already sent in another message.
//   media.download (RPC) a short-lived GET URL, for members of the conversation only.
//   lifecycle      uploads never sent are deleted after orphanAfterMs; media older than
//                  retentionDays is deleted; deleting a message for everyone deletes its object.
// Backends: S3/MinIO (s3-backend.ts) when s3.endpoint is set, else files in <dataDir>/media behind
// HMAC-signed URLs on the operations listener (local-backend.ts). Records: store.ts.
import { join } from 'node:path'
import { z } from 'zod'
import { definePlugin, type PublishRejection } from '../../broker/plugin-api.js'
import { ConversationRef, MediaRef } from '../../schemas/protocol.js'
import { dmKey, groupKey } from '../messages/store.js'
import { RpcError, type Device } from '../protocol/index.js'
import { chooseStore, initInBackground } from '../shared/stores.js'
import type { MediaBackend } from './backend.js'
import { MediaConfig, kindOf } from './config.js'
import { isMediaId, newMediaId } from './ids.js'
import { LocalMediaBackend, loadSecret } from './local-backend.js'
import { S3MediaBackend } from './s3-backend.js'
import { MongoMediaStore, SqliteMediaStore, type MediaStore } from './store.js'

export { MediaConfig } from './config.js'

const UploadParams = z
  .object({
    conversation: ConversationRef,
    mime: MediaRef.shape.mime,
    size: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).describe('Exact size of the file, bytes'),
    sha256: z
      .string()
      .regex(/^[0-9a-fA-F]{64}$/, { error: 'expected 64 hex digits' })
      .optional()
      .describe('SHA-256 of the file: the store refuses other content')
  })
  .strict()

const DownloadParams = z
  .object({
    id: MediaRef.shape.id,
    expiresInSeconds: z.number().int().min(1).optional().describe('Shorter than the configured lifetime, if wanted')
  })
  .strict()

export interface SweepReport {
  /** Uploads no message referenced in time. */
  orphans: number
  /** Media past the retention period. */
  expired: number
  /** Objects in the store without a record. */
  strays: number
}

export interface MediaApi {
  readonly backend: MediaBackend
  /** One clean-up pass now, as if the clock read `now` (tests, operations). */
  sweep(now?: number): Promise<SweepReport>
}

declare module '../../broker/plugin-api.js' {
  interface PluginApis {
    media: MediaApi
  }
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!)
    })
  )
}

const SWEEP_BATCH = 500

export default definePlugin({
  name: 'media',
  dependencies: ['protocol', 'messages'],
  configSchema: MediaConfig,
  register(ctx): MediaApi {
    const config = ctx.config
    const protocol = ctx.dependency('protocol')
    const messages = ctx.dependency('messages')

    if (config.backend === 's3' && !ctx.backends.s3) throw new Error('media: backend is s3 but s3.endpoint is not set')
    let backend: MediaBackend
    if (config.backend !== 'embedded' && ctx.backends.s3) {
      // Device URLs are signed for s3.publicEndpoint when set (the devices' address of the store).
      const { presignClient } = ctx.backends.s3
      backend = new S3MediaBackend(ctx.backends.s3.client, ctx.backends.s3.bucket, { presigner: presignClient })
    } else {
      const dir = join(ctx.dataDir, 'media')
      const local = new LocalMediaBackend({ dir, secret: loadSecret(join(dir, 'url-secret')), publicUrl: config.publicUrl })
      for (const route of local.routes()) ctx.route(route)
      backend = local
    }

    const records = chooseStore<MediaStore>(ctx, config.store, {
      mongo: (db) => new MongoMediaStore(db),
      embedded: (file) => new SqliteMediaStore(file),
      file: 'media.db'
    })
    const store = initInBackground(ctx, records)

    const uploads = ctx.metrics.counter({ name: 'media_uploads_total', help: 'Upload URLs handed out, by kind', labelNames: ['kind'] })
    const downloads = ctx.metrics.counter({ name: 'media_downloads_total', help: 'Download URLs handed out' })
    const refusals = ctx.metrics.counter({
      name: 'media_refusals_total',
      help: 'Upload requests and media messages refused, by reason',
      labelNames: ['reason']
    })
    const removed = ctx.metrics.counter({
      name: 'media_objects_removed_total',
      help: 'Media objects deleted, by reason (orphan, retention, deleted, stray)',
      labelNames: ['reason']
    })

    /** The conversation key a device may write to, or an RpcError. */
    const writableKey = async (device: Device, c: ConversationRef): Promise<string> => {
      if (c.kind === 'dm') return dmKey(device.userId, c.id)
      if (!(await protocol.isMember(c.id, device.userId))) throw new RpcError('not_a_member', `you are not a member of group ${c.id}`)
      return groupKey(c.id)
    }

    const mayRead = async (user: string, conversation: string): Promise<boolean> => {
      if (conversation.startsWith('g:')) return protocol.isMember(conversation.slice(2), user)
      const [, a, b] = conversation.split(':')
      return user === a || user === b
    }

    const refuseRpc = (reason: string, code: ConstructorParameters<typeof RpcError>[0], message: string): never => {
      refusals.inc({ reason })
      throw new RpcError(code, message)
    }

    protocol.registerMethod('media.upload', {
      params: UploadParams,
      handler: async (device, p) => {
        const conversation = await writableKey(device, p.conversation)
        const mime = p.mime.toLowerCase()
        const kind = kindOf(config.kinds, mime)
        if (!kind) return refuseRpc('type', 'invalid_params', `media of type ${mime} is not accepted`)
        const { maxBytes } = config.kinds[kind]
        if (p.size > maxBytes) return refuseRpc('size', 'payload_too_large', `${kind} files are limited to ${maxBytes} bytes (asked for ${p.size})`)
        const s = await store()
        const now = Date.now()
        if ((await s.pending(device.userId, now - config.orphanAfterMs)) >= config.maxPendingPerUser) {
          return refuseRpc('pending', 'rate_limited', `at most ${config.maxPendingPerUser} uploads may wait to be sent: send or abandon some first`)
        }
        const id = newMediaId(conversation)
        const sha256 = p.sha256?.toLowerCase()
        const expiresAt = now + config.uploadUrlTtlSeconds * 1000
        // The record comes first: no object can be uploaded without one (the clean-up relies on it).
        await s.create({ id, conversation, uploader: device.userId, kind, mime, size: p.size, sha256, createdAt: now })
        const ticket = await backend.presignUpload({ id, mime, size: p.size, sha256, expiresAt })
        uploads.inc({ kind })
        return { id, kind, upload: { method: ticket.method, url: ticket.url, fields: ticket.fields, fileField: ticket.fileField }, expiresAt }
      }
    })

    protocol.registerMethod('media.download', {
      params: DownloadParams,
      handler: async (device, p) => {
        const record = isMediaId(p.id) ? await (await store()).get(p.id) : undefined
        if (!record) return refuseRpc('unknown', 'invalid_params', `no media ${p.id}`)
        if (!(await mayRead(device.userId, record.conversation))) {
          return record.conversation.startsWith('g:')
            ? refuseRpc('not_member', 'not_a_member', `you are not a member of the group of media ${p.id}`)
            : refuseRpc('not_member', 'forbidden', `media ${p.id} belongs to another conversation`)
        }
        // Until a message references it, an upload is its uploader's only.
        if (!record.ref && record.uploader !== device.userId) return refuseRpc('unknown', 'invalid_params', `no media ${p.id}`)
        const ttl = Math.min(p.expiresInSeconds ?? config.downloadUrlTtlSeconds, config.downloadUrlTtlSeconds)
        const expiresAt = Date.now() + ttl * 1000
        const url = await backend.presignDownload({ id: record.id, expiresAt, attachment: record.kind === 'file' })
        downloads.inc()
        return { url, expiresAt, mime: record.mime, size: record.size }
      }
    })

    const refuse = (reason: string, message: string, code: 'invalid_payload' | 'forbidden' = 'invalid_payload'): PublishRejection => {
      refusals.inc({ reason })
      return { reject: code, message }
    }

    // Runs before a new media send is stored (not for a retry of a stored one). A store or backend
    // failure throws: no PUBACK, and the device's retry is checked again.
    messages.addSendCheck(['media'], async (message, sender) => {
      if (!message.media) return undefined
      const m = message.media
      const s = await store()
      const record = isMediaId(m.id) ? await s.get(m.id) : undefined
      if (!record || record.conversation !== message.conversation) {
        return refuse('unknown', `media ${m.id} was not handed out for this conversation (ask media.upload)`)
      }
      if (record.uploader !== sender.userId) return refuse('uploader', `media ${m.id} was uploaded by another user`, 'forbidden')
      if (record.mime !== m.mime.toLowerCase() || record.size !== m.size) {
        return refuse('mismatch', `media ${m.id} was announced as ${record.mime}, ${record.size} bytes; the message says ${m.mime}, ${m.size} bytes`)
      }
      const object = await backend.stat(m.id)
      if (!object) return refuse('missing', `media ${m.id} has not been uploaded`)
      if (object.size !== record.size || object.contentType.toLowerCase() !== record.mime) {
        return refuse('mismatch', `the object uploaded as ${m.id} is ${object.contentType}, ${object.size} bytes, not ${record.mime}, ${record.size} bytes`)
      }
      if (!(await s.reference(m.id, message.cmid, Date.now()))) return refuse('reused', `media ${m.id} is already sent in another message`)
      return undefined
    })

    // Delete for everyone: the object goes too (only the one this message sent).
    messages.onDeleted(async (original) => {
      const id = original.media?.id
      if (!id || !isMediaId(id)) return
      const s = await store()
      const record = await s.get(id)
      if (!record || record.conversation !== original.conversation || record.uploader !== original.sender.user || record.ref?.cmid !== original.cmid) return
      // Record first: if the object's removal fails, the stray sweep finds it later.
      await s.remove([id])
      await backend.remove(id)
      removed.inc({ reason: 'deleted' })
    })

    let strayCursor: string | undefined
    const removeObjects = async (ids: readonly string[], reason: string): Promise<number> => {
      let n = 0
      await eachLimited(ids, 8, async (id) => {
        try {
          await backend.remove(id)
          removed.inc({ reason })
          n++
        } catch (err) {
          ctx.log.warn({ err, id }, 'media object not removed; the stray sweep retries')
        }
      })
      return n
    }

    const sweep = async (now = Date.now()): Promise<SweepReport> => {
      const s = await store()
      // Uploads never sent: the record goes first and only if still unreferenced, so a send that
      // references it at this moment either wins (the record stays) or is refused.
      const orphaned = await s.removeUnreferenced((await s.orphans(now - config.orphanAfterMs, SWEEP_BATCH)).map((r) => r.id))
      const orphans = await removeObjects(orphaned, 'orphan')
      let expired = 0
      if (config.retentionDays > 0) {
        const old = (await s.olderThan(now - config.retentionDays * 86_400_000, SWEEP_BATCH)).map((r) => r.id)
        await s.remove(old)
        expired = await removeObjects(old, 'retention')
      }
      // Objects without a record (a removal that failed, a record lost): one page per pass, resumed
      // where the last pass stopped, so a large bucket is walked a little at a time.
      const page = await backend.list({ startAfter: strayCursor, limit: 1000 })
      strayCursor = page.next
      const old = page.objects.filter((o) => o.lastModified < now - config.orphanAfterMs).map((o) => o.id)
      const known = await s.existing(old)
      const strays = await removeObjects(
        old.filter((id) => !known.has(id)),
        'stray'
      )
      return { orphans, expired, strays }
    }

    // One node sweeps per interval in a cluster (a Redis lock that expires by itself).
    const redis = ctx.backends.redis
    const lockKey = `${ctx.backends.redisKeyPrefix}media:sweep`
    let running: Promise<unknown> = Promise.resolve()
    const timer = setInterval(() => {
      running = (async () => {
        if (redis && (await redis.set(lockKey, ctx.brokerId, 'PX', config.sweepIntervalMs - 100, 'NX')) !== 'OK') return
        const report = await sweep()
        if (report.orphans + report.expired + report.strays > 0) ctx.log.info(report, 'media cleaned up')
      })().catch((err: unknown) => ctx.log.warn({ err }, 'media clean-up failed; retried at the next interval'))
    }, config.sweepIntervalMs)
    timer.unref()

    ctx.hook('shutdown', async () => {
      clearInterval(timer)
      await running
      await records.close()
    })

    return { backend, sweep }
  }
})
