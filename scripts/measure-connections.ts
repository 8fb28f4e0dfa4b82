// What an idle MQTT connection costs one broker node (the numbers behind docs/scaling.md):
// resident memory (RSS, from /proc/<pid>/status) and V8 heap (the node's /metrics) per connected and
// subscribed client, and how fast a node accepts connections.
//
//   npx tsx scripts/measure-connections.ts [--plugins bare|default] [--clients 2000] [--concurrency 100]
//                                          [--redis redis://...] [--persistent] [--haproxy]
//
// It starts one broker process (`parley start`, listeners on 127.0.0.1, a fresh data directory), warms
// it up with 100 clients that come and go, samples it, then connects --clients mqtt.js clients from
// this process (a separate process from the broker), --concurrency at a time. Each client CONNECTs
// (clean session unless --persistent, keepalive 60 s), then SUBSCRIBEs to its own tree `u/<user>/#` at QoS 1, as a Parley
// device does; then everything is idle for 5 s and the broker is sampled again. The result is one
// JSON line on stdout.
//   --plugins bare     no plugins, anonymous clients: the MQTT relay itself
//   --plugins default  the default plugins (auth-jwt with one token per user, limits, protocol, groups,
//                      messages on the embedded SQLite store), with the per-address connection rate
//                      raised as in deploy/parley.yaml (every client here comes from 127.0.0.1)
//   --redis URL        cluster mode: mqemitter-redis + aedes-persistence-redis on that Redis (its
//                      INFO used_memory is sampled too: give it a Redis nothing else uses)
//   --persistent       clean=false sessions (the subscription is kept in the persistence, Redis in
//                      cluster mode) instead of clean=true
//   --haproxy          connect through a local HAProxy (TCP mode) and sample its RSS too
//
//   npx tsx scripts/measure-connections.ts --redis redis://... --pubsub-patterns 0,10000,100000
// measures Redis alone instead: how fast it takes PUBLISH while one connection holds N pattern
// subscriptions `u/m<i>/*` (what mqemitter-redis makes of each node's distinct `u/<user>/#`
// subscriptions), compared with N exact-channel subscriptions. One subscriber connection, one
// publisher connection sending 100-byte messages to `u/target/m` (channel `u/target` for the exact
// case) in one pipeline; the rate is messages / time until the pipeline's last reply. The
// subscriber also holds the matching subscription and must receive every message.
import { isolatedEnv } from '../test/helpers/broker-process.js'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import mqtt, { type MqttClient } from 'mqtt'
import { AuthJwtConfig } from '../plugins/auth-jwt/config.js'
import { mintToken } from '../plugins/auth-jwt/keys.js'

const root = join(import.meta.dirname, '..')
const { values: args } = parseArgs({
  options: {
    plugins: { type: 'string', default: 'bare' },
    clients: { type: 'string', default: '2000' },
    concurrency: { type: 'string', default: '100' },
    redis: { type: 'string' },
    haproxy: { type: 'boolean', default: false },
    persistent: { type: 'boolean', default: false },
    'pubsub-patterns': { type: 'string' }
  }
})
const N = Number(args.clients)
const CONCURRENCY = Number(args.concurrency)
if (!['bare', 'default'].includes(args.plugins) || !(N > 0) || !(CONCURRENCY > 0)) {
  process.stderr.write('usage: measure-connections.ts [--plugins bare|default] [--clients N] [--concurrency C] [--redis URL] [--persistent] [--haproxy]\n')
  process.exit(2)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function rssKiB(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!match) throw new Error(`no VmRSS for ${pid}`)
  return Number(match[1])
}

async function heapUsedBytes(opsPort: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${opsPort}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
  const match = /^nodejs_heap_size_used_bytes (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(text)
  return match ? Number(match[1]) : NaN
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Redis memory in use (INFO memory), to size Redis per session; use a Redis of your own for this. */
async function redisUsedBytes(): Promise<number> {
  if (!args.redis) return NaN
  const redis = new Redis(args.redis, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await redis.connect()
    const match = /^used_memory:(\d+)/m.exec(await redis.info('memory'))
    return match ? Number(match[1]) : NaN
  } finally {
    redis.disconnect()
  }
}

/** Median of three samples 500 ms apart: RSS moves with the collector. */
async function sample(pid: number, opsPort?: number): Promise<{ rssKiB: number; heapBytes: number }> {
  const rss: number[] = []
  const heap: number[] = []
  for (let i = 0; i < 3; i++) {
    if (i) await sleep(500)
    rss.push(rssKiB(pid))
    heap.push(opsPort ? await heapUsedBytes(opsPort) : NaN)
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[1]!
  return { rssKiB: median(rss), heapBytes: median(heap) }
}

async function startBroker(dataDir: string): Promise<{ child: ChildProcess; tcp: number; ops: number }> {
  const env: NodeJS.ProcessEnv = { ...isolatedEnv(dataDir), PARLEY_LISTENERS__WS__ENABLED: 'false', PARLEY_NODE_NAME: 'measure' }
  if (args.redis) env.REDIS_URL = args.redis
  if (args.plugins === 'bare') Object.assign(env, { PARLEY_PLUGINS: '', PARLEY_MQTT__ALLOW_ANONYMOUS: 'true' })
  else {
    const config = join(dataDir, 'parley.yaml')
    writeFileSync(
      config,
      [
        'plugins:',
        '  - auth-jwt',
        '  - use: limits',
        '    config: { connections: { perIpPerSecond: 100000, burstPerIp: 100000 } }',
        '  - protocol',
        '  - groups',
        '  - messages',
        ''
      ].join('\n')
    )
    env.PARLEY_CONFIG = config
  }
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'scripts', 'parley.ts'), 'start'], { cwd: root, env, stdio: ['ignore', 'pipe', 'inherit'] })
  process.once('exit', () => child.kill('SIGKILL'))
  const ports: Record<string, number> = {}
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('broker not ready within 30 s')), 30_000)
    child.once('exit', (code) => reject(new Error(`broker exited (${code})`)))
    createInterface({ input: child.stdout }).on('line', (line) => {
      let entry: { msg?: string; listener?: string; port?: number }
      try {
        entry = JSON.parse(line) as typeof entry
      } catch {
        return
      }
      if (entry.msg === 'listening' && entry.listener && entry.port) ports[entry.listener] = entry.port
      if (entry.msg === 'ready') {
        clearTimeout(timer)
        resolve()
      }
    })
  })
  return { child, tcp: ports.tcp!, ops: ports.ops! }
}

/** A minimal TCP-mode HAProxy in front of the broker (balancing is irrelevant with one server). */
async function startHaproxy(dir: string, target: number): Promise<{ child: ChildProcess; port: number }> {
  const port = await freePort()
  const cfg = join(dir, 'haproxy.cfg')
  writeFileSync(
    cfg,
    [
      'global',
      // Two descriptors per proxied connection, and test machines allow 20,000 descriptors.
      `    maxconn ${Math.min(N + 500, 9000)}`,
      'defaults',
      '    mode tcp',
      '    timeout connect 5s',
      '    timeout client 15m',
      '    timeout server 15m',
      'frontend mqtt',
      `    bind 127.0.0.1:${port}`,
      '    default_backend b',
      'backend b',
      `    server n1 127.0.0.1:${target}`,
      ''
    ].join('\n')
  )
  const child = spawn('haproxy', ['-f', cfg, '-db'], { stdio: ['ignore', 'ignore', 'inherit'] })
  process.once('exit', () => child.kill('SIGKILL'))
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const probe = createServer()
      probe.once('error', () => resolve(true)) // the port is taken: HAProxy listens
      probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(false)))
    })
    if (up) return { child, port }
    await sleep(100)
  }
  throw new Error('haproxy did not start listening')
}

async function pubsubRates(url: string, sizes: number[]): Promise<void> {
  for (const exact of [false, true]) {
    for (const n of sizes) {
      const sub = new Redis(url)
      const pub = new Redis(url)
      let received = 0
      sub.on(exact ? 'message' : 'pmessage', () => received++)
      for (let i = 0; i < n; i += 5000) {
        const names = Array.from({ length: Math.min(n, i + 5000) - i }, (_, j) => (exact ? `u/m${i + j}` : `u/m${i + j}/*`))
        await (exact ? sub.subscribe(...names) : sub.psubscribe(...names))
      }
      await (exact ? sub.subscribe('u/target') : sub.psubscribe('u/target/*'))
      // Fewer messages where each one is slow, so every size takes seconds, not minutes.
      const messages = !exact && n >= 100_000 ? 2000 : 20_000
      const payload = 'x'.repeat(100)
      const started = performance.now()
      const pipeline = pub.pipeline()
      for (let i = 0; i < messages; i++) pipeline.publish(exact ? 'u/target' : 'u/target/m', payload)
      await pipeline.exec()
      const seconds = (performance.now() - started) / 1000
      for (let k = 0; k < 200 && received < messages; k++) await sleep(50)
      process.stdout.write(
        JSON.stringify({ subscriptions: n, kind: exact ? 'exact channels' : 'patterns', messages, publishesPerSecond: Math.round(messages / seconds), received }) + '\n'
      )
      sub.disconnect()
      pub.disconnect()
    }
  }
}

async function main(): Promise<void> {
  if (args['pubsub-patterns'] !== undefined) {
    if (!args.redis) throw new Error('--pubsub-patterns needs --redis')
    return pubsubRates(args.redis, args['pubsub-patterns'].split(',').map(Number))
  }
  const dataDir = mkdtempSync(join(tmpdir(), 'parley-measure-'))
  const broker = await startBroker(dataDir)
  const haproxy = args.haproxy ? await startHaproxy(dataDir, broker.tcp) : undefined
  const url = `mqtt://127.0.0.1:${haproxy?.port ?? broker.tcp}`
  const authConfig = AuthJwtConfig.parse({})
  const credentials = async (i: number) => {
    const user = `m${i}`
    if (args.plugins === 'bare') return { user, options: { clientId: `${user}:phone` } }
    const token = await mintToken(authConfig, dataDir, { userId: user, ttlSeconds: 3600 })
    return { user, options: { clientId: `${user}:phone`, username: user, password: token } }
  }
  const connectMany = async (from: number, count: number, clients: MqttClient[], users: string[]) => {
    let next = from
    await Promise.all(
      Array.from({ length: Math.min(CONCURRENCY, count) }, async () => {
        while (next < from + count) {
          const i = next++
          const { user, options } = await credentials(i)
          const client = await mqtt.connectAsync(url, { ...options, clean: !args.persistent, keepalive: 60, reconnectPeriod: 0, connectTimeout: 30_000 }, false)
          client.on('error', () => undefined)
          clients[i - from] = client
          users[i - from] = user
        }
      })
    )
  }
  const subscribeAll = async (clients: MqttClient[], users: string[]) => {
    let next = 0
    await Promise.all(
      Array.from({ length: Math.min(CONCURRENCY, clients.length) }, async () => {
        while (next < clients.length) {
          const i = next++
          await clients[i]!.subscribeAsync(`u/${users[i]}/#`, { qos: 1 })
        }
      })
    )
  }

  // Warm-up: code paths compiled, pools and buffers allocated, then let go.
  const warm: MqttClient[] = []
  await connectMany(1_000_000, 100, warm, [])
  await Promise.all(warm.map((c) => c.endAsync()))
  await sleep(2000)
  const before = await sample(broker.child.pid!, broker.ops)
  const proxyBefore = haproxy ? rssKiB(haproxy.child.pid!) : 0
  const redisBefore = await redisUsedBytes()

  const clients: MqttClient[] = []
  const users: string[] = []
  const t0 = performance.now()
  await connectMany(0, N, clients, users)
  const connectSeconds = (performance.now() - t0) / 1000
  await sleep(2000)
  const connected = await sample(broker.child.pid!, broker.ops)
  const t1 = performance.now()
  await subscribeAll(clients, users)
  const subscribeSeconds = (performance.now() - t1) / 1000
  await sleep(5000)
  const after = await sample(broker.child.pid!, broker.ops)
  const proxyAfter = haproxy ? rssKiB(haproxy.child.pid!) : 0
  const redisAfter = await redisUsedBytes()

  const perClient = (a: number, b: number) => Math.round((a - b) / N)
  process.stdout.write(
    JSON.stringify({
      plugins: args.plugins,
      cluster: Boolean(args.redis),
      persistent: args.persistent,
      viaHaproxy: Boolean(haproxy),
      clients: N,
      concurrency: CONCURRENCY,
      connectsPerSecond: Math.round(N / connectSeconds),
      subscribesPerSecond: Math.round(N / subscribeSeconds),
      brokerRssMiB: { before: +(before.rssKiB / 1024).toFixed(1), connected: +(connected.rssKiB / 1024).toFixed(1), subscribed: +(after.rssKiB / 1024).toFixed(1) },
      rssBytesPerClient: { connected: perClient(connected.rssKiB * 1024, before.rssKiB * 1024), subscribed: perClient(after.rssKiB * 1024, before.rssKiB * 1024) },
      heapBytesPerClient: { connected: perClient(connected.heapBytes, before.heapBytes), subscribed: perClient(after.heapBytes, before.heapBytes) },
      ...(args.redis ? { redisBytesPerClient: perClient(redisAfter, redisBefore) } : {}),
      ...(haproxy ? { haproxyRssBytesPerConnection: perClient(proxyAfter * 1024, proxyBefore * 1024) } : {})
    }) + '\n'
  )

  // Bounded teardown: clients, then the broker's graceful stop, then HAProxy.
  await Promise.race([Promise.all(clients.map((c) => c.endAsync(true))), sleep(10_000)])
  const exited = new Promise((resolve) => broker.child.once('exit', resolve))
  broker.child.kill('SIGTERM')
  await Promise.race([exited, sleep(15_000)])
  haproxy?.child.kill('SIGTERM')
  rmSync(dataDir, { recursive: true, force: true })
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`measure-connections: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  }
)
