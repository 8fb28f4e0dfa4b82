// Runs real broker processes (`parley start`) for end-to-end tests, on ports the OS picks.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'

export const ROOT = join(import.meta.dirname, '..', '..')
export const PARLEY = join(ROOT, 'scripts', 'parley.ts')

export interface LogLine {
  level: string
  msg: string
  [key: string]: unknown
}

export interface BrokerProcess {
  child: ChildProcess
  /** The node's data directory (its generated token secret lives there). */
  dataDir: string
  brokerId: string
  ports: Record<string, number>
  logs: LogLine[]
  stderr: string[]
  /** Sends a signal and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>
  exited: Promise<number | null>
}

/** A broker without plugins that admits anonymous clients: the MQTT relay itself. */
export const BARE: NodeJS.ProcessEnv = { PARLEY_PLUGINS: '', PARLEY_MQTT__ALLOW_ANONYMOUS: 'true' }

/** Environment that puts every listener on 127.0.0.1 port 0 and the data in a fresh directory. */
export function isolatedEnv(dataDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    // The parent's own Parley settings must not leak into the broker under test.
    if (!k.startsWith('PARLEY_') && !['REDIS_URL', 'MONGO_URL', 'S3_ENDPOINT', 'LOG_LEVEL'].includes(k)) env[k] = v
  }
  return {
    ...env,
    PARLEY_DATA_DIR: dataDir,
    PARLEY_LISTENERS__TCP__HOST: '127.0.0.1',
    PARLEY_LISTENERS__TCP__PORT: '0',
    PARLEY_LISTENERS__WS__HOST: '127.0.0.1',
    PARLEY_LISTENERS__WS__PORT: '0',
    PARLEY_LISTENERS__OPS__HOST: '127.0.0.1',
    PARLEY_LISTENERS__OPS__PORT: '0'
  }
}

/** Runs `parley <args>` to completion and returns its exit code and output. */
export async function runParley(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', PARLEY, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)))
  return { code, stdout, stderr }
}

/** Starts a broker process and waits until it logs "ready". */
export async function startBroker(
  options: {
    env?: NodeJS.ProcessEnv
    args?: string[]
    timeoutMs?: number
    /** 'ready' (default): the node is serving MQTT; 'ops': only its operations listener is up. */
    waitFor?: 'ready' | 'ops'
  } = {}
): Promise<BrokerProcess> {
  const dataDir = mkdtempSync(join(tmpdir(), 'parley-test-'))
  const env = { ...isolatedEnv(dataDir), ...options.env }
  const child = spawn(process.execPath, ['--import', 'tsx', PARLEY, 'start', ...(options.args ?? [])], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  // If the test process ends first (a failure, a timeout), the broker must not outlive it.
  const killOnExit = () => child.kill('SIGKILL')
  process.once('exit', killOnExit)
  child.once('exit', () => process.off('exit', killOnExit))
  const logs: LogLine[] = []
  const stderr: string[] = []
  const ports: Record<string, number> = {}
  let brokerId = ''
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      rmSync(dataDir, { recursive: true, force: true })
      resolve(code)
    })
  )
  createInterface({ input: child.stderr }).on('line', (l) => stderr.push(l))
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      let entry: LogLine
      try {
        entry = JSON.parse(line) as LogLine
      } catch {
        return
      }
      logs.push(entry)
      if (typeof entry.brokerId === 'string' && !brokerId) brokerId = entry.brokerId
      if (entry.msg === 'listening' && typeof entry.listener === 'string') {
        ports[entry.listener] = entry.port as number
        if (entry.listener === 'ops' && options.waitFor === 'ops') resolve()
      }
      if (entry.msg === 'ready') {
        brokerId = String(entry.brokerId)
        resolve()
      }
    })
    void exited.then((code) => reject(new Error(`broker exited (${code}) before ready:\n${stderr.join('\n')}\n${logs.map((l) => JSON.stringify(l)).join('\n')}`)))
  })
  const timeoutMs = options.timeoutMs ?? 30_000
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      ready,
      new Promise((_r, reject) => {
        timer = setTimeout(() => reject(new Error(`broker not ready within ${timeoutMs} ms`)), timeoutMs)
      })
    ])
  } catch (err) {
    child.kill('SIGKILL')
    throw err
  } finally {
    clearTimeout(timer)
  }
  return {
    child,
    dataDir,
    get brokerId() {
      return brokerId
    },
    ports,
    logs,
    stderr,
    exited,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
      return exited
    }
  }
}

/** Polls until `check` returns true, or fails after `timeoutMs` (a bound, not a timing assertion). */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`${what} not reached within ${timeoutMs} ms`)
}

/** Awaits `promise`, or fails after `timeoutMs` naming what never happened (a hang becomes a clear failure). */
export async function within<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${timeoutMs} ms`)), timeoutMs)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}
