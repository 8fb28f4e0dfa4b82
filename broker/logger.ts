// Structured JSON logs (pino). Secrets never reach a log line: known secret keys are
// censored wherever they appear, and configuration is logged only in redacted form.
import { pino, type Logger, type LoggerOptions } from 'pino'

export type { Logger }

const SECRET_KEYS = [
  'password',
  'passphrase',
  'secret',
  'secretKey',
  'accessKey',
  'token',
  'authorization',
  'apiKey',
  'privateKey',
  'url'
]

/** pino redact paths: the secret keys at the top level and up to three levels deep. */
export const REDACT_PATHS = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`, `*.*.*.${k}`])

export function createLogger(level: LoggerOptions['level'] = 'info', destination?: pino.DestinationStream): Logger {
  const options: LoggerOptions = {
    level,
    base: { pid: process.pid },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) }
  }
  return destination ? pino(options, destination) : pino(options)
}
