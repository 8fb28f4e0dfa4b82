// Connections to the real backends (Redis, MongoDB, S3/MinIO), made only when configured.
// None of them blocks start-up: each reconnects by itself and /readyz reports its state.
import { Redis, type RedisOptions } from 'ioredis'
import { Client as MinioClient } from 'minio'
import { MongoClient } from 'mongodb'
import type { Config } from '../schemas/config.js'
import type { Logger } from './logger.js'
import type { Backends } from './plugin-api.js'

export interface BackendSet {
  backends: Backends
  /** One check per configured backend: resolves when it answers, rejects otherwise. */
  checks: Map<string, () => Promise<void>>
  close(): Promise<void>
}

/** ioredis options shared by every connection: retry for ever with a capped back-off. */
export function redisOptions(name: string): RedisOptions {
  return {
    connectionName: name,
    maxRetriesPerRequest: null,
    retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 6), 5000),
    enableReadyCheck: true
  }
}

/** Logs a backend's connection errors once per outage instead of once per retry. */
function errorReporter(log: Logger, backend: string): { onError: (err: Error) => void; onUp: () => void } {
  let down = false
  return {
    onError: (err) => {
      if (!down) log.error({ backend, err: err.message }, 'backend unreachable; retrying')
      down = true
    },
    onUp: () => {
      if (down) log.info({ backend }, 'backend reachable again')
      down = false
    }
  }
}

export function newRedis(url: string, name: string, log: Logger, extra: Partial<RedisOptions> = {}): Redis {
  const redis = new Redis(url, { ...redisOptions(name), ...extra })
  const report = errorReporter(log, `redis:${name}`)
  redis.on('error', report.onError)
  redis.on('ready', report.onUp)
  return redis
}

export function openBackends(config: Config, log: Logger): BackendSet {
  const backends: Backends = { redisKeyPrefix: config.redis.keyPrefix }
  const checks = new Map<string, () => Promise<void>>()
  const closers: Array<() => Promise<void>> = []

  if (config.redis.url) {
    const redis = newRedis(config.redis.url, 'parley', log)
    backends.redis = redis
    checks.set('redis', async () => {
      if (redis.status !== 'ready') throw new Error(`connection ${redis.status}`)
      await redis.ping()
    })
    closers.push(async () => {
      await redis.quit().catch(() => redis.disconnect())
    })
  }

  if (config.mongo.url) {
    const client = new MongoClient(config.mongo.url, {
      serverSelectionTimeoutMS: 5000,
      connectTimeoutMS: 5000,
      maxPoolSize: config.mongo.maxPoolSize,
      appName: 'parley'
    })
    const report = errorReporter(log, 'mongo')
    client.on('serverHeartbeatFailed', (e) => report.onError(new Error(String(e.failure))))
    client.on('serverHeartbeatSucceeded', report.onUp)
    // The driver connects on first use and reconnects by itself.
    client.connect().catch((err: Error) => report.onError(err))
    const db = client.db(config.mongo.database)
    backends.mongo = db
    checks.set('mongo', async () => {
      await db.command({ ping: 1 })
    })
    closers.push(async () => {
      await client.close()
    })
  }

  if (config.s3.endpoint) {
    const minio = (endpoint: string) => {
      const url = new URL(endpoint)
      const useSSL = url.protocol === 'https:'
      return new MinioClient({
        endPoint: url.hostname,
        port: url.port ? Number(url.port) : useSSL ? 443 : 80,
        useSSL,
        region: config.s3.region,
        accessKey: config.s3.accessKey ?? '',
        secretKey: config.s3.secretKey ?? '',
        pathStyle: true
      })
    }
    const client = minio(config.s3.endpoint)
    const bucket = config.s3.bucket
    backends.s3 = { client, bucket, ...(config.s3.publicEndpoint ? { presignClient: minio(config.s3.publicEndpoint) } : {}) }
    let bucketReady = false
    checks.set('s3', async () => {
      if (await client.bucketExists(bucket)) {
        bucketReady = true
        return
      }
      // First start against an empty store: create the bucket (readiness retries until it exists).
      if (!bucketReady) await client.makeBucket(bucket, config.s3.region)
      bucketReady = true
    })
  }

  return {
    backends,
    checks,
    close: async () => {
      await Promise.allSettled(closers.map((c) => c()))
    }
  }
}
