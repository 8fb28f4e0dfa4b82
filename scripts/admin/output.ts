// How `parley admin` prints: aligned tables for people, JSON (--json) for scripts.

export type Cell = string | number | boolean | null | undefined

/** Renders rows as a table with a header, columns padded to their widest cell. */
export function table(columns: string[], rows: Cell[][]): string {
  const text = (c: Cell) => (c === null || c === undefined || c === '' ? '-' : String(c))
  const cells = rows.map((r) => r.map(text))
  const widths = columns.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)))
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd()
  return [line(columns.map((c) => c.toUpperCase())), ...cells.map(line)].join('\n')
}

/** Key: value lines, keys aligned. */
export function fields(pairs: Array<[string, Cell]>): string {
  const width = Math.max(...pairs.map(([k]) => k.length))
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width + 1)}  ${v === undefined || v === null || v === '' ? '-' : String(v)}`).join('\n')
}

/** A timestamp (ms) as ISO 8601 in UTC, seconds precision. */
export const when = (ms: number | undefined | null): string => (ms ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '-')

/** A duration in ms as "3d 4h", "12m 5s", "800ms". */
export function ago(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`
  const s = Math.round(ms / 1000)
  const units: Array<[string, number]> = [
    ['d', 86_400],
    ['h', 3600],
    ['m', 60],
    ['s', 1]
  ]
  const parts: string[] = []
  let rest = s
  for (const [u, size] of units) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${u}`)
      rest %= size
    }
    if (parts.length === 2) break
  }
  return parts.join(' ')
}
