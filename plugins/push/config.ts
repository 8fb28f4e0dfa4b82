// The push plugin's settings (the `config` of its `plugins` entry). docs/push.md explains them.
import { z } from 'zod'

const TextsSchema = z
  .object({
    one: z.string().min(1).max(200),
    many: z.string().min(1).max(200).describe('{count} is replaced'),
    media: z.string().min(1).max(200),
    test: z.string().min(1).max(200)
  })
  .strict()

/** host:port */
const HostPort = z
  .string()
  .regex(/^[A-Za-z0-9.-]+:\d{1,5}$/, { error: 'expected host:port' })
  .transform((s) => {
    const i = s.lastIndexOf(':')
    return { host: s.slice(0, i), port: Number(s.slice(i + 1)) }
  })

export const PushConfig = z
  .object({
    store: z.enum(['auto', 'embedded', 'mongo']).default('auto').describe('Device registry: auto = MongoDB when mongo.url is set, else embedded'),
    queue: z.enum(['auto', 'embedded', 'redis']).default('auto').describe('Pending pushes: auto = Redis when redis.url is set, else embedded'),
    graceMs: z.number().int().min(0).max(600_000).default(3000).describe('How long after a message an offline device is pushed (a reconnect meanwhile cancels)'),
    previewsByDefault: z.boolean().default(false).describe('Previews for devices that do not choose (off: only generic texts leave the server)'),
    previewChars: z.number().int().min(10).max(1000).default(100),
    muted: z.enum(['nothing', 'badge']).default('nothing').describe('What a muted conversation sends: nothing, or a silent badge update'),
    locale: z.string().min(2).max(35).default('en').describe('Texts for devices without a locale'),
    texts: z.record(z.string(), TextsSchema).default({}).describe('Generic texts by locale (adds to or replaces the built-in en, de, fr, es)'),
    ttlSeconds: z.number().int().min(0).max(28 * 86_400).default(86_400).describe('How long APNs / FCM keep trying to reach the device'),
    worker: z
      .object({
        pollMs: z.number().int().min(10).max(60_000).default(250),
        batch: z.number().int().min(1).max(1000).default(64),
        concurrency: z.number().int().min(1).max(1000).default(32),
        visibilityMs: z.number().int().min(500).max(600_000).default(30_000).describe('A claimed push is retried by another node after this if its node died')
      })
      .strict()
      .prefault({}),
    retry: z
      .object({
        maxAttempts: z.number().int().min(1).max(100).default(8),
        baseMs: z.number().int().min(1).max(600_000).default(1000),
        maxMs: z.number().int().min(1).max(86_400_000).default(300_000)
      })
      .strict()
      .prefault({}),
    rateLimit: z
      .object({
        perMinute: z.number().min(0.01).max(100_000).default(30),
        burst: z.number().int().min(1).max(10_000).default(10)
      })
      .strict()
      .prefault({}),
    apns: z
      .object({
        keyFile: z.string().min(1).describe('The .p8 key (token-based authentication)'),
        keyId: z.string().min(1),
        teamId: z.string().min(1),
        topic: z.string().min(1).optional().describe('Bundle id for registrations that name none'),
        address: z.string().min(1).optional().describe('Gateway host instead of api(.sandbox).push.apple.com (tests, proxies)'),
        port: z.number().int().min(1).max(65535).optional(),
        caFile: z.string().min(1).optional().describe('CA bundle to trust for that gateway'),
        requestTimeoutMs: z.number().int().min(100).max(120_000).default(10_000)
      })
      .strict()
      .optional(),
    fcm: z
      .object({
        serviceAccountFile: z.string().min(1).describe('Service-account JSON file of the Firebase project'),
        connectTo: HostPort.optional().describe("Dial Google's hosts at host:port instead (tests, proxies)"),
        caFile: z.string().min(1).optional()
      })
      .strict()
      .optional()
  })
  .strict()

export type PushConfig = z.output<typeof PushConfig>
