// Configuration of the auth-jwt plugin (its section under `plugins: [{ use: auth-jwt, config }]`).
import { z } from 'zod'
import { secret } from '../../schemas/config.js'

const PublicKey = z
  .object({
    kid: z.string().min(1).optional().describe('Key id the token header must carry (when both have one)'),
    alg: z.enum(['RS256', 'ES256']).describe('Algorithm this key verifies'),
    pem: z.string().includes('BEGIN PUBLIC KEY', { error: 'expected an SPKI PEM public key' }).optional(),
    file: z.string().min(1).optional().describe('File holding the SPKI PEM public key')
  })
  .strict()
  .refine((k) => Boolean(k.pem) !== Boolean(k.file), { error: 'give exactly one of pem or file' })

export const AuthJwtConfig = z
  .object({
    issuer: z.string().min(1).optional().default('parley').describe('Required `iss` claim (also set on minted tokens)'),
    audience: z.string().min(1).optional().default('parley').describe('Required `aud` claim (also set on minted tokens)'),
    clockSkewSeconds: z.number().int().min(0).max(300).default(30).describe('Tolerance for exp and nbf'),
    deviceClaim: z.string().min(1).default('did').describe('Claim naming the device; when present the client id must use it'),
    hs256: z
      .object({
        enabled: z.boolean().default(true),
        secret: secret(z.string().min(32, { error: 'expected at least 32 characters' }).optional(), 'Shared HS256 secret'),
        secretFile: z.string().min(1).optional().describe('File with the secret; relative paths are in the data directory')
      })
      .strict()
      .prefault({}),
    publicKeys: z.array(PublicKey).default([]).describe('RS256/ES256 public keys'),
    jwksUrl: z.url({ protocol: /^https?$/ }).optional().describe('JWKS endpoint of an identity provider'),
    jwksAlgorithms: z.array(z.enum(['RS256', 'ES256'])).nonempty().default(['RS256', 'ES256']),
    jwksCacheMaxAgeMs: z.number().int().positive().default(600_000).describe('Refetch the JWKS after this long'),
    jwksCooldownMs: z.number().int().min(0).default(30_000).describe('Least time between two JWKS fetches (unknown kid)'),
    jwksTimeoutMs: z.number().int().positive().default(5000),
    disconnectOnExpiry: z.boolean().default(true).describe('Close a session when its token expires'),
    maxTokenBytes: z.number().int().positive().default(8192),
    store: z.enum(['auto', 'embedded', 'mongo']).default('auto').describe('Where bans and device revocations are kept (auto: MongoDB when mongo.url is set)'),
    accessCacheMs: z
      .number()
      .int()
      .min(0)
      .max(600_000)
      .default(60_000)
      .describe("How long a user's bans and revocations are reused at CONNECT (changes reach every node at once; this bounds a missed one)"),
    accessCacheSize: z.number().int().min(1).max(10_000_000).default(100_000).describe('Users whose bans and revocations are kept in memory')
  })
  .strict()

export type AuthJwtConfig = z.output<typeof AuthJwtConfig>
