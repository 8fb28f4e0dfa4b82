// `parley admin push test <userId> [--device ID]`: asks a running node (its operations listener,
// POST /plugins/push/test) to send a test notification now, and prints each provider's answer.
import type { Config } from '../../schemas/config.js'
import { Id } from '../../schemas/identity.js'
import type { TestResult } from './index.js'

/** Where the node's operations listener is, from the configuration (a wildcard bind means this host). */
export function opsUrl(config: Config): string {
  const { host, port } = config.listeners.ops
  const h = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host
  return `http://${h}:${port}`
}

/** Runs the command; resolves with the exit code (0: every device accepted it, 1: not, 2: usage). */
export async function adminPushTest(
  config: Config,
  userId: string,
  options: { device?: string | undefined; url?: string | undefined },
  out: (line: string) => void = (l) => process.stdout.write(l + '\n'),
  err: (line: string) => void = (l) => process.stderr.write(l + '\n')
): Promise<number> {
  if (!Id.safeParse(userId).success || (options.device !== undefined && !Id.safeParse(options.device).success)) {
    err('parley admin push test: user and device ids are 1-64 characters of A-Z a-z 0-9 _ -')
    return 2
  }
  const base = (options.url ?? opsUrl(config)).replace(/\/+$/, '')
  let response: Response
  try {
    response = await fetch(`${base}/plugins/push/test`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user: userId, ...(options.device ? { device: options.device } : {}) }),
      signal: AbortSignal.timeout(30_000)
    })
  } catch (e) {
    err(`parley admin push test: cannot reach the node at ${base}: ${(e as Error).message}`)
    return 1
  }
  const body = (await response.json().catch(() => ({}))) as { results?: TestResult[]; error?: string }
  if (response.status === 404 && !body.results) {
    err(`parley admin push test: ${body.error ?? 'the node does not run the push plugin'}`)
    return 1
  }
  if (!response.ok || !body.results) {
    err(`parley admin push test: the node answered ${response.status}: ${body.error ?? JSON.stringify(body)}`)
    return 1
  }
  for (const r of body.results) {
    const via = r.via === r.provider ? r.provider : `${r.provider} (${r.via}: no ${r.provider} credentials configured)`
    const answer = r.ok ? `accepted${r.status ? ` ${r.status}` : ''}${r.id ? ` id=${r.id}` : ''}` : `refused${r.status ? ` ${r.status}` : ''} ${r.reason ?? ''}`.trim()
    out(`${userId}:${r.device}  ${via}  ${answer}${r.removed ? '  (dead token: registration removed)' : ''}`)
  }
  return body.results.every((r) => r.ok) ? 0 : 1
}
