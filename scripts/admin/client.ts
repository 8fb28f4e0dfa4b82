// The admin CLI's side of the admin API: where the node is, which key to present, and one request
// function that turns every failure into a precise message and a documented exit code.
import type { Config } from '../../schemas/config.js'

/** Exit codes of `parley admin` (docs/operations.md). */
export const ADMIN_EXIT = {
  ok: 0,
  failure: 1,
  usage: 2,
  notFound: 3,
  denied: 4,
  unavailable: 5,
  conflict: 6,
  config: 78
} as const

export class CliError extends Error {
  constructor(
    readonly exitCode: number,
    message: string
  ) {
    super(message)
  }
}

/** Where the node's operations listener is, from the configuration (a wildcard bind means this host). */
export function opsUrl(config: Config): string {
  const { host, port } = config.listeners.ops
  const h = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host
  return `http://${h}:${port}`
}

interface ErrorBody {
  error?: { code?: string; message?: string; issues?: Array<{ path: string; message: string }> }
}

const EXIT_BY_STATUS: Record<number, number> = {
  400: ADMIN_EXIT.usage,
  401: ADMIN_EXIT.denied,
  403: ADMIN_EXIT.denied,
  404: ADMIN_EXIT.notFound,
  409: ADMIN_EXIT.conflict,
  503: ADMIN_EXIT.unavailable
}

export class AdminClient {
  constructor(
    readonly baseUrl: string,
    private readonly key: string | undefined,
    private readonly timeoutMs = 30_000
  ) {}

  async request<T>(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, options: { query?: Record<string, string | number | boolean | undefined>; body?: unknown } = {}): Promise<T> {
    if (!this.key) {
      throw new CliError(ADMIN_EXIT.denied, 'no API key: pass --key or set PARLEY_ADMIN_KEY (create one with `parley admin keys create`)')
    }
    const url = new URL(`${this.baseUrl.replace(/\/+$/, '')}/admin/v1${path}`)
    for (const [k, v] of Object.entries(options.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v))
    let response: Response
    try {
      response = await fetch(url, {
        method,
        headers: { authorization: `Bearer ${this.key}`, ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
        signal: AbortSignal.timeout(this.timeoutMs)
      })
    } catch (err) {
      const e = err as Error & { cause?: { code?: string } }
      const why = e.name === 'TimeoutError' ? `no answer within ${this.timeoutMs} ms` : (e.cause?.code ?? e.message)
      throw new CliError(ADMIN_EXIT.unavailable, `cannot reach the node at ${this.baseUrl}: ${why}`)
    }
    const text = await response.text()
    let body: unknown
    try {
      body = text ? JSON.parse(text) : undefined
    } catch {
      body = undefined
    }
    if (response.ok) return body as T
    const error = (body as ErrorBody | undefined)?.error
    const issues = error?.issues?.map((i) => `\n  ${i.path}: ${i.message}`).join('') ?? ''
    const message = error?.message ? `${error.message}${issues}` : `the node answered HTTP ${response.status}`
    throw new CliError(EXIT_BY_STATUS[response.status] ?? ADMIN_EXIT.failure, message)
  }
}
