// Helpers shared by the bench scenarios (files starting with "_" are not scenarios).
import { isolatedEnv } from '../../test/helpers/broker-process.js'
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process'
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'

const ROOT = join(import.meta.dirname, '..', '..')

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

let ticks: number | undefined
/** Clock ticks per second of /proc's CPU counters. */
export function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      ticks = 100
    }
  }
  return ticks
}

/** CPU time (user + system, all threads) a process has used so far, in ms, from /proc/<pid>/stat. */
export function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const utime = Number(fields[11])
  const stime = Number(fields[12])
  return ((utime + stime) * 1000) / clockTicks()
}

/** Resident memory now (VmRSS) and at its peak (VmHWM), in MiB, from /proc/<pid>/status. */
export function memoryMiB(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? NaN)
  return { rss: round(kib('VmRSS') / 1024, 1), peak: round(kib('VmHWM') / 1024, 1) }
}

/** The broker's Prometheus metrics, as `name{labels}` → value (label sets as printed). */
export async function scrapeMetrics(opsPort: number): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${opsPort}/metrics`, { signal: AbortSignal.timeout(10_000) })
  const out = new Map<string, number>()
  for (const line of (await res.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue
    const i = line.lastIndexOf(' ')
    out.set(line.slice(0, i), Number(line.slice(i + 1)))
  }
  return out
}

/** Whether `promise` settled within `ms` (the timer does not keep the process alive afterwards). */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))])
  } finally {
    clearTimeout(timer)
  }
}

/** Polls until `check` returns true; false when `timeoutMs` passed first. */
export async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs: number, intervalMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check()) return true
    if (Date.now() >= deadline) return false
    await sleep(intervalMs)
  }
}

export const round = (x: number, digits = 2): number => Math.round(x * 10 ** digits) / 10 ** digits

/** `--name value` options of a scenario, with integer defaults. */
export function intOptions<T extends Record<string, number>>(args: string[], defaults: T): T {
  const out: Record<string, number> = { ...defaults }
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    const [flag, inline] = arg.split('=', 2) as [string, string | undefined]
    const key = flag.replace(/^--/, '').replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase())
    if (!flag.startsWith('--') || !(key in defaults)) throw new Error(`unknown option ${arg}; options: ${Object.keys(defaults).map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(' ')}`)
    const value = Number(inline ?? args[++i])
    if (!Number.isInteger(value) || value < 0) throw new Error(`${flag}: expected a non-negative integer`)
    out[key] = value
  }
  return out as T
}

export interface Broker {
  child: ChildProcess
  pid: number
  /** Listener name (tcp, ws, ops, ...) → port. */
  ports: Record<string, number>
  /** SIGTERM, then SIGKILL after `graceMs`; removes the data directory. */
  stop(graceMs?: number): Promise<void>
}

/**
 * Starts `parley start` as a child process with its listeners on 127.0.0.1, ports chosen by the OS
 * (read from its 'listening' log lines), and a fresh data directory; resolves when it logs "ready".
 * (Benchmarks are not part of the production build, so the tests' isolated environment is reused.)
 */
export async function startBroker(options: { args?: string[]; env?: NodeJS.ProcessEnv; timeoutMs?: number; nodeArgs?: string[] } = {}): Promise<Broker> {
  const dataDir = mkdtempSync(join(tmpdir(), 'parley-bench-data-'))
  const env: NodeJS.ProcessEnv = { ...isolatedEnv(dataDir), ...options.env }
  // BENCH_BROKER_NODE_ARGS: extra Node options for the broker only, e.g. to profile it:
  // BENCH_BROKER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" (NODE_OPTIONS refuses --cpu-prof).
  // options.nodeArgs: what a scenario itself needs (e.g. --inspect to force GCs), after those.
  const nodeArgs = [...(process.env.BENCH_BROKER_NODE_ARGS ?? '').split(' ').filter(Boolean), ...(options.nodeArgs ?? [])]
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', join(ROOT, 'scripts', 'parley.ts'), 'start', ...(options.args ?? [])], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const killOnExit = () => child.kill('SIGKILL')
  process.once('exit', killOnExit)
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      process.off('exit', killOnExit)
      rmSync(dataDir, { recursive: true, force: true })
      resolve()
    })
  )
  const stderr: string[] = []
  createInterface({ input: child.stderr }).on('line', (l) => stderr.length < 200 && stderr.push(l))
  const ports: Record<string, number> = {}
  const stop = async (graceMs = 20_000) => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    if (!(await settlesWithin(exited, graceMs))) {
      child.kill('SIGKILL')
      await exited
    }
  }
  const ready = new Promise<void>((resolve, reject) => {
    // Keep reading stdout to the end: a full pipe would block the broker's logging.
    // BENCH_BROKER_STDOUT=FILE keeps the broker's stdout there too (e.g. with --trace-gc in BENCH_BROKER_NODE_ARGS).
    const keep = process.env.BENCH_BROKER_STDOUT
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (keep) appendFileSync(keep, `${line}\n`)
      let entry: { msg?: unknown; listener?: unknown; port?: unknown }
      try {
        entry = JSON.parse(line) as typeof entry
      } catch {
        return
      }
      if (entry.msg === 'listening' && typeof entry.listener === 'string' && typeof entry.port === 'number') ports[entry.listener] = entry.port
      if (entry.msg === 'ready') resolve()
    })
    void exited.then(() => reject(new Error(`broker exited (${child.exitCode ?? child.signalCode}) before ready:\n${stderr.join('\n')}`)))
  })
  if (!(await settlesWithin(ready, options.timeoutMs ?? 60_000))) {
    await stop(0)
    throw new Error('broker not ready in time')
  }
  await ready
  return { child, pid: child.pid!, ports, stop }
}

/** A load-generator process forked from a scenario, driven by commands over IPC (one answer per command). */
export interface WorkerProcess<C extends { cmd: string }> {
  child: ChildProcess
  /** Sends `command`; resolves with the answer of the same name, rejects on an error answer, the process's exit or `timeoutMs`. */
  ask<T = Record<string, unknown>>(command: C, timeoutMs: number): Promise<T>
  /** Asks it to exit ({ cmd: 'exit' }), SIGKILL after 5 s. */
  stop(): Promise<void>
}

/**
 * Forks `file` (a worker of scripts/bench, run with tsx) as a generator process: one process per
 * core-sized share of the load, since one event loop and 20,000 descriptors are its limits.
 * `label` names it in errors. The worker answers with serveCommands().
 */
export function forkWorker<C extends { cmd: string }>(file: string, label = 'worker'): WorkerProcess<C> {
  const child = fork(join(import.meta.dirname, file), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const killOnExit = () => child.kill('SIGKILL')
  process.once('exit', killOnExit)
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      process.off('exit', killOnExit)
      resolve()
    })
  )
  return {
    child,
    ask: <T>(command: C, timeoutMs: number) =>
      new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => done(new Error(`${label} ${child.pid}: no answer to ${command.cmd} within ${timeoutMs} ms`)), timeoutMs)
        const onMessage = (msg: { reply: string; error?: string }) => {
          if (msg.reply !== command.cmd) return
          if (msg.error) done(new Error(`${label} ${child.pid} ${command.cmd}: ${msg.error}`))
          else done(undefined, msg as T)
        }
        const onExit = (code: number | null) => done(new Error(`${label} ${child.pid} exited (${code}) during ${command.cmd}`))
        const done = (err?: Error, value?: T) => {
          clearTimeout(timer)
          child.off('message', onMessage)
          child.off('exit', onExit)
          if (err) reject(err)
          else resolve(value!)
        }
        child.on('message', onMessage)
        child.once('exit', onExit)
        child.send(command)
      }),
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.send({ cmd: 'exit' })
      if (!(await settlesWithin(exited, 5000))) child.kill('SIGKILL')
    }
  }
}

/**
 * The worker side of forkWorker(): answers each command from the parent with `{ reply: cmd, ...result }`
 * (or `error`), and exits when the parent goes away. `handle` deals with { cmd: 'exit' } itself.
 */
export function serveCommands<C extends { cmd: string }>(handle: (command: C) => Promise<object>): void {
  process.on('disconnect', () => process.exit(0))
  process.on('message', (command: C) => {
    handle(command).then(
      (result) => process.send!({ reply: command.cmd, ...result }),
      (err: unknown) => process.send!({ reply: command.cmd, error: (err as Error).stack ?? String(err) })
    )
  })
}

/**
 * Runs `task` over `items`, `concurrency` at a time; items not started within `timeoutMs` count as
 * failed. Returns the number of failures and the first error.
 */
export async function pool<T>(items: readonly T[], concurrency: number, timeoutMs: number, task: (item: T, n: number) => Promise<void>): Promise<{ failed: number; firstError?: string }> {
  let next = 0
  let failed = 0
  let firstError: string | undefined
  const deadline = Date.now() + timeoutMs
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, async () => {
      while (next < items.length && Date.now() < deadline) {
        const n = next++
        try {
          await task(items[n]!, n)
        } catch (err) {
          failed++
          firstError ??= (err as Error).message
        }
      }
    })
  )
  failed += items.length - Math.min(next, items.length)
  return { failed, ...(firstError ? { firstError } : {}) }
}
