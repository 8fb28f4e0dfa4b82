// A local APNs: HTTP/2 over TLS, POST /3/device/<token>, answering as Apple documents
// ("Sending notification requests to APNs", "Handling notification responses from APNs").
// It verifies the provider token (ES256 JWT: kid = key id, iss = team id) with the public key of the
// .p8 the tests generated, checks the headers and the payload size, and records every request.
// Per-token behaviour: dead tokens answer 410 Unregistered, bad ones 400 BadDeviceToken, and a
// script of answers (e.g. 429 with Retry-After, or a stall that never answers) can be queued.
import { randomUUID } from 'node:crypto'
import http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import { importSPKI, jwtVerify, type CryptoKey } from 'jose'

export interface ApnsRequest {
  token: string
  authority: string
  headers: Record<string, string>
  payload: Record<string, unknown>
  /** Epoch ms when it arrived. */
  at: number
  /** What the fake answered; 'stalled' while held, 'reset' when the client went away first. */
  status: number | 'stalled' | 'reset'
  reason?: string
}

export type ScriptedAnswer = { status: number; reason?: string; retryAfterSeconds?: number } | 'stall'

export interface ApnsFake {
  port: number
  requests: ApnsRequest[]
  /** Requests answered 200 for this token. */
  accepted(token: string): ApnsRequest[]
  dead: Set<string>
  bad: Set<string>
  /** Queues answers for the next requests to this token (after that: normal behaviour). */
  script(token: string, answers: ScriptedAnswer[]): void
  /** Stops holding stalled requests (they are answered 200) and stalls no more. */
  releaseStalled(): void
  close(): Promise<void>
}

export async function startApnsFake(options: { cert: string; key: string; publicKey: string; keyId: string; teamId: string }): Promise<ApnsFake> {
  const publicKey: CryptoKey = await importSPKI(options.publicKey, 'ES256')
  const requests: ApnsRequest[] = []
  const dead = new Set<string>()
  const bad = new Set<string>()
  const scripts = new Map<string, ScriptedAnswer[]>()
  const stalled = new Set<() => void>()
  const server = http2.createSecureServer({ cert: options.cert, key: options.key, allowHTTP1: false })
  const sessions = new Set<http2.ServerHttp2Session>()
  server.on('session', (s) => {
    sessions.add(s)
    s.on('close', () => sessions.delete(s))
  })

  server.on('stream', (stream, headers) => {
    let body = ''
    stream.setEncoding('utf8')
    stream.on('data', (d: string) => (body += d))
    stream.on('error', () => undefined)
    stream.on('end', () => {
      void handle(stream, headers, body).catch(() => {
        if (!stream.closed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR)
      })
    })
  })

  const answer = (stream: http2.ServerHttp2Stream, record: ApnsRequest, status: number, reason?: string, extra: Record<string, string> = {}) => {
    record.status = status
    if (reason) record.reason = reason
    if (stream.closed) return
    const apnsId = record.headers['apns-id'] ?? randomUUID()
    stream.respond({ ':status': status, 'apns-id': apnsId, 'apns-unique-id': randomUUID(), ...extra })
    if (status === 200) stream.end()
    else stream.end(JSON.stringify(status === 410 ? { reason, timestamp: Date.now() } : { reason }))
  }

  const handle = async (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, body: string) => {
    const path = String(headers[':path'] ?? '')
    const flat: Record<string, string> = {}
    for (const [k, v] of Object.entries(headers)) if (typeof v === 'string') flat[k] = v
    let payload: Record<string, unknown> = {}
    try {
      payload = JSON.parse(body) as Record<string, unknown>
    } catch {
      // answered below
    }
    const match = /^\/3\/device\/([0-9a-fA-F]+)$/.exec(path)
    const record: ApnsRequest = { token: match?.[1] ?? '', authority: String(headers[':authority'] ?? ''), headers: flat, payload, at: Date.now(), status: 0 }
    requests.push(record)
    if (headers[':method'] !== 'POST') return answer(stream, record, 405, 'MethodNotAllowed')
    if (!match) return answer(stream, record, 404, 'BadPath')
    const auth = String(headers.authorization ?? '')
    if (!auth.toLowerCase().startsWith('bearer ')) return answer(stream, record, 403, 'MissingProviderToken')
    try {
      const { protectedHeader, payload: claims } = await jwtVerify(auth.slice(7), publicKey, { algorithms: ['ES256'], issuer: options.teamId })
      if (protectedHeader.kid !== options.keyId) return answer(stream, record, 403, 'InvalidProviderToken')
      if (typeof claims.iat !== 'number' || Math.abs(Date.now() / 1000 - claims.iat) > 3600) return answer(stream, record, 403, 'ExpiredProviderToken')
    } catch {
      return answer(stream, record, 403, 'InvalidProviderToken')
    }
    if (!headers['apns-topic']) return answer(stream, record, 400, 'MissingTopic')
    if (!['alert', 'background', 'voip'].includes(String(headers['apns-push-type']))) return answer(stream, record, 400, 'InvalidPushType')
    if (Buffer.byteLength(body) > 4096) return answer(stream, record, 413, 'PayloadTooLarge')
    if (!body || typeof payload.aps !== 'object') return answer(stream, record, 400, 'PayloadEmpty')
    const collapse = headers['apns-collapse-id']
    if (typeof collapse === 'string' && Buffer.byteLength(collapse) > 64) return answer(stream, record, 400, 'BadCollapseId')

    const scripted = scripts.get(record.token)?.shift()
    if (scripted === 'stall') {
      record.status = 'stalled'
      const release = () => {
        stalled.delete(release)
        answer(stream, record, 200)
      }
      stalled.add(release)
      stream.on('close', () => {
        if (record.status === 'stalled') record.status = 'reset'
        stalled.delete(release)
      })
      return
    }
    if (scripted) {
      const extra: Record<string, string> = scripted.retryAfterSeconds !== undefined ? { 'retry-after': String(scripted.retryAfterSeconds) } : {}
      return answer(stream, record, scripted.status, scripted.reason, extra)
    }
    if (dead.has(record.token)) return answer(stream, record, 410, 'Unregistered')
    if (bad.has(record.token)) return answer(stream, record, 400, 'BadDeviceToken')
    return answer(stream, record, 200)
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    requests,
    accepted: (token) => requests.filter((r) => r.token === token && r.status === 200),
    dead,
    bad,
    script: (token, answers) => scripts.set(token, [...(scripts.get(token) ?? []), ...answers]),
    releaseStalled: () => [...stalled].forEach((release) => release()),
    close: async () => {
      for (const s of sessions) s.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
