// MQTT names as the admin API and the CLI check them: client ids, topic filters, topic names and
// client id glob patterns. One definition, so the CLI refuses locally exactly what the API would.

/**
 * Longest client id the admin API accepts: above mqtt.maxClientIdLength's default (129). It
 * travels URI-encoded in the URL path; the operations listener's router allows that length.
 */
export const MAX_CLIENT_ID = 256
/** Longest topic the admin API accepts (the MQTT limit, in UTF-8 bytes). */
export const MAX_TOPIC_BYTES = 65_535

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/

/** Why `id` is not a client id the API accepts, or undefined when it is. */
export function clientIdProblem(id: string): string | undefined {
  if (id.length === 0) return 'expected a client id (1 character or more)'
  if (id.length > MAX_CLIENT_ID) return `expected at most ${MAX_CLIENT_ID} characters`
  if (CONTROL.test(id)) return 'a client id has no control characters'
  return undefined
}

/** Why `filter` is not a valid MQTT topic filter (wildcards allowed), or undefined. */
export function topicFilterProblem(filter: string): string | undefined {
  if (filter.length === 0) return 'expected a topic filter (1 character or more)'
  if (Buffer.byteLength(filter, 'utf8') > MAX_TOPIC_BYTES) return `expected at most ${MAX_TOPIC_BYTES} bytes`
  if (filter.includes('\u0000')) return 'a topic has no NUL character'
  const levels = filter.split('/')
  for (const [i, level] of levels.entries()) {
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) return "'#' must be a whole level, and the last one"
    if (level.includes('+') && level !== '+') return "'+' must be a whole level"
  }
  return undefined
}

/** Why `topic` is not a topic name (no wildcards: a retained message's topic), or undefined. */
export function topicNameProblem(topic: string): string | undefined {
  const problem = topicFilterProblem(topic)
  if (problem) return problem
  if (/[+#]/.test(topic)) return 'a topic name has no wildcards'
  return undefined
}

/** Why `pattern` is not a client id glob (`*` any characters, `?` one), or undefined. */
export function globProblem(pattern: string): string | undefined {
  if (pattern.length === 0) return 'expected a pattern, e.g. "alice:*"'
  if (pattern.length > MAX_CLIENT_ID) return `expected at most ${MAX_CLIENT_ID} characters`
  if (CONTROL.test(pattern)) return 'a pattern has no control characters'
  return undefined
}

/** A glob (`*` any characters, `?` one character, everything else literal) as an anchored RegExp. */
export function globRegExp(pattern: string): RegExp {
  const body = [...pattern].map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&'))).join('')
  return new RegExp(`^${body}$`, 's')
}
