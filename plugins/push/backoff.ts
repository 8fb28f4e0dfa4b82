// When to try a failed push again: the provider's Retry-After when it gave one (plus a little
// jitter, so that a throttled cluster does not come back all at once), else exponential back-off
// with "equal jitter" (half fixed, half random: never immediately, never in lock step).
export interface Backoff {
  baseMs: number
  maxMs: number
}

export function retryDelay(attempt: number, retryAfterMs: number | undefined, backoff: Backoff, random: () => number = Math.random): number {
  if (retryAfterMs !== undefined) return Math.ceil(retryAfterMs + retryAfterMs * 0.1 * random())
  const ceiling = Math.min(backoff.maxMs, backoff.baseMs * 2 ** Math.max(0, attempt - 1))
  return Math.ceil(ceiling / 2 + (ceiling / 2) * random())
}
