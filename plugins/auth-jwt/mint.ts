// `parley token`: mints a device token with the same configuration the running node uses.
import { resolve } from 'node:path'
import type { Config } from '../../schemas/config.js'
import { Id } from '../../schemas/identity.js'
import { AuthJwtConfig } from './config.js'
import { mintToken, parseTtl } from './keys.js'

export async function mintDeviceToken(
  config: Config,
  request: { userId: string; deviceId?: string | undefined; ttl: string }
): Promise<string> {
  const entry = config.plugins.find((p) => (typeof p === 'string' ? p : p.use) === 'auth-jwt')
  if (!entry) throw new Error('the auth-jwt plugin is not configured, so the node accepts no tokens')
  const parsed = AuthJwtConfig.safeParse(typeof entry === 'string' ? {} : (entry.config ?? {}))
  if (!parsed.success) throw new Error(`invalid auth-jwt configuration: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`)
  for (const [what, value] of [['user id', request.userId], ['device id', request.deviceId]] as const) {
    if (value !== undefined && !Id.safeParse(value).success) throw new Error(`invalid ${what} "${value}": expected 1-64 characters of A-Z a-z 0-9 _ -`)
  }
  return mintToken(parsed.data, resolve(config.dataDir), {
    userId: request.userId,
    deviceId: request.deviceId,
    ttlSeconds: parseTtl(request.ttl)
  })
}
