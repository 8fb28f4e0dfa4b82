// One contract for both media backends, with real HTTP uploads and downloads (fetch, as a device
// does): MinIO (the test service) and the embedded files-on-disk backend behind its signed URLs.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import Fastify, { type FastifyInstance } from 'fastify'
import { Client as MinioClient } from 'minio'
import { freePort } from '../../../scripts/services.js'
import { eventually } from '../../../test/helpers/broker-process.js'
import { s3Settings } from '../../../test/helpers/services.js'
import type { MediaBackend, UploadTicket } from '../backend.js'
import { newMediaId } from '../ids.js'
import { LocalMediaBackend } from '../local-backend.js'
import { S3MediaBackend } from '../s3-backend.js'

interface Opened {
  backend: MediaBackend
  done: () => Promise<void>
}

export function minioClient(): MinioClient {
  const s = s3Settings()
  const url = new URL(s.endpoint)
  return new MinioClient({
    endPoint: url.hostname,
    port: Number(url.port),
    useSSL: url.protocol === 'https:',
    region: 'us-east-1',
    accessKey: s.accessKey,
    secretKey: s.secretKey,
    pathStyle: true
  })
}

const backends: Array<[string, () => Promise<Opened>]> = [
  [
    'embedded (local disk, signed URLs)',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'parley-media-'))
      const port = await freePort()
      const backend = new LocalMediaBackend({ dir, secret: randomBytes(32), publicUrl: `http://127.0.0.1:${port}` })
      const app: FastifyInstance = Fastify()
      for (const route of backend.routes()) app.route(route)
      await app.listen({ host: '127.0.0.1', port })
      return {
        backend,
        done: async () => {
          await app.close()
          rmSync(dir, { recursive: true, force: true })
        }
      }
    }
  ],
  [
    'S3 (MinIO)',
    async () => {
      const client = minioClient()
      const bucket = `parley-contract-${randomBytes(4).toString('hex')}`
      await client.makeBucket(bucket, 'us-east-1')
      return {
        backend: new S3MediaBackend(client, bucket),
        done: async () => {
          const names: string[] = []
          for await (const o of client.listObjectsV2(bucket, '', true)) if ((o as { name?: string }).name) names.push((o as { name: string }).name)
          await client.removeObjects(bucket, names)
          await client.removeBucket(bucket)
        }
      }
    }
  ]
]

/** POSTs the form a device would; undefined when the store closed the connection instead of answering. */
async function upload(ticket: UploadTicket, data: Buffer, contentType?: string): Promise<Response | undefined> {
  const fd = new FormData()
  for (const [k, v] of Object.entries(ticket.fields)) fd.append(k, k === 'Content-Type' && contentType ? contentType : v)
  fd.append(ticket.fileField, new Blob([data]), 'upload.bin')
  try {
    return await fetch(ticket.url, { method: 'POST', body: fd, signal: AbortSignal.timeout(10_000) })
  } catch {
    return undefined
  }
}

const soon = (ms = 60_000) => Date.now() + ms
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

for (const [name, open] of backends) {
  describe(`media backend contract: ${name}`, () => {
    let o: Opened
    before(async () => {
      o = await open()
    })
    after(async () => o?.done())
    const id = () => newMediaId('dm:alice:bob')

    it('stores an upload of the declared type and size, serves it back, lists and removes it', async () => {
      const { backend } = o
      const data = randomBytes(4096)
      const key = id()
      const ticket = await backend.presignUpload({ id: key, mime: 'image/png', size: data.length, expiresAt: soon() })
      assert.equal(ticket.method, 'POST')
      const res = await upload(ticket, data)
      assert.equal(res?.status, 204, await res?.text())
      const info = await backend.stat(key)
      assert.equal(info?.size, data.length)
      assert.equal(info?.contentType, 'image/png')
      const url = await backend.presignDownload({ id: key, expiresAt: soon(), attachment: false })
      const got = await fetch(url)
      assert.equal(got.status, 200)
      assert.equal(got.headers.get('content-type'), 'image/png')
      assert.ok(Buffer.from(await got.arrayBuffer()).equals(data), 'the same bytes come back')
      const part = await fetch(url, { headers: { range: 'bytes=10-19' } })
      assert.equal(part.status, 206)
      assert.ok(Buffer.from(await part.arrayBuffer()).equals(data.subarray(10, 20)), 'a range of it')
      const saved = await fetch(await backend.presignDownload({ id: key, expiresAt: soon(), attachment: true }))
      assert.match(saved.headers.get('content-disposition') ?? '', /^attachment/)
      await saved.arrayBuffer()
      assert.ok((await backend.list({ limit: 1000 })).objects.some((x) => x.id === key && x.size === data.length))
      await backend.remove(key)
      await backend.remove(key) // idempotent
      assert.equal(await backend.stat(key), undefined)
      assert.equal((await fetch(url)).status, 404)
    })

    it('refuses an upload larger or smaller than declared, or of another type, and keeps nothing', async () => {
      const { backend } = o
      // S3's answers: 400 EntityTooLarge / EntityTooSmall, 403 AccessDenied (policy condition failed).
      const cases: Array<[string, number, Buffer, string | undefined, number]> = [
        ['one byte too many', 100, randomBytes(101), undefined, 400],
        ['far too large', 1000, randomBytes(3 * 1024 * 1024), undefined, 400],
        ['too small', 100, randomBytes(99), undefined, 400],
        ['another Content-Type', 100, randomBytes(100), 'text/html', 403]
      ]
      for (const [what, size, data, contentType, status] of cases) {
        const key = id()
        const res = await upload(await backend.presignUpload({ id: key, mime: 'image/jpeg', size, expiresAt: soon() }), data, contentType)
        assert.equal(res?.status, status, `${what}: refused`)
        assert.equal(await backend.stat(key), undefined, `${what}: nothing stored`)
      }
    })

    it('checks a declared SHA-256', async () => {
      const { backend } = o
      const data = randomBytes(2000)
      const bad = id()
      const res0 = await upload(await backend.presignUpload({ id: bad, mime: 'audio/ogg', size: 2000, sha256: sha(randomBytes(2000)), expiresAt: soon() }), data)
      assert.equal(res0?.status, 400, 'XAmzContentChecksumMismatch')
      assert.equal(await backend.stat(bad), undefined)
      const good = id()
      const res = await upload(await backend.presignUpload({ id: good, mime: 'audio/ogg', size: 2000, sha256: sha(data), expiresAt: soon() }), data)
      assert.equal(res?.status, 204)
      assert.equal((await backend.stat(good))?.size, 2000)
    })

    it('refuses an expired or tampered upload URL', async () => {
      const { backend } = o
      const data = randomBytes(10)
      const late = id()
      assert.equal((await upload(await backend.presignUpload({ id: late, mime: 'image/png', size: 10, expiresAt: Date.now() - 1000 }), data))?.status, 403)
      const other = id()
      const ticket = await backend.presignUpload({ id: other, mime: 'image/png', size: 10, expiresAt: soon() })
      // Another size than signed: the query (embedded) or the policy (S3) no longer matches its signature.
      const tampered: UploadTicket = {
        ...ticket,
        url: ticket.url.replace('size=10', 'size=11'),
        fields: ticket.fields.policy ? { ...ticket.fields, policy: Buffer.from(Buffer.from(ticket.fields.policy, 'base64').toString().replace('10,10', '11,11')).toString('base64') } : ticket.fields
      }
      const res = await upload(tampered, randomBytes(11))
      assert.equal(res?.status, 403)
      assert.equal(await backend.stat(late), undefined)
      assert.equal(await backend.stat(other), undefined)
    })

    it('refuses a download URL once it has expired', async () => {
      const { backend } = o
      const key = id()
      assert.equal((await upload(await backend.presignUpload({ id: key, mime: 'video/mp4', size: 64, expiresAt: soon() }), randomBytes(64)))?.status, 204)
      const url = await backend.presignDownload({ id: key, expiresAt: Date.now() + 1000, attachment: false })
      let last = 0
      await eventually(
        async () => {
          const res = await fetch(url)
          await res.arrayBuffer()
          last = res.status
          return last === 403
        },
        10_000,
        'the download URL to expire'
      )
      assert.equal(last, 403)
      const tampered = new URL(await backend.presignDownload({ id: key, expiresAt: soon(), attachment: false }))
      tampered.pathname = tampered.pathname.replace(key, id())
      assert.equal((await fetch(tampered)).status, 403, 'a URL for another object is refused')
    })

    it('lists objects in pages', async () => {
      const { backend } = o
      const keys = [id(), id(), id()]
      for (const key of keys) assert.equal((await upload(await backend.presignUpload({ id: key, mime: 'image/png', size: 5, expiresAt: soon() }), randomBytes(5)))?.status, 204)
      const seen: string[] = []
      let startAfter: string | undefined
      for (let i = 0; i < 20; i++) {
        const page = await backend.list({ startAfter, limit: 2 })
        assert.ok(page.objects.length <= 2)
        seen.push(...page.objects.map((x) => x.id))
        if (!page.next) break
        startAfter = page.next
      }
      for (const key of keys) assert.ok(seen.includes(key), `${key} listed`)
      assert.deepEqual(seen, [...seen].sort(), 'in id order')
      assert.equal(new Set(seen).size, seen.length, 'each once')
    })
  })
}

describe('S3 backend: URLs for the devices\' address of the store', () => {
  it('signs uploads and downloads for the presigner\'s host', async () => {
    const client = minioClient()
    const s = s3Settings()
    const url = new URL(s.endpoint)
    // The node reaches MinIO at 127.0.0.1; devices, say, at localhost: another host in the signature.
    const presigner = new MinioClient({
      endPoint: 'localhost',
      port: Number(url.port),
      useSSL: false,
      region: 'us-east-1',
      accessKey: s.accessKey,
      secretKey: s.secretKey,
      pathStyle: true
    })
    const bucket = `parley-presign-${randomBytes(4).toString('hex')}`
    await client.makeBucket(bucket, 'us-east-1')
    try {
      const backend = new S3MediaBackend(client, bucket, { presigner })
      const key = newMediaId('g:team')
      const ticket = await backend.presignUpload({ id: key, mime: 'image/webp', size: 32, expiresAt: soon() })
      assert.equal(new URL(ticket.url).hostname, 'localhost')
      const data = randomBytes(32)
      assert.equal((await upload(ticket, data))?.status, 204)
      assert.equal((await backend.stat(key))?.size, 32, 'stat goes through the node\'s own client')
      const download = await backend.presignDownload({ id: key, expiresAt: soon(), attachment: false })
      assert.equal(new URL(download).hostname, 'localhost')
      assert.ok(Buffer.from(await (await fetch(download)).arrayBuffer()).equals(data))
      await backend.remove(key)
    } finally {
      await client.removeBucket(bucket)
    }
  })
})

describe('embedded backend: what only local disk needs', () => {
  it('keeps nothing of an upload cut off midway, and refuses ids that are not media ids', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-media-'))
    const port = await freePort()
    const backend = new LocalMediaBackend({ dir, secret: randomBytes(32), publicUrl: `http://127.0.0.1:${port}` })
    const app = Fastify()
    for (const route of backend.routes()) app.route(route)
    await app.listen({ host: '127.0.0.1', port })
    try {
      const key = newMediaId('dm:a:b')
      const ticket = await backend.presignUpload({ id: key, mime: 'image/png', size: 100_000, expiresAt: soon() })
      const boundary = 'xyzzy'
      const head = `--${boundary}\r\nContent-Disposition: form-data; name="Content-Type"\r\n\r\nimage/png\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n`
      const req = request(ticket.url, { method: 'POST', headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': head.length + 100_000 + 12 } })
      req.on('error', () => undefined)
      req.write(head)
      req.write(randomBytes(40_000))
      await eventually(() => readdirSync(join(dir, 'tmp')).length > 0, 5000, 'the upload under way')
      req.destroy()
      await eventually(() => readdirSync(join(dir, 'tmp')).length === 0, 5000, 'the partial file removed')
      assert.equal(await backend.stat(key), undefined)
      const traversal = ticket.url.replace(`/upload/${key}`, '/upload/%2E%2E%2Furl-secret')
      assert.equal((await upload({ ...ticket, url: traversal }, randomBytes(10)))?.status, 403)
      await assert.rejects(backend.stat('../../etc/passwd'), /not a media id/)
    } finally {
      await app.close()
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
