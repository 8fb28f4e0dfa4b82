// The single source of truth for every setting of a Parley node.
// Defaults are the embedded mode: no Redis, MongoDB or S3 needed.
// Values may come from a config file (typed) or from environment variables (strings),
// so scalar fields accept both forms and coerce.
import { z } from 'zod'

/** A boolean that also accepts the strings an environment variable can carry. */
const flag = z.union(
  [
    z.boolean(),
    z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes')
  ],
  { error: 'expected a boolean (true, false, 1, 0, yes or no)' }
)

const int = (min: number, max: number) =>
  z.coerce
    .number({ error: `expected an integer between ${min} and ${max}` })
    .int({ error: `expected an integer between ${min} and ${max}` })
    .min(min, { error: `expected an integer between ${min} and ${max}` })
    .max(max, { error: `expected an integer between ${min} and ${max}` })

const port = int(0, 65535)
const host = z.string().min(1, { error: 'expected a host name or IP address' })
const filePath = z.string().min(1, { error: 'expected a file path' })

/** The plugins a node runs when the configuration names none: device tokens, limits, the topic tree, groups, messages. */
export const DEFAULT_PLUGINS = ['auth-jwt', 'limits', 'protocol', 'groups', 'messages', 'presence', 'media', 'push'] as const

/** Marks a field whose value must never be printed or logged. */
export const secret = <T extends z.ZodType>(schema: T, description: string) =>
  schema.meta({ secret: true, description })

const tlsFiles = z
  .object({
    certFile: filePath.optional().describe('PEM certificate chain file'),
    keyFile: filePath.optional().describe('PEM private key file'),
    caFile: filePath.optional().describe('PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)'),
    passphrase: secret(z.string().optional(), 'Passphrase of the private key')
  })
  .strict()

const tcpListener = z
  .object({
    enabled: flag.default(true).describe('Accept MQTT over plain TCP'),
    host: host.default('0.0.0.0').describe('Address to bind'),
    port: port.default(1883).describe('TCP port'),
    noDelay: flag
      .default(true)
      .describe('TCP_NODELAY: write small packets at once (an RPC answer right after a PUBACK otherwise waits ~40 ms for the client\'s delayed ACK); false lets the kernel coalesce them (Nagle): ~15% more relay throughput when saturated (docs/benchmarks.md), worse latency')
  })
  .strict()

const tlsListener = z
  .object({
    enabled: flag.optional().describe('Accept MQTT over TLS; defaults to on when certFile and keyFile are set'),
    host: host.default('0.0.0.0').describe('Address to bind'),
    port: port.default(8883).describe('TLS port'),
    noDelay: flag.default(true).describe('TCP_NODELAY, as listeners.tcp.noDelay'),
    ...tlsFiles.shape
  })
  .strict()

const wsListener = z
  .object({
    enabled: flag.default(true).describe('Accept MQTT over WebSocket'),
    host: host.default('0.0.0.0').describe('Address to bind'),
    port: port.default(8080).describe('WebSocket port'),
    path: z
      .string()
      .regex(/^\/[^\s?#]*$/, { error: 'expected an absolute URL path such as /mqtt' })
      .default('/mqtt')
      .describe('URL path of the MQTT endpoint'),
    ...tlsFiles.shape
  })
  .strict()

const opsListener = z
  .object({
    enabled: flag.default(true).describe('Serve /healthz, /readyz, /metrics and plugin routes over HTTP'),
    host: host.default('0.0.0.0').describe('Address to bind'),
    port: port.default(9090).describe('HTTP port of the operations listener')
  })
  .strict()

export const ConfigSchema = z
  .object({
    nodeName: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,48}$/, { error: 'expected 1-48 characters of A-Z a-z 0-9 _ . -' })
      .optional()
      .describe('Human name of this node (default: host name); the broker id adds a unique suffix per start'),
    dataDir: filePath.default('./data').describe('Directory for the embedded stores and generated secrets'),
    log: z
      .object({
        level: z
          .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
          .default('info')
          .describe('Minimum level of log lines (JSON on stdout)')
      })
      .strict()
      .prefault({}),
    listeners: z
      .object({
        tcp: tcpListener.prefault({}),
        tls: tlsListener.prefault({}),
        ws: wsListener.prefault({}),
        ops: opsListener.prefault({})
      })
      .strict()
      .prefault({}),
    mqtt: z
      .object({
        heartbeatIntervalMs: int(500, 600_000)
          .default(2000)
          .describe('Cluster heartbeat; wills of a dead node are sent after about 4x this'),
        connectTimeoutMs: int(1000, 120_000).default(10_000).describe('Time a socket may take to send CONNECT'),
        maxClientIdLength: int(1, 65535).default(129).describe('Longest client id accepted (MQTT 3.1 clients)'),
        concurrency: int(1, 10_000).default(100).describe('Parallel deliveries of the message emitter'),
        maxTopicLevels: int(1, 100)
          .default(32)
          .describe('Deepest topic the MQTT layer accepts (deeper closes the connection); plugins may answer lower limits politely'),
        maxRejectionsPerSecond: int(1, 10_000)
          .default(10)
          .describe('Rejected publishes a client may cause per second; beyond it the client is disconnected instead of answered'),
        maxQueuedMessages: int(0, 10_000_000)
          .default(1000)
          .describe('QoS 1 messages queued per persistent session at most (0: no limit); newer ones are not queued (devices sync)'),
        hookTimeoutMs: int(10, 120_000)
          .default(5000)
          .describe('Longest a plugin may take to answer a connect, authenticate or subscribe hook before it is denied'),
        publishTimeoutMs: int(10, 120_000)
          .default(20_000)
          .describe(
            "Longest the publish checks may take (storing a chat message included) before the publisher is disconnected without a PUBACK. A slow store holds publishers this long instead (back-pressure); keep it below clients' keepalive"
          ),
        allowAnonymous: flag
          .default(false)
          .describe('Accept connections that no authentication plugin vouches for (development only)')
      })
      .strict()
      .prefault({}),
    redis: z
      .object({
        url: secret(
          z.url({ protocol: /^rediss?$/, error: 'expected a redis:// or rediss:// URL' }).optional(),
          'Redis URL; when set, nodes cluster through Redis'
        ),
        keyPrefix: z.string().default('parley:').describe('Prefix of the keys Parley itself writes')
      })
      .strict()
      .prefault({}),
    mongo: z
      .object({
        url: secret(
          z.url({ protocol: /^mongodb(\+srv)?$/, error: 'expected a mongodb:// URL' }).optional(),
          'MongoDB URL; when set, stores use MongoDB'
        ),
        database: z.string().min(1).default('parley').describe('Database name'),
        maxPoolSize: z
          .number()
          .int()
          .min(1)
          .max(1000)
          .default(25)
          .describe(
            'Connections to MongoDB per node at most (overrides maxPoolSize in the URL). FerretDB 1.24 deadlocks a database at about 100 concurrent updates, so keep nodes x this below 100 there; raise it on MongoDB'
          )
      })
      .strict()
      .prefault({}),
    s3: z
      .object({
        endpoint: z
          .url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' })
          .optional()
          .describe('S3 endpoint; when set, media uses S3/MinIO'),
        publicEndpoint: z
          .url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' })
          .optional()
          .describe('S3 endpoint as devices reach it, when it differs from endpoint (media URLs are signed for this host)'),
        region: z.string().default('us-east-1').describe('S3 region'),
        bucket: z
          .string()
          .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, { error: 'expected a valid S3 bucket name' })
          .default('parley-media')
          .describe('Bucket for media objects'),
        accessKey: secret(z.string().optional(), 'S3 access key'),
        secretKey: secret(z.string().optional(), 'S3 secret key')
      })
      .strict()
      .prefault({}),
    admin: z
      .object({
        enabled: flag.default(true).describe('Serve the admin API (/admin/v1) on the operations listener'),
        bootstrapSecret: secret(
          z.string().min(32, { error: 'expected at least 32 characters' }).optional(),
          'Creates and revokes admin API keys (parley admin keys); when unset, one is generated in the data directory'
        ),
        bootstrapSecretFile: z
          .string()
          .min(1)
          .default('admin-bootstrap-secret')
          .describe('File of the bootstrap secret when bootstrapSecret is unset (relative to dataDir; generated if missing)'),
        queryTimeoutMs: int(100, 60_000)
          .default(3000)
          .describe('How long a cluster-wide admin request waits for the other nodes before answering with what it has')
      })
      .strict()
      .prefault({}),
    shutdown: z
      .object({
        timeoutMs: int(100, 600_000).default(30_000).describe('Longest graceful stop before the process exits anyway'),
        drainMs: int(0, 600_000)
          .default(20_000)
          .describe('Rolling restarts: how long a stopping node spends moving its clients away before it closes the rest at once (at most half of timeoutMs)'),
        drainRatePerSecond: int(1, 1_000_000)
          .default(1000)
          .describe('Clients a draining node disconnects per second (they reconnect to the other nodes, spread out)')
      })
      .strict()
      .prefault({}),
    plugins: z
      .array(
        z.union(
          [
            z.string().min(1),
            z
              .object({
                use: z.string().min(1).describe('Built-in plugin name or module path'),
                config: z.record(z.string(), z.unknown()).optional().describe('The plugin\'s own settings')
              })
              .strict()
          ],
          { error: 'expected a plugin name, a module path, or { use, config }' }
        )
      )
      .default([...DEFAULT_PLUGINS])
      .describe('Plugins to load in order: built-in names, file paths (relative to the config file) or npm packages, or { use, config } entries')
  })
  .strict()
  .superRefine((cfg, ctx) => {
    for (const [name, l] of [
      ['tls', cfg.listeners.tls],
      ['ws', cfg.listeners.ws]
    ] as const) {
      if (Boolean(l.certFile) !== Boolean(l.keyFile)) {
        ctx.addIssue({
          code: 'custom',
          path: ['listeners', name, l.certFile ? 'keyFile' : 'certFile'],
          message: 'certFile and keyFile must be set together'
        })
      }
    }
    if (cfg.listeners.tls.enabled === true && !cfg.listeners.tls.certFile) {
      ctx.addIssue({
        code: 'custom',
        path: ['listeners', 'tls', 'certFile'],
        message: 'the TLS listener is enabled but no certFile/keyFile is set'
      })
    }
    if (cfg.s3.endpoint && (!cfg.s3.accessKey || !cfg.s3.secretKey)) {
      ctx.addIssue({
        code: 'custom',
        path: ['s3', cfg.s3.accessKey ? 'secretKey' : 'accessKey'],
        message: 's3.endpoint needs both accessKey and secretKey'
      })
    }
    const ports = new Map<number, string>()
    for (const [name, l] of Object.entries(cfg.listeners)) {
      const on = name === 'tls' ? (l.enabled ?? Boolean(cfg.listeners.tls.certFile)) : l.enabled
      if (!on || l.port === 0) continue
      const other = ports.get(l.port)
      if (other) {
        ctx.addIssue({
          code: 'custom',
          path: ['listeners', name, 'port'],
          message: `port ${l.port} is already used by the ${other} listener`
        })
      }
      ports.set(l.port, name)
    }
  })

/** What a config file or the environment may contain (before defaults). */
export type ConfigInput = z.input<typeof ConfigSchema>
/** The effective, validated configuration. */
export type Config = z.output<typeof ConfigSchema>
export type PluginEntry = Config['plugins'][number]

/**
 * The conventional environment variables understood besides PARLEY_*.
 * Each maps to one config path.
 */
export const CONVENTIONAL_ENV: Readonly<Record<string, readonly string[]>> = {
  REDIS_URL: ['redis', 'url'],
  MONGO_URL: ['mongo', 'url'],
  MONGO_DATABASE: ['mongo', 'database'],
  S3_ENDPOINT: ['s3', 'endpoint'],
  S3_PUBLIC_ENDPOINT: ['s3', 'publicEndpoint'],
  S3_REGION: ['s3', 'region'],
  S3_BUCKET: ['s3', 'bucket'],
  S3_ACCESS_KEY: ['s3', 'accessKey'],
  S3_SECRET_KEY: ['s3', 'secretKey'],
  LOG_LEVEL: ['log', 'level']
}

/** Whether the TLS listener runs: explicitly enabled, or certificate and key given. */
export function tlsListenerEnabled(cfg: Config): boolean {
  return cfg.listeners.tls.enabled ?? Boolean(cfg.listeners.tls.certFile && cfg.listeners.tls.keyFile)
}
