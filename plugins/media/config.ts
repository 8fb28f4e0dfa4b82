// Configuration of the media plugin, and how a MIME type maps to a kind (image, video, audio, file).
import { z } from 'zod'

export const MEDIA_KINDS = ['image', 'video', 'audio', 'file'] as const
export type MediaKind = (typeof MEDIA_KINDS)[number]

const MIB = 1024 * 1024

/** `type/subtype`, `type/*` (a whole family) or `*\/*` (anything). Lower case. */
const MimePattern = z
  .string()
  .regex(/^(\*\/\*|[a-z0-9][a-z0-9.+-]*\/(\*|[a-z0-9][a-z0-9.+-]*))$/, { error: 'expected a lower-case MIME type, type/* or */*' })

const kind = (maxBytes: number, types: string[]) =>
  z
    .object({
      maxBytes: z.number().int().positive().max(5 * 1024 * MIB).default(maxBytes).describe('Largest object of this kind, bytes'),
      types: z.array(MimePattern).default(types).describe('MIME types of this kind; type/* allows a family; [] disables the kind')
    })
    .strict()
    .prefault({})

export const MediaConfig = z
  .object({
    backend: z.enum(['auto', 'embedded', 's3']).default('auto').describe('auto: S3/MinIO when s3.endpoint is set, else files in <dataDir>/media'),
    store: z.enum(['auto', 'embedded', 'mongo']).default('auto').describe('Where upload records live: auto (MongoDB when mongo.url is set), embedded (SQLite media.db), mongo'),
    publicUrl: z
      .url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' })
      .default('http://localhost:9090')
      .describe('Embedded backend: the base URL devices reach the operations listener at (the /plugins/media/ routes)'),
    uploadUrlTtlSeconds: z.number().int().min(10).max(3600).default(600).describe('Lifetime of an upload URL'),
    downloadUrlTtlSeconds: z.number().int().min(1).max(7 * 24 * 3600).default(300).describe('Longest lifetime of a download URL'),
    orphanAfterMs: z
      .number()
      .int()
      .min(60_000)
      .default(24 * 3_600_000)
      .describe('An upload no message references is deleted this long after its URL was handed out'),
    retentionDays: z.number().int().min(0).default(0).describe('Media older than this is deleted (0: kept until its message is deleted)'),
    sweepIntervalMs: z.number().int().min(1000).max(86_400_000).default(60_000).describe('How often orphans, expired media and stray objects are looked for'),
    maxPendingPerUser: z.number().int().positive().default(50).describe('Uploads a user may hold that no message references yet'),
    kinds: z
      .object({
        image: kind(16 * MIB, ['image/jpeg', 'image/png', 'image/gif', 'image/webp', 'image/heic', 'image/heif', 'image/avif']),
        video: kind(100 * MIB, ['video/mp4', 'video/quicktime', 'video/webm', 'video/3gpp']),
        audio: kind(16 * MIB, ['audio/mpeg', 'audio/mp4', 'audio/aac', 'audio/ogg', 'audio/opus', 'audio/webm', 'audio/wav', 'audio/x-m4a', 'audio/amr']),
        file: kind(100 * MIB, ['*/*'])
      })
      .strict()
      .prefault({})
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.orphanAfterMs <= c.uploadUrlTtlSeconds * 1000) {
      ctx.addIssue({ code: 'custom', path: ['orphanAfterMs'], message: 'must be longer than uploadUrlTtlSeconds: an upload may still arrive until its URL expires' })
    }
  })
export type MediaConfig = z.output<typeof MediaConfig>

const matches = (pattern: string, mime: string) =>
  pattern === '*/*' || pattern === mime || (pattern.endsWith('/*') && mime.startsWith(pattern.slice(0, -1)))

/** The first kind (image, video, audio, file) that lists the type, or undefined: not allowed. */
export function kindOf(kinds: MediaConfig['kinds'], mime: string): MediaKind | undefined {
  const m = mime.toLowerCase()
  return MEDIA_KINDS.find((k) => kinds[k].types.some((p) => matches(p, m)))
}
