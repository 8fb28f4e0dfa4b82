// A small streaming multipart/form-data parser (RFC 7578) for the embedded upload route: form
// fields are small and kept, the file part is handed on chunk by chunk (never held in memory),
// with back-pressure: the parser awaits each write before it reads on.

export class MultipartError extends Error {}

export interface PartHeaders {
  name: string
  filename?: string | undefined
  contentType?: string | undefined
}

/** Receives one part's bytes. A throw aborts the parse with that error. */
export interface PartSink {
  write(chunk: Buffer): Promise<void> | void
  end(): Promise<void> | void
}

export interface MultipartLimits {
  /** Bytes of one part's header block. */
  maxHeaderBytes: number
  /** Parts in the whole body. */
  maxParts: number
  /** Bytes of preamble before the first boundary. */
  maxPreambleBytes: number
}

const DEFAULT_LIMITS: MultipartLimits = { maxHeaderBytes: 8192, maxParts: 32, maxPreambleBytes: 1024 }

/** The boundary of a `multipart/form-data; boundary=…` Content-Type, or undefined. */
export function boundaryOf(contentType: string | undefined): string | undefined {
  if (!contentType || !/^multipart\/form-data\s*;/i.test(contentType)) return undefined
  const m = /;\s*boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))/i.exec(contentType)
  return m?.[1] ?? m?.[2]
}

function parseHeaders(block: string): PartHeaders {
  let name: string | undefined
  let filename: string | undefined
  let contentType: string | undefined
  for (const line of block.split('\r\n')) {
    const colon = line.indexOf(':')
    if (colon <= 0) throw new MultipartError('malformed part header')
    const key = line.slice(0, colon).trim().toLowerCase()
    const value = line.slice(colon + 1).trim()
    if (key === 'content-disposition') {
      if (!/^form-data\b/i.test(value)) throw new MultipartError('part is not form-data')
      name = /(?:^|;)\s*name="([^"]*)"/i.exec(value)?.[1] ?? /(?:^|;)\s*name=([^;\s]+)/i.exec(value)?.[1]
      filename = /(?:^|;)\s*filename="([^"]*)"/i.exec(value)?.[1]
    } else if (key === 'content-type') contentType = value
  }
  if (name === undefined) throw new MultipartError('part without a name')
  return { name, filename, contentType }
}

/**
 * Reads `source` until the closing boundary, calling `onPart` for each part and feeding its sink.
 * Resolves once the closing boundary is read (whatever follows it is not read); rejects with a
 * MultipartError for a malformed or truncated body, or with whatever a sink throws.
 */
export async function parseMultipart(
  source: AsyncIterable<Buffer>,
  boundary: string,
  onPart: (headers: PartHeaders) => PartSink,
  limits: Partial<MultipartLimits> = {}
): Promise<void> {
  const { maxHeaderBytes, maxParts, maxPreambleBytes } = { ...DEFAULT_LIMITS, ...limits }
  const delimiter = Buffer.from(`\r\n--${boundary}`)
  const keep = delimiter.length - 1
  // A CRLF in front lets the first boundary (which may start the body) match like the others.
  let buf: Buffer = Buffer.from('\r\n')
  let state: 'preamble' | 'after' | 'headers' | 'body' = 'preamble'
  let sink: PartSink | undefined
  let parts = 0
  let preamble = 0

  for await (const chunk of source) {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk
    for (;;) {
      if (state === 'preamble' || state === 'body') {
        const at = buf.indexOf(delimiter)
        if (at === -1) {
          // Hand on all but a tail that could be the start of the delimiter.
          const safe = Math.max(0, buf.length - keep)
          if (state === 'body' && safe > 0) await sink!.write(buf.subarray(0, safe))
          if (state === 'preamble' && (preamble += safe) > maxPreambleBytes) throw new MultipartError('no boundary where the body starts')
          buf = buf.subarray(safe)
          break
        }
        if (state === 'body') {
          if (at > 0) await sink!.write(buf.subarray(0, at))
          await sink!.end()
          sink = undefined
        }
        buf = buf.subarray(at + delimiter.length)
        state = 'after'
      }
      if (state === 'after') {
        if (buf.length < 2) break
        if (buf[0] === 0x2d && buf[1] === 0x2d) return // "--": the closing boundary
        if (buf[0] !== 0x0d || buf[1] !== 0x0a) throw new MultipartError('malformed boundary line')
        buf = buf.subarray(2)
        state = 'headers'
      }
      if (state === 'headers') {
        const end = buf.indexOf('\r\n\r\n')
        if (end === -1) {
          if (buf.length > maxHeaderBytes) throw new MultipartError('part headers too long')
          break
        }
        if (end > maxHeaderBytes) throw new MultipartError('part headers too long')
        if (++parts > maxParts) throw new MultipartError('too many parts')
        sink = onPart(parseHeaders(buf.subarray(0, end).toString('utf8')))
        buf = buf.subarray(end + 4)
        state = 'body'
      }
    }
  }
  throw new MultipartError('the body ended before the closing boundary')
}
