// Verification keys for device tokens, and minting with the HS256 secret.
// Each accepted algorithm has its own key source, so a token can never make the verifier use
// a key of another kind (HS256 with an RSA public key as the secret: algorithm confusion).
import { randomBytes } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, isAbsolute, join } from 'node:path'
import {
  SignJWT,
  createRemoteJWKSet,
  importSPKI,
  jwtVerify,
  type JWTPayload,
  type JWTVerifyGetKey,
  type JWTHeaderParameters,
  type FlattenedJWSInput,
  type CryptoKey
} from 'jose'
import type { AuthJwtConfig } from './config.js'

export const DEFAULT_SECRET_FILE = 'jwt-secret'

/** Where the HS256 secret lives: configured inline, in a configured file, or generated in the data directory. */
export function secretFilePath(config: AuthJwtConfig, dataDir: string): string {
  const file = config.hs256.secretFile ?? DEFAULT_SECRET_FILE
  return isAbsolute(file) ? file : join(dataDir, file)
}

/**
 * The HS256 secret. With neither an inline secret nor an existing file, a random 256-bit secret is
 * generated once and kept (mode 0600) in the data directory: there is no built-in secret anywhere.
 */
export function loadHs256Secret(config: AuthJwtConfig, dataDir: string): Uint8Array | undefined {
  if (!config.hs256.enabled) return undefined
  if (config.hs256.secret) return new TextEncoder().encode(config.hs256.secret)
  const file = secretFilePath(config, dataDir)
  if (!existsSync(file)) {
    if (config.hs256.secretFile && isAbsolute(config.hs256.secretFile)) {
      throw new Error(`hs256.secretFile ${file} does not exist`)
    }
    mkdirSync(dirname(file), { recursive: true })
    writeFileSync(file, randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
    chmodSync(file, 0o600)
  }
  const text = readFileSync(file, 'utf8').trim()
  if (text.length < 32) throw new Error(`the HS256 secret in ${file} is shorter than 32 characters`)
  return new TextEncoder().encode(text)
}

export interface Verifier {
  verify(token: string): Promise<JWTPayload>
  algorithms: string[]
}

export async function createVerifier(config: AuthJwtConfig, dataDir: string): Promise<Verifier> {
  const secret = loadHs256Secret(config, dataDir)
  const staticKeys: Array<{ kid?: string | undefined; alg: string; key: CryptoKey }> = []
  for (const k of config.publicKeys) {
    const pem = k.pem ?? readFileSync(k.file!, 'utf8')
    staticKeys.push({ kid: k.kid, alg: k.alg, key: await importSPKI(pem, k.alg) })
  }
  const remote = config.jwksUrl
    ? createRemoteJWKSet(new URL(config.jwksUrl), {
        cacheMaxAge: config.jwksCacheMaxAgeMs,
        cooldownDuration: config.jwksCooldownMs,
        timeoutDuration: config.jwksTimeoutMs
      })
    : undefined
  const algorithms = [
    ...(secret ? ['HS256'] : []),
    ...new Set([...staticKeys.map((k) => k.alg), ...(remote ? config.jwksAlgorithms : [])])
  ]
  if (!algorithms.length) throw new Error('no verification key configured: enable hs256, add publicKeys, or set jwksUrl')

  const getKey: JWTVerifyGetKey = async (header: JWTHeaderParameters, token: FlattenedJWSInput) => {
    if (header.alg === 'HS256') {
      if (!secret) throw new Error('HS256 is not accepted')
      return secret
    }
    // A key id names one key: a configured key with that id, else the identity provider's set.
    const exact = header.kid ? staticKeys.find((k) => k.alg === header.alg && k.kid === header.kid) : undefined
    if (exact) return exact.key
    if (remote && header.kid) return remote(header, token)
    const loose = staticKeys.find((k) => k.alg === header.alg && (!header.kid || !k.kid))
    if (loose) return loose.key
    if (remote) return remote(header, token)
    throw new Error(`no key for alg ${header.alg}${header.kid ? ` kid ${header.kid}` : ''}`)
  }

  return {
    algorithms,
    verify: async (token) => {
      const { payload } = await jwtVerify(token, getKey, {
        algorithms,
        issuer: config.issuer,
        audience: config.audience,
        clockTolerance: config.clockSkewSeconds,
        requiredClaims: ['sub', 'exp']
      })
      return payload
    }
  }
}

/** Parses a duration like 90s, 15m, 1h, 7d into seconds. */
export function parseTtl(ttl: string): number {
  const m = /^(\d+)\s*(s|m|h|d)$/.exec(ttl.trim())
  if (!m) throw new Error(`invalid duration "${ttl}": expected a number and a unit, e.g. 90s, 15m, 1h, 7d`)
  const n = Number(m[1])
  const unit = { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as 's' | 'm' | 'h' | 'd']
  if (n <= 0) throw new Error(`invalid duration "${ttl}": must be positive`)
  return n * unit
}

/** Mints a device token with the HS256 secret (for development and operations). */
export async function mintToken(
  config: AuthJwtConfig,
  dataDir: string,
  claims: { userId: string; deviceId?: string | undefined; ttlSeconds: number; extra?: Record<string, unknown> }
): Promise<string> {
  const secret = loadHs256Secret(config, dataDir)
  if (!secret) throw new Error('HS256 is disabled (auth-jwt hs256.enabled: false): tokens come from your identity provider')
  const jwt = new SignJWT({ ...claims.extra, ...(claims.deviceId ? { [config.deviceClaim]: claims.deviceId } : {}) })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(claims.userId)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + claims.ttlSeconds)
  if (config.issuer) jwt.setIssuer(config.issuer)
  if (config.audience) jwt.setAudience(config.audience)
  return jwt.sign(secret)
}
