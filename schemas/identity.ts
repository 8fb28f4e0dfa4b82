// Identifiers of users, devices and groups, and the MQTT client id that joins them.
import { z } from 'zod'

export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/

/** A user, device, group or client-message id: 1-64 characters of A-Z a-z 0-9 _ -. */
export const Id = z.string().regex(ID_PATTERN, { error: 'expected 1-64 characters of A-Z a-z 0-9 _ -' })
export type Id = z.infer<typeof Id>

/** The client id of a device: `<userId>:<deviceId>`. */
export function parseClientId(clientId: string): { userId: string; deviceId: string } | undefined {
  const i = clientId.indexOf(':')
  if (i < 0) return undefined
  const userId = clientId.slice(0, i)
  const deviceId = clientId.slice(i + 1)
  return ID_PATTERN.test(userId) && ID_PATTERN.test(deviceId) ? { userId, deviceId } : undefined
}

export function clientIdOf(userId: string, deviceId: string): string {
  return `${userId}:${deviceId}`
}
