// Media on S3 or MinIO through the `minio` client. Uploads are presigned POST policies, so the
// store itself refuses an object of another size (content-length-range [size, size]), another
// Content-Type, another key, or (when the device declared one) another SHA-256
// (x-amz-checksum-sha256), and anything after the policy expired. Downloads are presigned GETs.
import type { Client as MinioClient } from 'minio'
import type { DownloadRequest, ListedObject, MediaBackend, ObjectInfo, UploadRequest, UploadTicket } from './backend.js'
import { isMediaId } from './ids.js'

const notFound = (err: unknown): boolean => {
  const code = (err as { code?: string }).code
  return code === 'NotFound' || code === 'NoSuchKey' || code === 'NoSuchObject'
}

export class S3MediaBackend implements MediaBackend {
  readonly name = 's3'

  private readonly presigner: MinioClient
  private readonly prefix: string

  constructor(
    private readonly client: MinioClient,
    private readonly bucket: string,
    options: {
      /** Prepended to every media id to make its object name. */
      prefix?: string
      /**
       * Signs the URLs devices use, when they reach the store at another address than the node
       * does (a signature covers the host). Same credentials and region; signing makes no request.
       */
      presigner?: MinioClient | undefined
    } = {}
  ) {
    this.prefix = options.prefix ?? 'media/'
    this.presigner = options.presigner ?? client
  }

  private key(id: string): string {
    if (!isMediaId(id)) throw new Error(`not a media id: ${id}`)
    return `${this.prefix}${id}`
  }

  async presignUpload(r: UploadRequest): Promise<UploadTicket> {
    const policy = this.presigner.newPostPolicy()
    policy.setBucket(this.bucket)
    policy.setKey(this.key(r.id))
    policy.setExpires(new Date(r.expiresAt))
    policy.setContentType(r.mime)
    policy.setContentLengthRange(r.size, r.size)
    if (r.sha256) {
      // S3's additional checksums take base64 of the digest. MinIO verifies it (tested).
      const b64 = Buffer.from(r.sha256, 'hex').toString('base64')
      policy.policy.conditions.push(['eq', '$x-amz-checksum-algorithm', 'SHA256'], ['eq', '$x-amz-checksum-sha256', b64])
      policy.formData['x-amz-checksum-algorithm'] = 'SHA256'
      policy.formData['x-amz-checksum-sha256'] = b64
    }
    const { postURL, formData } = await this.presigner.presignedPostPolicy(policy)
    const fields = Object.fromEntries(Object.entries(formData).map(([k, v]) => [k, String(v)]))
    return { method: 'POST', url: postURL, fields, fileField: 'file', expiresAt: r.expiresAt }
  }

  async stat(id: string): Promise<ObjectInfo | undefined> {
    try {
      const s = await this.client.statObject(this.bucket, this.key(id))
      const meta = s.metaData as Record<string, string | undefined>
      return { id, size: s.size, contentType: meta['content-type'] ?? '', lastModified: s.lastModified.getTime() }
    } catch (err) {
      if (notFound(err)) return undefined
      throw err
    }
  }

  async presignDownload(r: DownloadRequest): Promise<string> {
    const seconds = Math.max(1, Math.ceil((r.expiresAt - Date.now()) / 1000))
    return this.presigner.presignedGetObject(this.bucket, this.key(r.id), seconds, r.attachment ? { 'response-content-disposition': 'attachment' } : {})
  }

  async remove(id: string): Promise<void> {
    try {
      await this.client.removeObject(this.bucket, this.key(id))
    } catch (err) {
      if (!notFound(err)) throw err
    }
  }

  async list(options: { startAfter?: string | undefined; limit: number }): Promise<{ objects: ListedObject[]; next?: string | undefined }> {
    const limit = Math.min(Math.max(1, options.limit), 1000)
    const startAfter = options.startAfter ? `${this.prefix}${options.startAfter}` : ''
    const page = await this.client.listObjectsV2Query(this.bucket, this.prefix, '', '', limit, startAfter)
    const objects: ListedObject[] = []
    let last: string | undefined
    for (const o of page.objects) {
      if (!o.name) continue
      const id = o.name.slice(this.prefix.length)
      last = id
      if (isMediaId(id)) objects.push({ id, size: o.size, lastModified: o.lastModified.getTime() })
    }
    return { objects, next: page.isTruncated ? last : undefined }
  }
}
