// A local FCM: the two Google endpoints firebase-admin 13 calls, on one HTTPS server that answers
// for both host names (the client's https.Agent dials 127.0.0.1 and keeps the real name for TLS).
//   POST https://oauth2.googleapis.com/token   OAuth 2.0 JWT bearer grant (RFC 7523): the assertion
//        is an RS256 JWT signed with the service account's key; verified with its public key.
//   POST https://fcm.googleapis.com/v1/projects/{project}/messages:send   FCM HTTP v1: needs a
//        Bearer token this fake issued; answers {name} or a google.rpc.Status error with an
//        FcmError detail (UNREGISTERED, QUOTA_EXCEEDED, ...) as the FCM v1 reference describes.
// Per-token behaviour: dead tokens answer 404 UNREGISTERED; a script of answers can be queued.
import { randomBytes } from 'node:crypto'
import https from 'node:https'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { importSPKI, jwtVerify, type CryptoKey } from 'jose'

export interface FcmRequest {
  host: string
  token: string
  message: Record<string, unknown>
  at: number
  status: number | 'stalled' | 'reset'
  errorCode?: string
}

export type FcmScriptedAnswer = { status: number; status_: string; errorCode?: string; retryAfterSeconds?: number } | 'stall'

export interface FcmFake {
  port: number
  requests: FcmRequest[]
  /** How many access tokens the OAuth endpoint issued. */
  tokensIssued: () => number
  accepted(token: string): FcmRequest[]
  dead: Set<string>
  script(token: string, answers: FcmScriptedAnswer[]): void
  close(): Promise<void>
}

const FCM_SCOPE = 'https://www.googleapis.com/auth/firebase.messaging'

export async function startFcmFake(options: { cert: string; key: string; publicKey: string; projectId: string; clientEmail: string }): Promise<FcmFake> {
  const publicKey: CryptoKey = await importSPKI(options.publicKey, 'RS256')
  const accessTokens = new Set<string>()
  const requests: FcmRequest[] = []
  const dead = new Set<string>()
  const scripts = new Map<string, FcmScriptedAnswer[]>()

  const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    if (res.writableEnded || res.destroyed) return
    res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8', ...headers })
    res.end(JSON.stringify(body))
  }
  const rpcError = (code: number, status: string, message: string, errorCode?: string) => ({
    error: {
      code,
      message,
      status,
      ...(errorCode ? { details: [{ '@type': 'type.googleapis.com/google.firebase.fcm.v1.FcmError', errorCode }] } : {})
    }
  })

  const token = async (req: IncomingMessage, res: ServerResponse, body: string) => {
    const form = new URLSearchParams(body)
    if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
      return json(res, 400, { error: 'unsupported_grant_type' })
    }
    try {
      const { payload } = await jwtVerify(form.get('assertion') ?? '', publicKey, {
        algorithms: ['RS256'],
        issuer: options.clientEmail,
        audience: 'https://oauth2.googleapis.com/token'
      })
      if (typeof payload.scope !== 'string' || !payload.scope.split(' ').includes(FCM_SCOPE)) return json(res, 400, { error: 'invalid_scope' })
    } catch (err) {
      return json(res, 400, { error: 'invalid_grant', error_description: (err as Error).message })
    }
    const access = `ya29.fake-${randomBytes(12).toString('hex')}`
    accessTokens.add(access)
    return json(res, 200, { access_token: access, expires_in: 3599, token_type: 'Bearer' })
  }

  const send = async (req: IncomingMessage, res: ServerResponse, body: string, project: string) => {
    const auth = String(req.headers.authorization ?? '')
    if (!auth.startsWith('Bearer ') || !accessTokens.has(auth.slice(7))) {
      return json(res, 401, rpcError(401, 'UNAUTHENTICATED', 'Request had invalid authentication credentials.'))
    }
    if (project !== options.projectId) return json(res, 403, rpcError(403, 'PERMISSION_DENIED', 'SenderId mismatch', 'SENDER_ID_MISMATCH'))
    let parsed: { message?: Record<string, unknown> }
    try {
      parsed = JSON.parse(body) as { message?: Record<string, unknown> }
    } catch {
      return json(res, 400, rpcError(400, 'INVALID_ARGUMENT', 'Invalid JSON payload received.'))
    }
    const message = parsed.message ?? {}
    const record: FcmRequest = { host: String(req.headers.host ?? ''), token: typeof message.token === 'string' ? message.token : '', message, at: Date.now(), status: 0 }
    requests.push(record)
    const fail = (status: number, rpcStatus: string, text: string, errorCode?: string, headers: Record<string, string> = {}) => {
      record.status = status
      if (errorCode) record.errorCode = errorCode
      json(res, status, rpcError(status, rpcStatus, text, errorCode), headers)
    }
    if (!record.token) return fail(400, 'INVALID_ARGUMENT', 'Recipient of the message is not set.', 'INVALID_ARGUMENT')
    const data = message.data as Record<string, unknown> | undefined
    if (data && Object.values(data).some((v) => typeof v !== 'string')) {
      return fail(400, 'INVALID_ARGUMENT', 'Invalid value at message.data: values must be strings', 'INVALID_ARGUMENT')
    }
    if (Buffer.byteLength(body) > 4096 + 1024) return fail(400, 'INVALID_ARGUMENT', 'Message is too big', 'INVALID_ARGUMENT')

    const scripted = scripts.get(record.token)?.shift()
    if (scripted === 'stall') {
      record.status = 'stalled'
      res.on('close', () => {
        if (record.status === 'stalled') record.status = 'reset'
      })
      return
    }
    if (scripted) {
      return fail(scripted.status, scripted.status_, 'scripted answer', scripted.errorCode, scripted.retryAfterSeconds !== undefined ? { 'retry-after': String(scripted.retryAfterSeconds) } : {})
    }
    if (dead.has(record.token)) return fail(404, 'NOT_FOUND', 'Requested entity was not found.', 'UNREGISTERED')
    record.status = 200
    return json(res, 200, { name: `projects/${project}/messages/0:${Date.now()}%${randomBytes(6).toString('hex')}` })
  }

  const server = https.createServer({ cert: options.cert, key: options.key }, (req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (d: string) => (body += d))
    req.on('end', () => {
      const host = String(req.headers.host ?? '').split(':')[0]
      const url = req.url ?? ''
      const route = /^\/v1\/projects\/([^/]+)\/messages:send$/.exec(url)
      const work =
        req.method === 'POST' && host === 'oauth2.googleapis.com' && url === '/token'
          ? token(req, res, body)
          : req.method === 'POST' && host === 'fcm.googleapis.com' && route
            ? send(req, res, body, route[1]!)
            : Promise.resolve(json(res, 404, rpcError(404, 'NOT_FOUND', `no route ${req.method} ${host}${url}`)))
      work.catch(() => json(res, 500, rpcError(500, 'INTERNAL', 'fake failed')))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    requests,
    tokensIssued: () => accessTokens.size,
    accepted: (t) => requests.filter((r) => r.token === t && r.status === 200),
    dead,
    script: (t, answers) => scripts.set(t, [...(scripts.get(t) ?? []), ...answers]),
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
