// Driving the admin API and the `parley admin` CLI in tests: keys made with a node's bootstrap
// secret, JSON requests, and the CLI as a real subprocess (exit code, stdout, stderr).
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { isolatedEnv, runParley } from './broker-process.js'

export type Scope = 'read' | 'operator' | 'admin'

/** The bootstrap secret a node generated in its data directory (admin.bootstrapSecretFile). */
export function bootstrapSecret(dataDir: string): string {
  return readFileSync(join(dataDir, 'admin-bootstrap-secret'), 'utf8').trim()
}

export interface AdminAnswer<T = unknown> {
  status: number
  body: T
}

/** One admin API request with `credential` (a key or the bootstrap secret). */
export async function adminRequest<T = unknown>(
  opsPort: number,
  credential: string | undefined,
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  path: string,
  body?: unknown
): Promise<AdminAnswer<T>> {
  const response = await fetch(`http://127.0.0.1:${opsPort}/admin/v1${path}`, {
    method,
    headers: {
      ...(credential ? { authorization: `Bearer ${credential}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {})
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(20_000)
  })
  const text = await response.text()
  return { status: response.status, body: (text ? JSON.parse(text) : undefined) as T }
}

/** Creates a key of `scope` through the API with the node's bootstrap secret. */
export async function createKey(opsPort: number, dataDir: string, scope: Scope, name = `test-${scope}`): Promise<string> {
  const answer = await adminRequest<{ key: string }>(opsPort, bootstrapSecret(dataDir), 'POST', '/keys', { name, scope })
  if (answer.status !== 201) throw new Error(`key not created: ${answer.status} ${JSON.stringify(answer.body)}`)
  return answer.body.key
}

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
  /** stdout parsed as JSON (for --json runs); throws with the output when it is not JSON. */
  json<T = unknown>(): T
}

/**
 * Runs `parley admin <args>` against the node at `opsPort` with `key` (none: no key at all). The
 * environment is isolated (no PARLEY_* of the test process); `env` adds to it.
 */
export async function adminCli(opsPort: number, key: string | undefined, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const base = isolatedEnv(join('/nonexistent', 'parley-cli'))
  const result = await runParley(['admin', ...args], {
    ...base,
    PARLEY_ADMIN_URL: `http://127.0.0.1:${opsPort}`,
    ...(key ? { PARLEY_ADMIN_KEY: key } : {}),
    ...env
  })
  return {
    ...result,
    json<T>() {
      try {
        return JSON.parse(result.stdout) as T
      } catch {
        throw new Error(`not JSON (exit ${result.code}):\n${result.stdout}\n${result.stderr}`)
      }
    }
  }
}
