// The bootstrap secret: the one credential that can create (and revoke) admin API keys, so the
// first key can be made. Configured (admin.bootstrapSecret), or generated once into the data
// directory (mode 0600) where `parley admin keys create` on the same machine reads it.
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import { dirname, isAbsolute, join, resolve } from 'node:path'
import type { Config } from '../../schemas/config.js'

export function bootstrapSecretPath(config: Config): string {
  const file = config.admin.bootstrapSecretFile
  return isAbsolute(file) ? file : join(resolve(config.dataDir), file)
}

/** The secret; generated into the data directory when neither configured nor there yet (`create`). */
export function loadBootstrapSecret(config: Config, options: { create: boolean }): string | undefined {
  if (config.admin.bootstrapSecret) return config.admin.bootstrapSecret
  const file = bootstrapSecretPath(config)
  if (!existsSync(file)) {
    if (!options.create) return undefined
    mkdirSync(dirname(file), { recursive: true })
    writeFileSync(file, randomBytes(32).toString('base64url') + '\n', { mode: 0o600, flag: 'wx' })
    chmodSync(file, 0o600)
  }
  const text = readFileSync(file, 'utf8').trim()
  if (text.length < 32) throw new Error(`the admin bootstrap secret in ${file} is shorter than 32 characters`)
  return text
}

/** Constant-time comparison of a presented secret with the bootstrap secret. */
export function isBootstrapSecret(presented: string, secret: string): boolean {
  const a = createHash('sha256').update(presented).digest()
  const b = createHash('sha256').update(secret).digest()
  return timingSafeEqual(a, b)
}
