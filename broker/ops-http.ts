// The operations HTTP listener: liveness, readiness, Prometheus metrics, and plugin routes.
// Fastify gives routing, JSON and schema hooks that the admin API will build on.
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Registry } from 'prom-client'
import type { Logger } from './logger.js'

export type CheckResult = { ok: true; ms: number } | { ok: false; ms: number; error: string }

export interface Readiness {
  /** False while starting or stopping. */
  accepting(): boolean
  checks(): Map<string, () => Promise<void>>
}

const CHECK_TIMEOUT_MS = 1500

/** Runs every readiness check at once, each bounded in time. */
export async function runChecks(checks: Map<string, () => Promise<void>>): Promise<Record<string, CheckResult>> {
  const entries = await Promise.all(
    [...checks].map(async ([name, check]): Promise<[string, CheckResult]> => {
      const started = performance.now()
      let timer: NodeJS.Timeout | undefined
      try {
        await Promise.race([
          check(),
          new Promise((_r, reject) => {
            timer = setTimeout(() => reject(new Error(`no answer within ${CHECK_TIMEOUT_MS} ms`)), CHECK_TIMEOUT_MS)
          })
        ])
        return [name, { ok: true, ms: Math.round(performance.now() - started) }]
      } catch (err) {
        return [name, { ok: false, ms: Math.round(performance.now() - started), error: (err as Error).message }]
      } finally {
        clearTimeout(timer)
      }
    })
  )
  return Object.fromEntries(entries)
}

export function createOpsServer(opts: {
  log: Logger
  brokerId: string
  registry: Registry
  readiness: Readiness
}): FastifyInstance {
  // Typed as Fastify's logger so the instance keeps Fastify's default generics.
  const loggerInstance: FastifyBaseLogger = opts.log.child({ component: 'ops-http' })
  const app = Fastify({
    loggerInstance,
    logController: new LogController({ disableRequestLogging: true }),
    // Admin routes take client ids in the path: up to 256 characters, URI-encoded (up to 12 bytes each).
    routerOptions: { maxParamLength: 4096 }
  })
  const startedAt = Date.now()

  app.get('/healthz', async () => ({
    status: 'ok',
    brokerId: opts.brokerId,
    uptimeSeconds: Math.round((Date.now() - startedAt) / 1000)
  }))

  app.get('/readyz', async (_req, reply) => {
    const checks = await runChecks(opts.readiness.checks())
    const accepting = opts.readiness.accepting()
    const ready = accepting && Object.values(checks).every((c) => c.ok)
    return reply.code(ready ? 200 : 503).send({
      status: ready ? 'ready' : accepting ? 'not ready' : 'stopping',
      brokerId: opts.brokerId,
      checks
    })
  })

  app.get('/metrics', async (_req, reply) => {
    const body = await opts.registry.metrics()
    return reply.type(opts.registry.contentType).send(body)
  })

  return app
}
