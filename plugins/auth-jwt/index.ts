// auth-jwt: every client is a device of a user, proven by a JWT in the MQTT password.
//   username  optional; when present it must equal the token's `sub`
//   password  the JWT (HS256 shared secret, RS256/ES256 public keys, or a JWKS URL)
//   clientId  `<sub>:<deviceId>`; when the token has a device claim (`did`), deviceId must equal it
// CONNACK codes: 2 identifier rejected, 4 bad credentials, 3 key source unreachable.
// A session ends when its token expires, so the client reconnects with a fresh one.
import type { Client } from 'aedes'
import { errors as joseErrors } from 'jose'
import { ConnackCode, definePlugin, type AuthenticateResult } from '../../broker/plugin-api.js'
import { ID_PATTERN, parseClientId } from '../../schemas/identity.js'
import { AuthJwtConfig } from './config.js'
import { createVerifier } from './keys.js'

/** What auth-jwt puts in the principal's attributes (other plugins read it). */
export interface DeviceAttributes {
  userId: string
  deviceId: string
  /** Token expiry, epoch seconds. */
  expiresAt: number
}

const refuse = (code: ConnackCode, reason: string): AuthenticateResult => ({ ok: false, code, reason })

/** Errors that mean the key source is unavailable, not that the token is bad. */
function isUnavailable(err: unknown): boolean {
  return err instanceof joseErrors.JWKSTimeout || (err instanceof Error && /fetch failed|ECONNREFUSED|ENOTFOUND|Expected 200 OK/i.test(err.message))
}

export default definePlugin({
  name: 'auth-jwt',
  configSchema: AuthJwtConfig,
  async register(ctx) {
    const config = ctx.config
    const verifier = await createVerifier(config, ctx.dataDir)
    const refusals = ctx.metrics.counter({
      name: 'auth_refusals_total',
      help: 'CONNECTs refused by auth-jwt, by reason',
      labelNames: ['reason']
    })
    const expiries = ctx.metrics.counter({ name: 'auth_token_expiries_total', help: 'Sessions closed because their token expired' })
    const timers = new Map<Client, NodeJS.Timeout>()
    ctx.log.info({ algorithms: verifier.algorithms, jwks: Boolean(config.jwksUrl) }, 'device tokens accepted')

    ctx.hook('authenticate', async (client, { username, password }) => {
      if (!password?.length) {
        refusals.inc({ reason: 'no_token' })
        return refuse(ConnackCode.BadUsernameOrPassword, 'no token in the password')
      }
      if (password.length > config.maxTokenBytes) {
        refusals.inc({ reason: 'token_too_large' })
        return refuse(ConnackCode.BadUsernameOrPassword, 'token too large')
      }
      let claims
      try {
        claims = await verifier.verify(password.toString('utf8'))
      } catch (err) {
        if (isUnavailable(err)) throw err // fail closed with CONNACK 3: the client retries later
        const code = err instanceof joseErrors.JOSEError ? err.code : 'ERR_INVALID'
        refusals.inc({ reason: code })
        return refuse(ConnackCode.BadUsernameOrPassword, `invalid token (${code}): ${(err as Error).message}`)
      }
      const sub = claims.sub!
      if (!ID_PATTERN.test(sub)) {
        refusals.inc({ reason: 'bad_subject' })
        return refuse(ConnackCode.BadUsernameOrPassword, 'token subject is not a valid user id')
      }
      if (username !== undefined && username !== '' && username !== sub) {
        refusals.inc({ reason: 'username_mismatch' })
        return refuse(ConnackCode.BadUsernameOrPassword, 'username does not match the token subject')
      }
      const ids = parseClientId(client.id)
      const tokenDevice = claims[config.deviceClaim]
      if (!ids || ids.userId !== sub || (tokenDevice !== undefined && ids.deviceId !== tokenDevice)) {
        refusals.inc({ reason: 'client_id' })
        return refuse(
          ConnackCode.IdentifierRejected,
          `client id must be "${sub}:${typeof tokenDevice === 'string' ? tokenDevice : '<deviceId>'}"`
        )
      }
      const attributes: DeviceAttributes = { userId: sub, deviceId: ids.deviceId, expiresAt: claims.exp! }
      return { ok: true, principal: { subject: sub, attributes: { ...attributes } } }
    })

    if (config.disconnectOnExpiry) {
      ctx.hook('clientReady', (client) => {
        const expiresAt = ctx.principal(client)?.attributes.expiresAt
        if (typeof expiresAt !== 'number') return
        // The session lasts as long as the token is accepted (exp plus the clock skew), so a token
        // accepted within the skew does not close at once and loop. setTimeout holds at most ~24.8
        // days; a longer-lived session is simply re-armed at its next connection.
        const ms = Math.min((expiresAt + config.clockSkewSeconds) * 1000 - Date.now(), 2 ** 31 - 1)
        const timer = setTimeout(() => {
          timers.delete(client)
          expiries.inc()
          ctx.log.info({ clientId: client.id }, 'token expired: closing the session')
          client.close()
        }, Math.max(ms, 0))
        timer.unref()
        timers.set(client, timer)
      })
      ctx.hook('clientDisconnect', (client) => {
        clearTimeout(timers.get(client))
        timers.delete(client)
      })
      ctx.hook('shutdown', () => {
        for (const t of timers.values()) clearTimeout(t)
        timers.clear()
      })
    }
  }
})
