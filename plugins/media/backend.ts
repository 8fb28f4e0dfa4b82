// Where media objects live. Two implementations behind one contract (test/backend-contract.test.ts):
// S3/MinIO (s3-backend.ts: presigned POST policy, presigned GET) and local disk behind
// HMAC-signed URLs served by the operations listener (local-backend.ts). Devices never see the
// difference: they get a URL and form fields, POST the file as multipart/form-data, and GET it back.

/** How a device uploads: a multipart/form-data POST of `fields` (in order), then the file as `file`. */
export interface UploadTicket {
  method: 'POST'
  url: string
  fields: Record<string, string>
  /** Name of the form field that carries the file; it must be the last part. */
  fileField: 'file'
  /** Epoch ms: the upload must start before this. */
  expiresAt: number
}

export interface UploadRequest {
  id: string
  /** Lower-case MIME type: the object's Content-Type must be exactly this. */
  mime: string
  /** Exact size in bytes: the store refuses anything larger or smaller. */
  size: number
  /** Lower-case hex SHA-256 of the content, when the device declared one: the store refuses other content. */
  sha256?: string | undefined
  /** Epoch ms. */
  expiresAt: number
}

export interface ObjectInfo {
  id: string
  size: number
  contentType: string
  /** Epoch ms. */
  lastModified: number
}

export type ListedObject = Omit<ObjectInfo, 'contentType'>

export interface DownloadRequest {
  id: string
  /** Epoch ms. */
  expiresAt: number
  /** Ask the browser to save rather than show it (files of kind `file`). */
  attachment: boolean
}

export interface MediaBackend {
  readonly name: 'embedded' | 's3'
  presignUpload(request: UploadRequest): Promise<UploadTicket>
  /** The stored object, or undefined when there is none. */
  stat(id: string): Promise<ObjectInfo | undefined>
  presignDownload(request: DownloadRequest): Promise<string>
  /** Deletes an object; no error when it does not exist. */
  remove(id: string): Promise<void>
  /** Objects in id order after `startAfter`, at most `limit`; `next` is where the following page starts. */
  list(options: { startAfter?: string | undefined; limit: number }): Promise<{ objects: ListedObject[]; next?: string | undefined }>
}
