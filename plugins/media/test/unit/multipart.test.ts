// The streaming multipart parser of the embedded upload route: bodies made by the platform's own
// FormData (as devices send them), fed in chunks of every size so that boundaries and headers
// split across chunks are covered.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { describe, it } from 'node:test'
import { MultipartError, boundaryOf, parseMultipart } from '../../multipart.js'

async function encode(fd: FormData): Promise<{ body: Buffer; boundary: string }> {
  const res = new Response(fd)
  const boundary = boundaryOf(res.headers.get('content-type') ?? undefined)
  assert.ok(boundary, 'FormData gives a boundary')
  return { body: Buffer.from(await res.arrayBuffer()), boundary }
}

async function* chunks(body: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < body.length; i += size) yield body.subarray(i, i + size)
}

async function parse(body: Buffer, boundary: string, chunkSize: number) {
  const parts: Array<{ name: string; filename?: string | undefined; data: Buffer }> = []
  await parseMultipart(chunks(body, chunkSize), boundary, (h) => {
    const data: Buffer[] = []
    return {
      write: (c) => {
        data.push(Buffer.from(c))
      },
      end: () => {
        parts.push({ name: h.name, filename: h.filename, data: Buffer.concat(data) })
      }
    }
  })
  return parts
}

describe('multipart parser', () => {
  it('reads fields and the file whatever the chunk size', async () => {
    // A file whose bytes include CRLFs and dashes, as a boundary would.
    const file = Buffer.concat([randomBytes(300), Buffer.from('\r\n--\r\n--x\r\n'), randomBytes(100)])
    const fd = new FormData()
    fd.append('Content-Type', 'image/png')
    fd.append('key', 'abc')
    fd.append('file', new Blob([file]), 'photo.png')
    const { body, boundary } = await encode(fd)
    for (const size of [1, 2, 3, 7, 16, 41, 64, 100, 1000, body.length]) {
      const parts = await parse(body, boundary, size)
      assert.deepEqual(
        parts.map((p) => [p.name, p.filename]),
        [
          ['Content-Type', undefined],
          ['key', undefined],
          ['file', 'photo.png']
        ],
        `chunks of ${size}`
      )
      assert.equal(parts[0]!.data.toString(), 'image/png')
      assert.ok(parts[2]!.data.equals(file), `file intact with chunks of ${size}`)
    }
  })

  it('reads an empty file part', async () => {
    const fd = new FormData()
    fd.append('file', new Blob([]), 'empty')
    const { body, boundary } = await encode(fd)
    const parts = await parse(body, boundary, 5)
    assert.equal(parts[0]!.data.length, 0)
  })

  it('refuses a truncated body, a body without a boundary and oversized headers', async () => {
    const fd = new FormData()
    fd.append('file', new Blob([randomBytes(50)]), 'f')
    const { body, boundary } = await encode(fd)
    await assert.rejects(parse(body.subarray(0, body.length - 10), boundary, 8), MultipartError)
    await assert.rejects(parse(randomBytes(5000), boundary, 100), /no boundary/)
    const huge = Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="a"\r\nX: ${'y'.repeat(9000)}\r\n\r\nv\r\n--${boundary}--\r\n`)
    await assert.rejects(parse(huge, boundary, 512), /headers too long/)
  })

  it('stops at the closing boundary and passes on a sink\'s refusal', async () => {
    const fd = new FormData()
    fd.append('file', new Blob([randomBytes(1000)]), 'f')
    const { body, boundary } = await encode(fd)
    const withEpilogue = Buffer.concat([body, Buffer.from('anything after the end')])
    assert.equal((await parse(withEpilogue, boundary, 33)).length, 1)
    let seen = 0
    await assert.rejects(
      parseMultipart(chunks(body, 100), boundary, () => ({
        write: (c) => {
          seen += c.length
          if (seen > 300) throw new Error('too large')
        },
        end: () => undefined
      })),
      /too large/
    )
    assert.ok(seen <= 400, 'the parser stopped reading soon after the refusal')
  })

  it('finds the boundary of a Content-Type', () => {
    assert.equal(boundaryOf('multipart/form-data; boundary=abc'), 'abc')
    assert.equal(boundaryOf('multipart/form-data; charset=utf-8; boundary="a b"'), 'a b')
    assert.equal(boundaryOf('application/json'), undefined)
    assert.equal(boundaryOf(undefined), undefined)
  })
})
