// The media plugin end to end, once on the embedded backend (files on disk behind signed URLs on
// the operations listener, SQLite records) and once on the real services (MinIO, MongoDB-compatible
// records): real mqtt.js devices ask for URLs over the protocol, and upload and download over real
// HTTP with fetch, as an app does.
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { after, before, describe, it } from 'node:test'
import type { ParleyPlugin } from '../../../broker/plugin-api.js'
import type { ConfigInput } from '../../../schemas/config.js'
import { freePort } from '../../../scripts/services.js'
import { eventually } from '../../../test/helpers/broker-process.js'
import { testDevice, type TestDevice } from '../../../test/helpers/device.js'
import { startNode, type TestNode } from '../../../test/helpers/node.js'
import { mongoUrl, s3Settings } from '../../../test/helpers/services.js'
import { newMediaId } from '../ids.js'
import type { MediaApi } from '../index.js'

interface UploadAnswer {
  id: string
  kind: string
  upload: { method: string; url: string; fields: Record<string, string>; fileField: string }
  expiresAt: number
}
interface DownloadAnswer {
  url: string
  expiresAt: number
  mime: string
  size: number
}

const KIB = 1024
const mediaConfig = {
  kinds: { image: { maxBytes: 64 * KIB }, file: { types: ['application/pdf'] } },
  orphanAfterMs: 3_600_000,
  downloadUrlTtlSeconds: 60
}

const backends: Array<[string, () => Promise<ConfigInput & { publicUrl?: string }>]> = [
  [
    'embedded backend',
    async () => {
      // Devices reach the embedded routes through publicUrl: the ops port must be known before start.
      const port = await freePort()
      return { listeners: { ops: { host: '127.0.0.1', port } }, publicUrl: `http://127.0.0.1:${port}` }
    }
  ],
  [
    'MinIO and MongoDB (FerretDB)',
    async () => ({
      s3: { ...s3Settings(), bucket: `parley-media-${randomBytes(3).toString('hex')}` },
      mongo: { url: mongoUrl(), database: `parley_media_${randomBytes(3).toString('hex')}` }
    })
  ]
]

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** The upload an app makes: the fields in order, then the file. */
async function post(u: UploadAnswer, data: Buffer): Promise<number> {
  const fd = new FormData()
  for (const [k, v] of Object.entries(u.upload.fields)) fd.append(k, v)
  fd.append(u.upload.fileField, new Blob([data]), 'photo.png')
  const res = await fetch(u.upload.url, { method: u.upload.method, body: fd, signal: AbortSignal.timeout(10_000) })
  await res.arrayBuffer()
  return res.status
}

for (const [name, backend] of backends) {
  describe(`media on the ${name}`, () => {
    let t: TestNode
    let api: MediaApi | undefined
    let run = ''
    const u = (n: string) => `${n}${run}`
    const devices: TestDevice[] = []
    const dev = async (user: string) => {
      const d = await testDevice(t.mqttUrl, user)
      devices.push(d)
      return d
    }

    before(async () => {
      run = randomBytes(2).toString('hex')
      const { publicUrl, ...input } = await backend()
      const probe: ParleyPlugin = {
        name: 'media-probe',
        dependencies: ['media'],
        register: (ctx) => {
          api = (ctx as unknown as { dependency(n: 'media'): MediaApi }).dependency('media')
        }
      }
      t = await startNode(
        {
          ...input,
          plugins: ['protocol', 'groups', 'messages', { use: 'media', config: { ...mediaConfig, ...(publicUrl ? { publicUrl } : {}) } }, 'media-probe']
        },
        { 'media-probe': async () => probe }
      )
      await eventually(async () => (await fetch(`http://127.0.0.1:${t.ops}/readyz`)).status === 200, 15_000, 'stores and bucket ready')
    })
    after(async () => {
      for (const d of devices) await d.end().catch(() => undefined)
      await t?.stop()
    })

    it('lets a member upload and another download, and gives a non-member no URL', async () => {
      const [alice, bob, carol] = await Promise.all([dev(u('alice')), dev(u('bob')), dev(u('carol'))])
      const data = randomBytes(20 * KIB)
      const up = await alice.call<UploadAnswer>('media.upload', { conversation: { kind: 'dm', id: bob.user }, mime: 'image/png', size: data.length, sha256: sha(data) })
      assert.equal(up.kind, 'image')
      assert.match(up.id, /^[0-9a-f]{16}\.[A-Za-z0-9_-]{22}$/)
      assert.equal(await post(up, data), 204)
      const media = { id: up.id, mime: 'image/png', size: data.length, width: 640, height: 480, thumbnail: 'LEHV6nWB2yk8pyo0adR*.7kCMdnj' }
      await alice.send({ dm: bob.user }, { cmid: 'm1', type: 'media', media, body: 'the view' })
      await eventually(() => bob.messages.length === 1, 5000, 'media message delivered')
      assert.deepEqual(bob.messages[0]!.media, media, 'type, size, dimensions and the blurred preview travel with the message')

      const down = await bob.call<DownloadAnswer>('media.download', { id: up.id })
      assert.deepEqual([down.mime, down.size], ['image/png', data.length])
      const got = await fetch(down.url)
      assert.equal(got.status, 200)
      assert.ok(Buffer.from(await got.arrayBuffer()).equals(data), 'bob gets the bytes alice uploaded')
      assert.equal((await alice.call<DownloadAnswer>('media.download', { id: up.id })).size, data.length, 'the uploader too')

      const refused = await carol.rpc('media.download', { id: up.id })
      assert.equal(refused.ok, false)
      assert.equal(refused.error?.code, 'forbidden')
      assert.equal(JSON.stringify(refused).includes('http'), false, 'no URL for a non-member')
    })

    it('scopes group media to the group\'s members', async () => {
      const [ann, ben, dan] = await Promise.all([dev(u('ann')), dev(u('ben')), dev(u('dan'))])
      const group = await ann.call<{ id: string }>('groups.create', { name: 'Media', members: [ben.user] })
      const pdf = randomBytes(3000)
      const outsider = await dan.rpc('media.upload', { conversation: { kind: 'group', id: group.id }, mime: 'application/pdf', size: pdf.length })
      assert.equal(outsider.error?.code, 'not_a_member')
      const up = await ann.call<UploadAnswer>('media.upload', { conversation: { kind: 'group', id: group.id }, mime: 'application/pdf', size: pdf.length })
      assert.equal(up.kind, 'file')
      assert.equal(await post(up, pdf), 204)
      await ann.send({ g: group.id }, { cmid: 'g1', type: 'media', media: { id: up.id, mime: 'application/pdf', size: pdf.length, name: 'report.pdf' } })
      const down = await ben.call<DownloadAnswer>('media.download', { id: up.id })
      const got = await fetch(down.url)
      assert.match(got.headers.get('content-disposition') ?? '', /^attachment/, 'files are saved, not shown')
      assert.ok(Buffer.from(await got.arrayBuffer()).equals(pdf))
      assert.equal((await dan.rpc('media.download', { id: up.id })).error?.code, 'not_a_member')
      // The same id in another conversation is not this conversation's media.
      await ann.send({ dm: dan.user }, { cmid: 'g2', type: 'media', media: { id: up.id, mime: 'application/pdf', size: pdf.length } })
      await eventually(() => ann.errors.some((e) => e.ref.cmid === 'g2'), 5000, 'refusal')
      assert.equal(ann.errors.find((e) => e.ref.cmid === 'g2')?.code, 'invalid_payload')
    })

    it('refuses types and sizes that are not allowed, and an upload larger than declared', async () => {
      const [eve, fay] = await Promise.all([dev(u('eve')), dev(u('fay'))])
      const to = { kind: 'dm', id: fay.user }
      assert.equal((await eve.rpc('media.upload', { conversation: to, mime: 'image/png', size: 64 * KIB + 1 })).error?.code, 'payload_too_large')
      assert.equal((await eve.rpc('media.upload', { conversation: to, mime: 'application/x-msdownload', size: 10 })).error?.code, 'invalid_params')
      assert.equal((await eve.rpc('media.upload', { conversation: to, mime: 'image/png', size: 0 })).error?.code, 'invalid_params')
      const up = await eve.call<UploadAnswer>('media.upload', { conversation: to, mime: 'image/jpeg', size: 1000 })
      assert.equal(await post(up, randomBytes(1001)), 400, 'the store refuses a byte more than declared')
      assert.equal(await post(up, randomBytes(5 * KIB)), 400)
      assert.equal(await api!.backend.stat(up.id), undefined, 'nothing stored')
    })

    it('refuses a message whose object is missing, foreign, mismatched or already sent', async () => {
      const [gus, hal] = await Promise.all([dev(u('gus')), dev(u('hal'))])
      const to = { kind: 'dm', id: hal.user }
      const send = async (cmid: string, media: object, from = gus) => {
        await from.send({ dm: from === gus ? hal.user : gus.user }, { cmid, type: 'media', media })
        await eventually(() => from.errors.some((e) => e.ref.cmid === cmid), 5000, `answer to ${cmid}`)
        return from.errors.find((e) => e.ref.cmid === cmid)!.code
      }
      const never = await gus.call<UploadAnswer>('media.upload', { conversation: to, mime: 'image/png', size: 100 })
      assert.equal(await send('x1', { id: never.id, mime: 'image/png', size: 100 }), 'invalid_payload', 'handed out but never uploaded')
      assert.equal(await send('x2', { id: 'photo-1.jpg', mime: 'image/png', size: 100 }), 'invalid_payload', 'an id the server never handed out')
      const data = randomBytes(100)
      const up = await gus.call<UploadAnswer>('media.upload', { conversation: to, mime: 'image/png', size: 100 })
      assert.equal(await post(up, data), 204)
      assert.equal(await send('x3', { id: up.id, mime: 'image/png', size: 99 }), 'invalid_payload', 'another size than uploaded')
      assert.equal(await send('x4', { id: up.id, mime: 'image/gif', size: 100 }), 'invalid_payload', 'another type than uploaded')
      assert.equal(await send('x5', { id: up.id, mime: 'image/png', size: 100 }, hal), 'forbidden', 'only the uploader sends it')
      await gus.send({ dm: hal.user }, { cmid: 'x6', type: 'media', media: { id: up.id, mime: 'image/png', size: 100 } })
      await gus.send({ dm: hal.user }, { cmid: 'x6', type: 'media', media: { id: up.id, mime: 'image/png', size: 100 } }) // a retry: fine
      assert.equal(await send('x7', { id: up.id, mime: 'image/png', size: 100 }), 'invalid_payload', 'an upload is sent once')
      await eventually(() => hal.messages.length >= 1, 5000, 'the good one delivered')
      assert.deepEqual([...new Set(hal.messages.map((m) => m.cmid))], ['x6'], 'only the valid message was stored and delivered')
    })

    it('refuses a download URL once it expired', async () => {
      const [ida, jon] = await Promise.all([dev(u('ida')), dev(u('jon'))])
      const data = randomBytes(500)
      const up = await ida.call<UploadAnswer>('media.upload', { conversation: { kind: 'dm', id: jon.user }, mime: 'audio/ogg', size: 500 })
      assert.equal(await post(up, data), 204)
      await ida.send({ dm: jon.user }, { cmid: 'a1', type: 'media', media: { id: up.id, mime: 'audio/ogg', size: 500, durationMs: 1200 } })
      const down = await jon.call<DownloadAnswer>('media.download', { id: up.id, expiresInSeconds: 1 })
      assert.ok(down.expiresAt <= Date.now() + 1500)
      let status = 0
      await eventually(
        async () => {
          const res = await fetch(down.url)
          await res.arrayBuffer()
          status = res.status
          return status === 403
        },
        10_000,
        'the URL to expire'
      )
      assert.equal(status, 403)
      const capped = await jon.call<DownloadAnswer>('media.download', { id: up.id, expiresInSeconds: 999_999 })
      assert.ok(capped.expiresAt <= Date.now() + 61_000, 'never longer than downloadUrlTtlSeconds')
    })

    it('cleans up orphans and stray objects, and deletes the object of a message deleted for everyone', async () => {
      const [kim, lou] = await Promise.all([dev(u('kim')), dev(u('lou'))])
      const to = { kind: 'dm', id: lou.user }
      const orphan = await kim.call<UploadAnswer>('media.upload', { conversation: to, mime: 'image/png', size: 10 })
      assert.equal(await post(orphan, randomBytes(10)), 204)
      const sent = await kim.call<UploadAnswer>('media.upload', { conversation: to, mime: 'image/png', size: 10 })
      assert.equal(await post(sent, randomBytes(10)), 204)
      await kim.send({ dm: lou.user }, { cmid: 'k1', type: 'media', media: { id: sent.id, mime: 'image/png', size: 10 } })

      const early = await api!.sweep()
      assert.equal(early.orphans, 0, 'nothing is an orphan before orphanAfterMs')
      assert.ok(await api!.backend.stat(orphan.id))
      const report = await api!.sweep(Date.now() + mediaConfig.orphanAfterMs + 60_000)
      assert.ok(report.orphans >= 1, `orphans removed: ${JSON.stringify(report)}`)
      assert.equal(await api!.backend.stat(orphan.id), undefined, 'the orphan is gone from the store')
      assert.equal((await kim.rpc('media.download', { id: orphan.id })).error?.code, 'invalid_params', 'and from the records')
      assert.ok(await api!.backend.stat(sent.id), 'a sent object stays')

      // An object with no record (a removal that failed, a record lost) is found by listing the store.
      const strayId = newMediaId('dm:nobody:else')
      const ticket = await api!.backend.presignUpload({ id: strayId, mime: 'image/png', size: 10, expiresAt: Date.now() + 60_000 })
      assert.equal(await post({ id: strayId, kind: 'image', upload: ticket, expiresAt: ticket.expiresAt }, randomBytes(10)), 204)
      let strays = 0
      for (let pass = 0; pass < 20 && (await api!.backend.stat(strayId)); pass++) strays += (await api!.sweep(Date.now() + mediaConfig.orphanAfterMs + 60_000)).strays
      assert.ok(strays >= 1)
      assert.equal(await api!.backend.stat(strayId), undefined, 'the stray object is gone')
      assert.ok(await api!.backend.stat(sent.id), 'objects with a record are not strays')

      const history = await kim.call<{ messages: Array<{ id: string; cmid: string }> }>('messages.history', { conversation: to })
      const message = history.messages.find((m) => m.cmid === 'k1')!
      await kim.send({ dm: lou.user }, { cmid: 'k2', type: 'delete', ref: message.id })
      await eventually(async () => (await api!.backend.stat(sent.id)) === undefined, 5000, 'the deleted message\'s object removed')
      assert.equal((await lou.rpc('media.download', { id: sent.id })).error?.code, 'invalid_params')
    })
  })
}
