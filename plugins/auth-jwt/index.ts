// auth-jwt: every client is a device of a user, proven by a JWT in the MQTT password.
//   username  optional; when present it must equal the token's `sub`
//   password  the JWT (HS256 shared secret, RS256/ES256 public keys, or a JWKS URL)
//   clientId  `<sub>:<deviceId>`; when the token has a device claim (`did`), deviceId must equal it
// CONNACK codes: 2 identifier rejected, 4 bad credentials (also a revoked device's old token),
// 5 banned user, 3 key source or ban store unreachable.
// A session ends when its token expires, so the client reconnects with a fresh one.
// Operators ban users and revoke devices through the admin API (admin.ts); the store (store.ts)
// is read through a per-user cache (access.ts) that every change invalidates on every node.
import type { Client } from 'aedes'
import { errors as joseErrors } from 'jose'
import { ConnackCode, definePlugin, type AuthenticateResult } from '../../broker/plugin-api.js'
import { ID_PATTERN, parseClientId } from '../../schemas/identity.js'
import { chooseStore, initInBackground } from '../shared/stores.js'
import { AccessCache, refusalOf } from './access.js'
import { registerAccessAdmin } from './admin.js'
import { AuthJwtConfig } from './config.js'
import { createVerifier } from './keys.js'
import { MongoAccessStore, SqliteAccessStore, type AccessStore } from './store.js'

/** What auth-jwt puts in the principal's attributes (other plugins read it). */
export interface DeviceAttributes {
  userId: string
  deviceId: string
  /** Token expiry, epoch seconds. */
  expiresAt: number
  /** The token's `iat`, epoch seconds (absent when the token has none): checked against revocations. */
  issuedAt?: number
}

const refuse = (code: ConnackCode, reason: string): AuthenticateResult => ({ ok: false, code, reason })

/** Errors that mean the key source is unavailable, not that the token is bad. */
function isUnavailable(err: unknown): boolean {
  return err instanceof joseErrors.JWKSTimeout || (err instanceof Error && /fetch failed|ECONNREFUSED|ENOTFOUND|Expected 200 OK/i.test(err.message))
}

const isoTime = (ms: number) => new Date(ms).toISOString()

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
    const kicks = ctx.metrics.counter({
      name: 'auth_disconnects_total',
      help: 'Connections closed because their user was banned or their device revoked',
      labelNames: ['reason']
    })
    const timers = new Map<Client, NodeJS.Timeout>()
    ctx.log.info({ algorithms: verifier.algorithms, jwks: Boolean(config.jwksUrl) }, 'device tokens accepted')

    const storeImpl = chooseStore<AccessStore>(ctx, config.store, {
      mongo: (db) => new MongoAccessStore(db),
      embedded: (file) => new SqliteAccessStore(file),
      file: 'auth.db'
    })
    const store = initInBackground(ctx, storeImpl)
    const access = new AccessCache(async (user) => (await store()).access(user), {
      ttlMs: config.accessCacheMs,
      maxUsers: config.accessCacheSize,
      onStale: (user, err) => ctx.log.warn({ user, err }, 'ban store unreachable: using the last known bans and revocations')
    })

    // This node's authenticated clients by user, so that a ban or revocation closes them here.
    const local = new Map<string, Set<Client>>()
    const attributesOf = (client: Client): DeviceAttributes | undefined => {
      const a = ctx.principal(client)?.attributes as Partial<DeviceAttributes> | undefined
      return typeof a?.userId === 'string' && typeof a.deviceId === 'string' ? (a as DeviceAttributes) : undefined
    }
    /** Closes the user's clients on this node that may no longer be connected; returns their ids. */
    const enforce = async (user: string): Promise<string[]> => {
      access.invalidate(user)
      const clients = local.get(user)
      if (!clients?.size) return []
      const now = Date.now()
      const current = await access.get(user)
      const closed: string[] = []
      for (const client of clients) {
        const a = attributesOf(client)
        const refusal = a && refusalOf(current, a.deviceId, a.issuedAt, now)
        if (!refusal || client.closed) continue
        kicks.inc({ reason: refusal.reason })
        ctx.log.info({ clientId: client.id, reason: refusal.reason }, 'closing a connection: its user is banned or its device revoked')
        closed.push(client.id)
        client.close()
      }
      return closed
    }

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
      const issuedAt = typeof claims.iat === 'number' ? claims.iat : undefined
      // Revocations compare iat: a token dated ahead of the clock would outlive a revocation.
      if (issuedAt !== undefined && issuedAt > Date.now() / 1000 + config.clockSkewSeconds) {
        refusals.inc({ reason: 'issued_in_future' })
        return refuse(ConnackCode.BadUsernameOrPassword, 'token issued in the future (iat)')
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
      // Checked after the token, so that only the holder of a valid token learns of a ban. A store
      // that cannot be read throws: CONNACK 3, fail closed.
      const refusal = refusalOf(await access.get(sub), ids.deviceId, issuedAt, Date.now())
      if (refusal?.reason === 'banned') {
        refusals.inc({ reason: 'banned' })
        const until = refusal.ban.until ? ` until ${isoTime(refusal.ban.until)}` : ''
        return refuse(ConnackCode.NotAuthorized, `user ${sub} is banned${until}`)
      }
      if (refusal?.reason === 'revoked') {
        // The same answer as any bad token: the app logs in again and gets a token issued after the revocation.
        refusals.inc({ reason: 'revoked' })
        return refuse(ConnackCode.BadUsernameOrPassword, `device ${ids.deviceId}: tokens issued up to ${isoTime(refusal.revocation.revokedAt)} are revoked`)
      }
      const attributes: DeviceAttributes = { userId: sub, deviceId: ids.deviceId, expiresAt: claims.exp!, ...(issuedAt !== undefined ? { issuedAt } : {}) }
      return { ok: true, principal: { subject: sub, attributes: { ...attributes } } }
    })

    // Aedes emits clientReady after its offline queue is sent, even when the client closed
    // meanwhile (after clientDisconnect): such a client must not be kept.
    ctx.hook('clientReady', async (client) => {
      const a = attributesOf(client)
      if (!a || client.closed) return
      let mine = local.get(a.userId)
      if (!mine) local.set(a.userId, (mine = new Set()))
      mine.add(client)
      // A ban or revocation that reached this node between authenticate and now found no client
      // to close: look again (a cache hit unless something changed).
      const refusal = refusalOf(await access.get(a.userId), a.deviceId, a.issuedAt, Date.now())
      if (refusal && !client.closed) {
        kicks.inc({ reason: refusal.reason })
        client.close()
      }
    })
    ctx.hook('clientDisconnect', (client) => {
      const a = attributesOf(client)
      const mine = a && local.get(a.userId)
      if (!mine) return
      mine.delete(client)
      if (!mine.size) local.delete(a.userId)
    })

    registerAccessAdmin(ctx, store, enforce)

    if (config.disconnectOnExpiry) {
      ctx.hook('clientReady', (client) => {
        const expiresAt = ctx.principal(client)?.attributes.expiresAt
        if (typeof expiresAt !== 'number' || client.closed) return
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
    }
    ctx.hook('shutdown', async () => {
      for (const t of timers.values()) clearTimeout(t)
      timers.clear()
      await storeImpl.close()
    })
  }
})
