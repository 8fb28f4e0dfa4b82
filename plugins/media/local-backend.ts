// The embedded media backend: objects are files under <dataDir>/media/objects, uploaded and
// downloaded straight from devices through two routes of the operations listener, authorised by
// HMAC-SHA256 signatures in the URL (key: a secret generated once in the data directory). It
// follows S3's presigned POST closely so that a device has one way to upload:
//   POST <publicUrl>/plugins/media/upload/<id>?ct=&size=&exp=[&sha=]&sig=
//        multipart/form-data: the `fields` (Content-Type), then the file as `file`;
//        204 when stored; 400 EntityTooLarge / EntityTooSmall / XAmzContentChecksumMismatch /
//        MalformedPOSTRequest; 403 AccessDenied (expired, bad signature, other Content-Type)
//   GET  <publicUrl>/plugins/media/file/<id>?exp=[&dl=1]&sig=    (Range: bytes=a-b supported)
// The store refuses what S3 would: a body larger than declared is cut off as soon as it is,
// and nothing is visible under the id until the whole file is on disk (and synced).
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { chmodSync, createReadStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { open, readFile, readdir, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { join } from 'node:path'
import type { FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { DownloadRequest, ListedObject, MediaBackend, ObjectInfo, UploadRequest, UploadTicket } from './backend.js'
import { isMediaId } from './ids.js'
import { MultipartError, boundaryOf, parseMultipart, type PartSink } from './multipart.js'

export const ROUTE_PREFIX = '/plugins/media'
/** Form fields and boundaries around the file: S3 allows 20 KB. */
const FORM_OVERHEAD_BYTES = 20 * 1024
/** An upload that sends nothing for this long is cut off (the listener sets no request timeout). */
const UPLOAD_IDLE_MS = 30_000

/** The URL-signing key: generated once (mode 0600) in the data directory, like the JWT secret. */
export function loadSecret(file: string): Buffer {
  if (!existsSync(file)) {
    mkdirSync(join(file, '..'), { recursive: true })
    try {
      writeFileSync(file, randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    chmodSync(file, 0o600)
  }
  const text = readFileSync(file, 'utf8').trim()
  if (text.length < 32) throw new Error(`the media URL secret in ${file} is shorter than 32 characters`)
  return Buffer.from(text)
}

interface Meta {
  contentType: string
}

class UploadRefused extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string
  ) {
    super(message)
  }
}

const xmlEscape = (s: string) => s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`)

/** An S3-style error body, so devices handle both backends' refusals alike. */
function sendError(res: ServerResponse, status: number, code: string, message: string, close = false): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message></Error>`
  res.writeHead(status, {
    'content-type': 'application/xml',
    'content-length': Buffer.byteLength(body),
    ...(close ? { connection: 'close' } : {})
  })
  res.end(body)
}

export interface LocalBackendOptions {
  /** Directory of the objects (created). */
  dir: string
  secret: Buffer
  /** Base URL devices reach the operations listener at, e.g. https://chat.example.com:9443. */
  publicUrl: string
}

export class LocalMediaBackend implements MediaBackend {
  readonly name = 'embedded'
  private readonly objects: string
  private readonly tmp: string
  private readonly base: string

  constructor(private readonly opts: LocalBackendOptions) {
    this.objects = join(opts.dir, 'objects')
    this.tmp = join(opts.dir, 'tmp')
    mkdirSync(this.objects, { recursive: true })
    // Uploads cut short by a crash leave files here; no upload runs before the routes are served.
    rmSync(this.tmp, { recursive: true, force: true })
    mkdirSync(this.tmp, { recursive: true })
    this.base = opts.publicUrl.replace(/\/+$/, '')
  }

  private sign(...parts: Array<string | number>): string {
    return createHmac('sha256', this.opts.secret).update(parts.join('\n')).digest('base64url')
  }

  private verify(sig: unknown, ...parts: Array<string | number>): boolean {
    if (typeof sig !== 'string') return false
    const expected = Buffer.from(this.sign(...parts))
    const given = Buffer.from(sig)
    return given.length === expected.length && timingSafeEqual(given, expected)
  }

  private checked(id: string): string {
    if (!isMediaId(id)) throw new Error(`not a media id: ${id}`)
    return id
  }

  private path(id: string): string {
    return join(this.objects, this.checked(id))
  }

  async presignUpload(r: UploadRequest): Promise<UploadTicket> {
    const q = new URLSearchParams({ ct: r.mime, size: String(r.size), exp: String(r.expiresAt) })
    if (r.sha256) q.set('sha', r.sha256.toLowerCase())
    q.set('sig', this.sign('up', r.id, r.mime, r.size, r.expiresAt, r.sha256?.toLowerCase() ?? ''))
    return {
      method: 'POST',
      url: `${this.base}${ROUTE_PREFIX}/upload/${this.checked(r.id)}?${q.toString()}`,
      fields: { 'Content-Type': r.mime },
      fileField: 'file',
      expiresAt: r.expiresAt
    }
  }

  async presignDownload(r: DownloadRequest): Promise<string> {
    const q = new URLSearchParams({ exp: String(r.expiresAt) })
    if (r.attachment) q.set('dl', '1')
    q.set('sig', this.sign('get', r.id, r.expiresAt, r.attachment ? '1' : ''))
    return `${this.base}${ROUTE_PREFIX}/file/${this.checked(r.id)}?${q.toString()}`
  }

  async stat(id: string): Promise<ObjectInfo | undefined> {
    const file = this.path(id)
    try {
      const [s, meta] = await Promise.all([stat(file), readFile(`${file}.json`, 'utf8')])
      return { id, size: s.size, contentType: (JSON.parse(meta) as Meta).contentType, lastModified: s.mtimeMs }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  async remove(id: string): Promise<void> {
    const file = this.path(id)
    await rm(file, { force: true })
    await rm(`${file}.json`, { force: true })
  }

  async list(options: { startAfter?: string | undefined; limit: number }): Promise<{ objects: ListedObject[]; next?: string | undefined }> {
    const ids = (await readdir(this.objects))
      .filter((n) => isMediaId(n) && (options.startAfter === undefined || n > options.startAfter))
      .sort()
    const page = ids.slice(0, Math.max(1, options.limit))
    const objects: ListedObject[] = []
    for (const id of page) {
      const s = await stat(join(this.objects, id)).catch(() => undefined)
      if (s) objects.push({ id, size: s.size, lastModified: s.mtimeMs })
    }
    return { objects, next: ids.length > page.length ? page.at(-1) : undefined }
  }

  /** The two routes, for the operations listener (ctx.route). */
  routes(): RouteOptions[] {
    return [
      {
        method: 'POST',
        url: `${ROUTE_PREFIX}/upload/:id`,
        // The body is multipart/form-data, streamed to disk: take the request before Fastify
        // looks for a body parser (it has none for multipart and would answer 415).
        onRequest: async (request: FastifyRequest, reply: FastifyReply) => {
          reply.hijack()
          await this.upload(request.params as Record<string, string>, request.query as Record<string, string>, request.raw, reply.raw)
        },
        handler: async () => undefined
      },
      {
        method: 'GET',
        url: `${ROUTE_PREFIX}/file/:id`,
        handler: async (request: FastifyRequest, reply: FastifyReply) => {
          const { id } = request.params as Record<string, string>
          const q = request.query as Record<string, string | undefined>
          return this.download(id ?? '', q, request.headers.range, reply)
        }
      }
    ]
  }

  private async upload(params: Record<string, string>, q: Record<string, string>, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const id = params.id ?? ''
    const size = Number(q.size)
    const exp = Number(q.exp)
    const sha = q.sha ?? ''
    if (!isMediaId(id) || !q.ct || !Number.isSafeInteger(size) || !Number.isSafeInteger(exp) || !this.verify(q.sig, 'up', id, q.ct, size, exp, sha)) {
      return sendError(res, 403, 'SignatureDoesNotMatch', 'the upload URL is not valid', true)
    }
    if (Date.now() > exp) return sendError(res, 403, 'AccessDenied', 'Invalid according to Policy: Policy expired.', true)
    const boundary = boundaryOf(req.headers['content-type'])
    if (!boundary) return sendError(res, 400, 'MalformedPOSTRequest', 'the body must be multipart/form-data', true)
    const declared = Number(req.headers['content-length'])
    if (Number.isFinite(declared) && declared > size + FORM_OVERHEAD_BYTES) {
      return sendError(res, 400, 'EntityTooLarge', 'Your proposed upload exceeds the maximum allowed object size.', true)
    }

    const socket = req.socket
    const onIdle = () => socket.destroy()
    socket.setTimeout(UPLOAD_IDLE_MS)
    socket.on('timeout', onIdle)
    const tmpFile = join(this.tmp, `${id}.${randomBytes(6).toString('hex')}`)
    let fh: FileHandle | undefined
    let received = 0
    let fileDone = false
    const fields = new Map<string, string>()
    const hash = createHash('sha256')
    try {
      await parseMultipart(req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>, boundary, (part): PartSink => {
        if (fileDone) throw new UploadRefused(400, 'MalformedPOSTRequest', 'the file must be the last part of the form')
        if (part.name !== 'file') {
          let value = ''
          return {
            write: (chunk) => {
              value += chunk.toString('utf8')
              if (value.length > 8192) throw new UploadRefused(400, 'MalformedPOSTRequest', `form field ${part.name} is too long`)
            },
            end: () => {
              fields.set(part.name.toLowerCase(), value)
            }
          }
        }
        // The file: the policy's conditions are checked on the fields before a byte is stored.
        if (fields.get('content-type') !== q.ct) {
          throw new UploadRefused(403, 'AccessDenied', 'Invalid according to Policy: Policy Condition failed: ["eq", "$Content-Type", …]')
        }
        return {
          write: async (chunk) => {
            received += chunk.length
            if (received > size) throw new UploadRefused(400, 'EntityTooLarge', 'Your proposed upload exceeds the maximum allowed object size.')
            hash.update(chunk)
            fh ??= await open(tmpFile, 'wx', 0o600)
            await fh.write(chunk)
          },
          end: async () => {
            fileDone = true
            if (received < size) throw new UploadRefused(400, 'EntityTooSmall', 'Your proposed upload is smaller than the minimum allowed object size.')
            if (sha && hash.digest('hex') !== sha) {
              throw new UploadRefused(400, 'XAmzContentChecksumMismatch', "The provided 'x-amz-checksum' header does not match what was computed.")
            }
            fh ??= await open(tmpFile, 'wx', 0o600) // an empty file
            await fh.datasync()
            await fh.close()
            fh = undefined
          }
        }
      })
      if (!fileDone) throw new UploadRefused(400, 'MalformedPOSTRequest', 'the form has no file part')
      // Metadata first: an object file never exists without its metadata. Renames are atomic.
      const file = this.path(id)
      const metaTmp = `${tmpFile}.json`
      await writeFile(metaTmp, JSON.stringify({ contentType: q.ct } satisfies Meta), { mode: 0o600 })
      await rename(metaTmp, `${file}.json`)
      await rename(tmpFile, file)
      res.writeHead(204)
      res.end()
    } catch (err) {
      await fh?.close().catch(() => undefined)
      await rm(tmpFile, { force: true }).catch(() => undefined)
      if (err instanceof UploadRefused) return sendError(res, err.status, err.code, err.message, true)
      if (err instanceof MultipartError) return sendError(res, 400, 'MalformedPOSTRequest', err.message, true)
      if (socket.destroyed) return // the device went away (or stalled): nothing to answer
      sendError(res, 500, 'InternalError', 'the upload could not be stored', true)
      throw err
    } finally {
      socket.setTimeout(0)
      socket.off('timeout', onIdle)
    }
  }

  private async download(id: string, q: Record<string, string | undefined>, range: string | undefined, reply: FastifyReply): Promise<unknown> {
    const exp = Number(q.exp)
    const attachment = q.dl === '1'
    const fail = (status: number, code: string, message: string) =>
      reply
        .code(status)
        .type('application/xml')
        .send(`<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message></Error>`)
    if (!isMediaId(id) || !Number.isSafeInteger(exp) || !this.verify(q.sig, 'get', id, exp, attachment ? '1' : '')) {
      return fail(403, 'SignatureDoesNotMatch', 'the download URL is not valid')
    }
    if (Date.now() > exp) return fail(403, 'AccessDenied', 'Request has expired')
    const info = await this.stat(id)
    if (!info) return fail(404, 'NoSuchKey', 'The specified key does not exist.')
    reply.headers({
      'content-type': info.contentType,
      'accept-ranges': 'bytes',
      'x-content-type-options': 'nosniff',
      'content-security-policy': "default-src 'none'; sandbox",
      'cache-control': `private, max-age=${Math.max(0, Math.floor((exp - Date.now()) / 1000))}`,
      'last-modified': new Date(info.lastModified).toUTCString(),
      ...(attachment ? { 'content-disposition': 'attachment' } : {})
    })
    const r = range ? parseRange(range, info.size) : undefined
    if (r === null) {
      return reply.code(416).header('content-range', `bytes */${info.size}`).send()
    }
    const file = this.path(id)
    if (r) {
      reply.code(206).header('content-range', `bytes ${r.start}-${r.end}/${info.size}`).header('content-length', r.end - r.start + 1)
      return reply.send(createReadStream(file, { start: r.start, end: r.end }))
    }
    reply.header('content-length', info.size)
    return reply.send(createReadStream(file))
  }
}

/** One `bytes=a-b`, `bytes=a-` or `bytes=-n` range; undefined: serve it all; null: not satisfiable. */
export function parseRange(header: string, size: number): { start: number; end: number } | undefined | null {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (!m || (m[1] === '' && m[2] === '')) return undefined // several ranges or a malformed one: the whole object
  if (m[1] === '') {
    const n = Number(m[2])
    if (n === 0) return null
    return { start: Math.max(0, size - n), end: size - 1 }
  }
  const start = Number(m[1])
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1)
  if (start >= size || end < start) return null
  return { start, end }
}
