// Provisions and runs the real services the tests need, on free loopback ports:
//   Redis       Debian's redis-server (apt-get install when missing and running as root)
//   HAProxy     Debian's haproxy (the load balancer of deploy/haproxy.cfg, for the cluster tests);
//               openssl, for the test certificates of the push fakes
//   MongoDB     FerretDB 1.24.2 (MongoDB wire protocol, SQLite backend), built from the Go module proxy
//   S3          MinIO, built from the Go module proxy (`go install github.com/minio/minio@<version>`)
// Builds are cached outside the repository (XDG_CACHE_HOME or ~/.cache, under parley/), so the
// second run starts in seconds. Services given in the environment (TEST_REDIS_URL, TEST_MONGO_URL,
// TEST_S3_ENDPOINT + TEST_S3_ACCESS_KEY + TEST_S3_SECRET_KEY) are used as they are.
//
// Usage: tsx scripts/services.ts provision   (install and build only)
//        tsx scripts/services.ts up          (start; prints the env to use; Ctrl-C stops)
// Tests that need a service of their own (stopped, killed and started again: test/fault/) use the
// starters: startRedis({ dir, port?, appendonly? }) and startFerretDb({ dir, port? }) return
// { url, port, pid, running, stop(), kill9(), restart() }; restart() reuses the port and the files.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, chmodSync } from 'node:fs'
import { createServer, connect } from 'node:net'
import { homedir, tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

export const FERRETDB_VERSION = 'v1.24.2'
/** The version `go install github.com/minio/minio@latest` resolved to when this was written; pinned for repeatable builds. */
export const MINIO_VERSION = 'v0.0.0-20260212201848-7aac2a2c5b7c'
const APT_PACKAGES = ['redis-server', 'mosquitto', 'mosquitto-clients', 'haproxy', 'openssl']

export interface ServiceEnv {
  TEST_REDIS_URL: string
  TEST_MONGO_URL: string
  TEST_S3_ENDPOINT: string
  TEST_S3_ACCESS_KEY: string
  TEST_S3_SECRET_KEY: string
}

export interface RunningServices {
  env: ServiceEnv
  /** How each service was obtained, for the test log. */
  report: string[]
  stop(): Promise<void>
}

const say = (msg: string) => process.stderr.write(`[services] ${msg}\n`)

export function cacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache')
  const dir = join(base, 'parley')
  mkdirSync(join(dir, 'bin'), { recursive: true })
  return dir
}

function has(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

function aptInstalled(pkg: string): boolean {
  try {
    const out = execFileSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    return out.includes('install ok installed')
  } catch {
    return false
  }
}

/** Installs Debian packages that are missing (needs root, as on CI and the dev machines). */
export function ensureAptPackages(packages = APT_PACKAGES): void {
  const missing = packages.filter((p) => !aptInstalled(p))
  if (!missing.length) return
  if (process.getuid?.() !== 0) {
    throw new Error(`missing Debian packages: ${missing.join(' ')}; install them with: sudo apt-get install -y ${missing.join(' ')}`)
  }
  say(`apt-get install ${missing.join(' ')}`)
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env })
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env })
}

function goEnv(): NodeJS.ProcessEnv {
  if (!has('go')) throw new Error('Go is needed to build FerretDB and MinIO (it is on every machine of this kind)')
  return { ...process.env, CGO_ENABLED: '0', GOFLAGS: '-mod=mod', GOTOOLCHAIN: 'local' }
}

/**
 * FerretDB's plain `go install` panics at start (missing build/version/version.txt, upstream #2982):
 * download the module, write the version file, and build its own cmd/ferretdb.
 */
export function ensureFerretDb(): string {
  const bin = join(cacheDir(), 'bin', `ferretdb-${FERRETDB_VERSION}`)
  if (existsSync(bin)) return bin
  say(`building FerretDB ${FERRETDB_VERSION} from the Go module proxy (once; cached in ${cacheDir()})`)
  const env = goEnv()
  const info = JSON.parse(
    execFileSync('go', ['mod', 'download', '-json', `github.com/FerretDB/FerretDB@${FERRETDB_VERSION}`], {
      encoding: 'utf8',
      env,
      cwd: tmpdir()
    })
  ) as { Dir: string }
  const src = join(cacheDir(), `ferretdb-src-${FERRETDB_VERSION}`)
  rmSync(src, { recursive: true, force: true })
  cpSync(info.Dir, src, { recursive: true })
  execFileSync('chmod', ['-R', 'u+w', src])
  writeFileSync(join(src, 'build', 'version', 'version.txt'), `${FERRETDB_VERSION}\n`)
  execFileSync('go', ['build', '-o', `${bin}.tmp`, './cmd/ferretdb'], { cwd: src, env, stdio: 'inherit' })
  execFileSync('mv', [`${bin}.tmp`, bin])
  rmSync(src, { recursive: true, force: true })
  return bin
}

export function ensureMinio(): string {
  const bin = join(cacheDir(), 'bin', `minio-${MINIO_VERSION}`)
  if (existsSync(bin)) return bin
  say(`building MinIO ${MINIO_VERSION} from the Go module proxy (once, a few minutes; cached in ${cacheDir()})`)
  const gobin = mkdtempSync(join(cacheDir(), 'gobin-'))
  execFileSync('go', ['install', `github.com/minio/minio@${MINIO_VERSION}`], {
    env: { ...goEnv(), GOBIN: gobin },
    cwd: tmpdir(),
    stdio: 'inherit'
  })
  execFileSync('mv', [join(gobin, 'minio'), bin])
  rmSync(gobin, { recursive: true, force: true })
  chmodSync(bin, 0o755)
  return bin
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, host, () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

async function waitFor(what: string, child: ChildProcess, ready: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode} during start-up`)
    if (await ready().catch(() => false)) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`${what} did not become ready within ${timeoutMs} ms`)
}

async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill(signal)
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
  await exited
  clearTimeout(timer)
}

/** Answers PING with PONG (not LOADING, as Redis does while it replays its append-only file). */
function redisPong(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' })
    let got = ''
    const done = (ok: boolean) => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(1000, () => done(false))
    s.once('connect', () => s.write('PING\r\n'))
    s.on('data', (d: Buffer) => {
      got += d.toString()
      if (got.includes('\r\n')) done(got.startsWith('+PONG'))
    })
    s.once('error', () => done(false))
  })
}

/** A service process this script started: stop it, kill it, and start it again on the same port and data. */
export interface ServiceProcess {
  /** e.g. redis://127.0.0.1:PORT or mongodb://127.0.0.1:PORT/ */
  readonly url: string
  readonly port: number
  /** The current process id (a restart changes it); undefined while stopped. */
  readonly pid: number | undefined
  readonly running: boolean
  /** SIGTERM (SIGKILL after 5 s), resolves once it exited. Idempotent. */
  stop(): Promise<void>
  /** SIGKILL, resolves once it exited. */
  kill9(): Promise<void>
  /** Starts it again with the same arguments (same port, same directory), once ready; stops it first if it runs. */
  restart(): Promise<void>
}

interface ServiceSpec {
  name: string
  cmd: string
  args: string[]
  env?: NodeJS.ProcessEnv
  /** Log file (appended to across restarts). */
  log: string
  url: string
  port: number
  ready: () => Promise<boolean>
  readyTimeoutMs: number
}

async function startService(spec: ServiceSpec): Promise<ServiceProcess> {
  let child: ChildProcess | undefined
  // If this process dies, the service goes with it.
  const killOnExit = () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  const launch = async () => {
    const out = openSync(spec.log, 'a')
    const started = spawn(spec.cmd, spec.args, { stdio: ['ignore', out, out], env: spec.env ?? process.env })
    closeSync(out)
    child = started
    process.once('exit', killOnExit)
    started.once('exit', () => process.off('exit', killOnExit))
    try {
      await waitFor(spec.name, started, spec.ready, spec.readyTimeoutMs)
    } catch (err) {
      await stopChild(started, 'SIGKILL')
      throw err
    }
  }
  const halt = async (signal: NodeJS.Signals) => {
    if (child) await stopChild(child, signal)
  }
  await launch()
  return {
    url: spec.url,
    port: spec.port,
    get pid() {
      return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined
    },
    get running() {
      return Boolean(child && child.exitCode === null && child.signalCode === null)
    },
    stop: () => halt('SIGTERM'),
    kill9: () => halt('SIGKILL'),
    restart: async () => {
      await halt('SIGTERM')
      await launch()
    }
  }
}

/**
 * Starts Debian's redis-server on 127.0.0.1 (a free port unless given), its files in `dir`.
 * `appendonly: true` (with fsync on every write) keeps sessions and queues across a restart,
 * even one after kill -9; the default is a pure in-memory Redis, as for the test suite.
 */
export async function startRedis(opts: { dir: string; port?: number; appendonly?: boolean; log?: string }): Promise<ServiceProcess> {
  const port = opts.port ?? (await freePort())
  mkdirSync(opts.dir, { recursive: true })
  // 64 databases: test files each take their own (test/helpers/services.ts redisDb).
  const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', opts.appendonly ? 'yes' : 'no', '--databases', '64']
  if (opts.appendonly) args.push('--appendfsync', 'always')
  args.push('--dir', opts.dir)
  return startService({
    name: 'redis-server',
    cmd: 'redis-server',
    args,
    log: opts.log ?? join(opts.dir, 'redis.log'),
    url: `redis://127.0.0.1:${port}`,
    port,
    ready: () => redisPong(port),
    readyTimeoutMs: 10_000
  })
}

/** Starts FerretDB (SQLite backend, its files in `dir`) on 127.0.0.1 (a free port unless given); builds it first if needed. */
export async function startFerretDb(opts: { dir: string; port?: number; log?: string }): Promise<ServiceProcess> {
  const bin = ensureFerretDb()
  const port = opts.port ?? (await freePort())
  const dataDir = opts.dir.endsWith('/') ? opts.dir : `${opts.dir}/`
  mkdirSync(dataDir, { recursive: true })
  return startService({
    name: 'ferretdb',
    cmd: bin,
    args: [
      '--handler=sqlite', `--sqlite-url=file:${dataDir}`, `--listen-addr=127.0.0.1:${port}`,
      '--telemetry=disable', '--state-dir=-', '--debug-addr=-', '--log-level=warn'
    ],
    log: opts.log ?? join(dataDir, '..', `ferretdb-${port}.log`),
    url: `mongodb://127.0.0.1:${port}/`,
    port,
    ready: () => tcpOpen(port),
    readyTimeoutMs: 20_000
  })
}

/** Starts (or reuses, from the environment) Redis, FerretDB and MinIO. */
export async function startServices(): Promise<RunningServices> {
  const runDir = mkdtempSync(join(tmpdir(), 'parley-services-'))
  const children: ChildProcess[] = []
  const services: ServiceProcess[] = []
  const report: string[] = []
  const spawnLogged = (name: string, cmd: string, args: string[], env?: NodeJS.ProcessEnv) => {
    const out = openSync(join(runDir, `${name}.log`), 'a')
    const child = spawn(cmd, args, { stdio: ['ignore', out, out], env: env ?? process.env })
    children.push(child)
    return child
  }
  // If the test runner dies, take the services with it.
  const killAll = () => children.forEach((c) => c.exitCode === null && c.kill('SIGKILL'))
  process.once('exit', killAll)

  const stop = async () => {
    await Promise.all([...children.map((c) => stopChild(c)), ...services.map((s) => s.stop())])
    process.off('exit', killAll)
    rmSync(runDir, { recursive: true, force: true })
  }

  try {
    const e = process.env
    let redisUrl = e.TEST_REDIS_URL
    let mongoUrl = e.TEST_MONGO_URL
    let s3 = e.TEST_S3_ENDPOINT ? { endpoint: e.TEST_S3_ENDPOINT, accessKey: e.TEST_S3_ACCESS_KEY ?? '', secretKey: e.TEST_S3_SECRET_KEY ?? '' } : undefined

    if (!redisUrl || !has('mosquitto_pub') || !has('haproxy') || !has('openssl')) ensureAptPackages()
    if (redisUrl) report.push(`redis: given ${redisUrl}`)
    else {
      const redis = await startRedis({ dir: runDir, log: join(runDir, 'redis.log') })
      services.push(redis)
      redisUrl = redis.url
      report.push(`redis: Debian redis-server on ${redisUrl}`)
    }

    if (mongoUrl) report.push('mongo: given in TEST_MONGO_URL')
    else {
      const ferret = await startFerretDb({ dir: join(runDir, 'ferretdb'), log: join(runDir, 'ferretdb.log') })
      services.push(ferret)
      mongoUrl = ferret.url
      report.push(`mongo: FerretDB ${FERRETDB_VERSION} (SQLite) on ${mongoUrl}`)
    }

    if (s3) report.push(`s3: given ${s3.endpoint}`)
    else {
      const bin = ensureMinio()
      const port = await freePort()
      const consolePort = await freePort()
      const accessKey = 'parley-test'
      const secretKey = randomBytes(18).toString('hex')
      const child = spawnLogged('minio', bin, [
        'server', join(runDir, 'minio'), '--address', `127.0.0.1:${port}`, '--console-address', `127.0.0.1:${consolePort}`, '--quiet'
      ], { ...process.env, MINIO_ROOT_USER: accessKey, MINIO_ROOT_PASSWORD: secretKey, MINIO_BROWSER: 'off', MINIO_UPDATE: 'off' })
      await waitFor('minio', child, async () => (await fetch(`http://127.0.0.1:${port}/minio/health/ready`)).ok, 30_000)
      s3 = { endpoint: `http://127.0.0.1:${port}`, accessKey, secretKey }
      report.push(`s3: MinIO ${MINIO_VERSION} on ${s3.endpoint}`)
    }

    return {
      env: {
        TEST_REDIS_URL: redisUrl,
        TEST_MONGO_URL: mongoUrl,
        TEST_S3_ENDPOINT: s3.endpoint,
        TEST_S3_ACCESS_KEY: s3.accessKey,
        TEST_S3_SECRET_KEY: s3.secretKey
      },
      report,
      stop
    }
  } catch (err) {
    await stop()
    throw err
  }
}

async function main(command: string | undefined): Promise<void> {
  if (command === 'provision') {
    ensureAptPackages()
    say(`ferretdb: ${ensureFerretDb()}`)
    say(`minio: ${ensureMinio()}`)
    return
  }
  if (command === 'up') {
    const services = await startServices()
    services.report.forEach((r) => say(r))
    for (const [k, v] of Object.entries(services.env)) process.stdout.write(`export ${k}=${v}\n`)
    say('running; Ctrl-C stops them')
    const stopAll = () => void services.stop().then(() => process.exit(0))
    process.once('SIGINT', stopAll)
    process.once('SIGTERM', stopAll)
    return
  }
  process.stderr.write('usage: tsx scripts/services.ts provision|up\n')
  process.exit(2)
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await main(process.argv[2])
