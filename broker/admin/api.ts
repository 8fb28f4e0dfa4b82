// The admin API: JSON over the operations listener under /admin/v1, every route declared once with
// zod schemas that validate its input, document its output, and generate the OpenAPI document
// (GET /admin/v1/openapi.json). Requests carry `Authorization: Bearer <api key>`; each route needs a
// scope (read < operator < admin). Every change (any method but GET) is written to the log as an
// audit line: who (key id and name), what (method, route, parameters), and the outcome.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { z } from 'zod'
import type { Logger } from '../logger.js'
import { isBootstrapSecret } from './bootstrap.js'
import { scopeAllows, type ApiKeyInfo, type ApiKeyStore, type Scope } from './keys.js'

export const ADMIN_PREFIX = '/admin/v1'

/** Error codes of the admin API, with their HTTP status (docs/operations.md lists them). */
export const ADMIN_ERRORS = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  unavailable: 503,
  internal: 500
} as const
export type AdminErrorCode = keyof typeof ADMIN_ERRORS

export class AdminError extends Error {
  constructor(
    readonly code: AdminErrorCode,
    message: string,
    readonly issues?: Array<{ path: string; message: string }>
  ) {
    super(message)
  }
}

export const ErrorBody = z.object({
  error: z.object({
    code: z.enum(Object.keys(ADMIN_ERRORS) as [AdminErrorCode, ...AdminErrorCode[]]),
    message: z.string(),
    issues: z.array(z.object({ path: z.string(), message: z.string() })).optional()
  })
})

/** Who made a request: an API key, or the bootstrap secret (which may only manage keys). */
export type Caller = ApiKeyInfo | { id: 'bootstrap'; name: 'bootstrap secret'; scope: 'admin' }

export interface AdminRequest<P, Q, B> {
  params: P
  query: Q
  body: B
  caller: Caller
  /** Adds fields to this request's audit line (e.g. what a change affected). */
  audit: (details: Record<string, unknown>) => void
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE'

export interface AdminRoute<P extends z.ZodType = z.ZodType, Q extends z.ZodType = z.ZodType, B extends z.ZodType = z.ZodType, R extends z.ZodType = z.ZodType> {
  method: Method
  /** Below /admin/v1, Fastify style: `/clients/:clientId`. */
  path: string
  scope: Scope
  summary: string
  description?: string
  /** OpenAPI tag: the command group (clients, users, groups...). */
  tag: string
  params?: P
  query?: Q
  body?: B
  response: R
  /** Status of a success (200 unless said). */
  status?: number
  /** Routes the bootstrap secret may call (key management only). */
  bootstrap?: boolean
  handler(req: AdminRequest<z.output<P>, z.output<Q>, z.output<B>>): Promise<z.input<R>>
}

const issuesOf = (err: z.ZodError, where: string) =>
  err.issues.map((i) => ({ path: [where, ...i.path.map(String)].join('.'), message: i.message }))

export interface AdminApiOptions {
  log: Logger
  keys: ApiKeyStore
  /** The bootstrap secret, if any (generated into the data directory when not configured). */
  bootstrapSecret: string | undefined
  /** Rejects while the key store is not ready (MongoDB not reachable yet). */
  keysReady(): Promise<void>
}

export class AdminApi {
  private readonly routes: AdminRoute[] = []
  private app: FastifyInstance | undefined

  constructor(private readonly opts: AdminApiOptions) {}

  /** Declares a route (before mount: plugins do it in register()). */
  route<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType, R extends z.ZodType>(route: AdminRoute<P, Q, B, R>): void {
    const r = route as unknown as AdminRoute
    const clash = this.routes.find((x) => x.method === r.method && x.path === r.path)
    if (clash) throw new Error(`admin route ${r.method} ${r.path} is declared twice`)
    if (this.app) throw new Error(`admin route ${r.method} ${r.path} declared after the API was mounted: declare routes in register()`)
    this.routes.push(r)
  }

  /** Serves every declared route on `app`. */
  mount(app: FastifyInstance): void {
    this.app = app
    app.get(`${ADMIN_PREFIX}/openapi.json`, async () => this.openapi())
    for (const r of this.routes) this.mountOne(app, r)
    // Unknown admin paths answer in the admin error format, not Fastify's.
    app.all(`${ADMIN_PREFIX}/*`, async (_req, reply) => this.sendError(reply, new AdminError('not_found', 'no such admin route')))
    // Fastify's own errors (a body that is not JSON, too large...) in the admin format too.
    app.setErrorHandler((err: { statusCode?: number; message: string }, req, reply) => {
      if (!req.url.startsWith(ADMIN_PREFIX)) return reply.send(err)
      const status = err.statusCode ?? 500
      return this.sendError(reply, status < 500 ? new AdminError('invalid_request', err.message) : new AdminError('internal', 'internal error'))
    })
  }

  private async authenticate(req: FastifyRequest, route: AdminRoute): Promise<Caller> {
    const header = req.headers.authorization
    const m = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null
    if (!m) throw new AdminError('unauthorized', 'an API key is required: Authorization: Bearer <key>')
    const presented = m[1]!
    if (presented.startsWith('pk_')) {
      await this.opts.keysReady().catch((err: Error) => {
        throw new AdminError('unavailable', `the key store is not available: ${err.message}`)
      })
      let info: ApiKeyInfo | undefined
      try {
        info = await this.opts.keys.verify(presented)
      } catch (err) {
        throw new AdminError('unavailable', `the key store is not available: ${(err as Error).message}`)
      }
      if (!info) throw new AdminError('unauthorized', 'unknown, revoked or expired API key')
      if (!scopeAllows(info.scope, route.scope)) {
        throw new AdminError('forbidden', `this key has scope ${info.scope}; ${route.method} ${route.path} needs ${route.scope}`)
      }
      return info
    }
    const secret = this.opts.bootstrapSecret
    if (secret && isBootstrapSecret(presented, secret)) {
      if (!route.bootstrap) throw new AdminError('forbidden', 'the bootstrap secret only manages API keys: create a key with `parley admin keys create`')
      return { id: 'bootstrap', name: 'bootstrap secret', scope: 'admin' }
    }
    throw new AdminError('unauthorized', 'unknown, revoked or expired API key')
  }

  private mountOne(app: FastifyInstance, route: AdminRoute): void {
    const url = ADMIN_PREFIX + route.path
    app.route({
      method: route.method,
      url,
      handler: async (req, reply) => {
        const details: Record<string, unknown> = {}
        let caller: Caller | undefined
        let status = route.status ?? 200
        try {
          caller = await this.authenticate(req, route)
          const parse = <S extends z.ZodType | undefined>(schema: S, value: unknown, where: string) => {
            if (!schema) return undefined
            const result = schema.safeParse(value ?? {})
            if (!result.success) throw new AdminError('invalid_request', `invalid ${where}`, issuesOf(result.error, where))
            return result.data
          }
          const params = parse(route.params, req.params, 'params')
          const query = parse(route.query, req.query, 'query')
          const body = parse(route.body, req.body, 'body')
          const result = await route.handler({ params, query, body, caller, audit: (d) => Object.assign(details, d) })
          reply.code(status)
          return result
        } catch (err) {
          const e = err instanceof AdminError ? err : new AdminError('internal', 'internal error')
          if (!(err instanceof AdminError)) this.opts.log.error({ err, route: `${route.method} ${route.path}` }, 'admin route failed')
          status = ADMIN_ERRORS[e.code]
          return this.sendError(reply, e)
        } finally {
          if (route.method !== 'GET' && caller) {
            this.opts.log.info(
              {
                audit: {
                  key: caller.id,
                  keyName: caller.name,
                  action: `${route.method} ${route.path}`,
                  params: req.params,
                  status,
                  ...details
                }
              },
              'admin audit'
            )
          }
        }
      }
    })
  }

  private sendError(reply: FastifyReply, e: AdminError) {
    return reply.code(ADMIN_ERRORS[e.code]).send({ error: { code: e.code, message: e.message, ...(e.issues ? { issues: e.issues } : {}) } })
  }

  /** The OpenAPI 3.1 document of every declared route. */
  openapi(): Record<string, unknown> {
    const paths: Record<string, Record<string, unknown>> = {}
    const schema = (s: z.ZodType, io: 'input' | 'output') => z.toJSONSchema(s, { io, unrepresentable: 'any' })
    for (const r of this.routes) {
      const path = ADMIN_PREFIX + r.path.replace(/:([A-Za-z0-9_]+)/g, '{$1}')
      const parameters: unknown[] = []
      for (const [where, s] of [
        ['path', r.params],
        ['query', r.query]
      ] as const) {
        if (!s) continue
        const js = schema(s, 'input') as { properties?: Record<string, unknown>; required?: string[] }
        for (const [name, p] of Object.entries(js.properties ?? {})) {
          parameters.push({ name, in: where, required: where === 'path' || (js.required ?? []).includes(name), schema: p })
        }
      }
      const errorResponse = { description: 'error', content: { 'application/json': { schema: schema(ErrorBody, 'output') } } }
      paths[path] ??= {}
      paths[path][r.method.toLowerCase()] = {
        summary: r.summary,
        ...(r.description ? { description: r.description } : {}),
        tags: [r.tag],
        'x-required-scope': r.scope,
        ...(parameters.length ? { parameters } : {}),
        ...(r.body ? { requestBody: { required: true, content: { 'application/json': { schema: schema(r.body, 'input') } } } } : {}),
        responses: {
          [String(r.status ?? 200)]: { description: 'success', content: { 'application/json': { schema: schema(r.response, 'output') } } },
          '4XX': errorResponse,
          '5XX': errorResponse
        }
      }
    }
    return {
      openapi: '3.1.0',
      info: { title: 'Parley admin API', version: '1', description: 'Operate a Parley cluster. See docs/operations.md.' },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'An admin API key (pk_...)' } } },
      security: [{ apiKey: [] }],
      paths
    }
  }
}
