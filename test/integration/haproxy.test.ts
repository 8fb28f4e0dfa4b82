// deploy/haproxy.cfg, the load balancer of docker-compose.yml, checked by Debian's haproxy and then run
// for real: MQTT clients connect through it to three broker processes clustered over Redis.
import assert from 'node:assert/strict'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import mqtt, { type MqttClient } from 'mqtt'
import { BARE, ROOT, eventually, startBroker, within, type BrokerProcess } from '../helpers/broker-process.js'
import { redisDb } from '../helpers/services.js'

const PRODUCTION_CFG = join(ROOT, 'deploy', 'haproxy.cfg')
/** Debian's haproxy 2.6 (scripts/services.ts installs it); the compose stack runs the haproxy:2.8 image. */
const HAPROXY = process.env.HAPROXY_BIN ?? 'haproxy'
const NODES = ['parley-1', 'parley-2', 'parley-3'] as const
const TCP_CLIENTS = 30
const uid = () => randomBytes(4).toString('hex')

/** `haproxy -c -f <file>`: exit code and everything it printed. */
function checkConfig(file: string): { code: number | null; output: string } {
  const res = spawnSync(HAPROXY, ['-c', '-f', file], { encoding: 'utf8', timeout: 15_000 })
  if (res.error) throw new Error(`cannot run ${HAPROXY} (scripts/services.ts installs Debian's haproxy): ${res.error.message}`)
  return { code: res.status, output: `${res.stdout}${res.stderr}` }
}

interface NodeAddress {
  tcp: number
  ws: number
  ops: number
}

/**
 * The production config made runnable on this machine, changing only where things are, never how they
 * are balanced or checked:
 *   1. the `resolvers` section (Docker's DNS at 127.0.0.11) is dropped, and so is `resolvers <name>`
 *      on server and default-server lines: the servers below are IP literals;
 *   2. `server <node> <node>:1883|8080 ... port 9090` gets the node's loopback TCP, WebSocket and
 *      operations ports (the test brokers listen on ports the OS picked);
 *   3. `bind :<port>` becomes `bind 127.0.0.1:<free port>`.
 * Balancing, health checks (option httpchk GET /readyz, inter 2s fall 3 rise 2), timeouts, retries and
 * redispatch stay as in production: the test runs at production check intervals.
 * Every rewrite is counted, so a production file of another shape fails here instead of being tested
 * half-translated.
 */
function deriveConfig(cfg: string, nodes: Record<string, NodeAddress>, binds: Record<string, number>): string {
  const out: string[] = []
  let inResolvers = false
  const rewrites = { resolvers: 0, servers: 0, binds: 0 }
  for (const line of cfg.split('\n')) {
    if (/^\S/.test(line)) {
      // A section header (global, defaults, frontend, backend, resolvers, ...) starts at column 0.
      inResolvers = /^resolvers\s/.test(line)
      if (inResolvers) {
        rewrites.resolvers++
        continue
      }
    }
    if (inResolvers) continue
    let text = line
    if (/^\s*(default-server|server)\s/.test(text)) text = text.replace(/\s+resolvers\s+\S+/, '')
    const server = /^(\s*server\s+\S+\s+)([\w.-]+):(\d+)(.*)$/.exec(text)
    if (server) {
      const [, head, host, port, rest] = server
      const node = nodes[host!]
      assert.ok(node, `server address ${host}:${port} names a known node`)
      const target = port === '1883' ? node.tcp : port === '8080' ? node.ws : undefined
      assert.ok(target, `server ${host}:${port} is the MQTT (1883) or WebSocket (8080) port`)
      assert.match(rest!, /\sport 9090\b/, `server ${host}:${port} is checked on the operations port`)
      text = `${head}127.0.0.1:${target}${rest!.replace(/\sport 9090\b/, ` port ${node.ops}`)}`
      rewrites.servers++
    }
    const bind = /^(\s*bind\s+):(\d+)(.*)$/.exec(text)
    if (bind) {
      const [, head, port, rest] = bind
      const local = binds[port!]
      assert.ok(local, `bind :${port} has a local port to use`)
      text = `${head}127.0.0.1:${local}${rest}`
      rewrites.binds++
    }
    out.push(text)
  }
  assert.deepEqual(rewrites, { resolvers: 1, servers: 2 * Object.keys(nodes).length, binds: Object.keys(binds).length }, 'every address was rewritten')
  const derived = out.join('\n')
  assert.doesNotMatch(derived, /127\.0\.0\.11|\bresolvers\b/, 'nothing points at Docker\'s DNS any more')
  return derived
}

async function freePort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** HAProxy's own view of its servers, from the stats frontend (CSV): state and current sessions. */
async function haproxyServers(statsPort: number): Promise<Array<{ backend: string; server: string; status: string; sessions: number }>> {
  const res = await fetch(`http://127.0.0.1:${statsPort}/stats;csv`, { signal: AbortSignal.timeout(2000) })
  const [header, ...rows] = (await res.text()).trim().split('\n')
  const cols = header!.replace(/^# /, '').split(',')
  const col = (name: string) => cols.indexOf(name)
  return rows
    .map((r) => r.split(','))
    .filter((r) => !['FRONTEND', 'BACKEND'].includes(r[col('svname')]!))
    .map((r) => ({ backend: r[col('pxname')]!, server: r[col('svname')]!, status: r[col('status')]!, sessions: Number(r[col('scur')]) }))
}

/** The node's parley_connected_clients gauge (its /metrics). */
async function connectedClients(node: BrokerProcess): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${node.ports.ops}/metrics`, { signal: AbortSignal.timeout(2000) })
  const match = /^parley_connected_clients (\d+)$/m.exec(await res.text())
  assert.ok(match, 'the node reports parley_connected_clients')
  return Number(match[1])
}

describe('deploy/haproxy.cfg', () => {
  it('is valid for `haproxy -c` as it is, outside Docker too (init-addr none tolerates the unresolved node names)', () => {
    const { code, output } = checkConfig(PRODUCTION_CFG)
    assert.equal(code, 0, output)
    assert.match(output, /Configuration file is valid/)
    // The only warnings are the node names that resolve only on the compose network.
    const warnings = output.split('\n').filter((l) => l.includes('[WARNING]'))
    for (const w of warnings) assert.match(w, /could not resolve address 'parley-[123]'/, `unexpected warning: ${w}`)
  })
})

describe('MQTT clients through HAProxy to three broker nodes', { timeout: 100_000 }, () => {
  const redisUrl = redisDb(7)
  const nodes = new Map<string, BrokerProcess>()
  const haproxyLog: string[] = []
  const clients: MqttClient[] = []
  /** How often each client's connection closed. */
  const closes = new Map<MqttClient, number>()
  const topic = `room/${uid()}`
  let haproxy: ChildProcess | undefined
  let haproxyExited: Promise<number | null> | undefined
  let workDir = ''
  let mqttPort = 0
  let wsPort = 0
  let statsPort = 0
  let ws: MqttClient

  /** Connects through HAProxy; reconnects (through HAProxy again) when its node goes away. */
  async function connect(url: string): Promise<MqttClient> {
    const client = await within(
      mqtt.connectAsync(url, { clientId: `hx-${uid()}`, reconnectPeriod: 250, connectTimeout: 5000 }),
      10_000,
      `connect to ${url}`
    )
    closes.set(client, 0)
    client.on('close', () => closes.set(client, closes.get(client)! + 1))
    client.on('error', () => undefined)
    clients.push(client)
    return client
  }

  /** Every client receives one message published by `from` (QoS 1). */
  async function publishAndExpectEveryone(from: MqttClient, payload: string): Promise<void> {
    const received = clients.map(
      (c) =>
        new Promise<void>((resolve) => {
          const onMessage = (t: string, p: Buffer) => {
            if (t !== topic || p.toString() !== payload) return
            c.off('message', onMessage)
            resolve()
          }
          c.on('message', onMessage)
        })
    )
    await within(from.publishAsync(topic, payload, { qos: 1 }), 5000, `PUBACK of ${payload}`)
    await within(Promise.all(received), 10_000, `every one of ${clients.length} clients receives ${payload}`)
  }

  before(async () => {
    const started = await Promise.all(
      NODES.map((name) => startBroker({ env: { ...BARE, REDIS_URL: redisUrl, PARLEY_NODE_NAME: name, LOG_LEVEL: 'info' } }))
    )
    NODES.forEach((name, i) => nodes.set(name, started[i]!))
    ;[mqttPort, wsPort, statsPort] = await Promise.all([freePort(), freePort(), freePort()])
    const derived = deriveConfig(
      readFileSync(PRODUCTION_CFG, 'utf8'),
      Object.fromEntries(
        NODES.map((name) => {
          const { tcp, ws, ops } = nodes.get(name)!.ports
          return [name, { tcp: tcp!, ws: ws!, ops: ops! }]
        })
      ),
      { 1883: mqttPort, 8080: wsPort, 8404: statsPort }
    )
    workDir = mkdtempSync(join(tmpdir(), 'parley-haproxy-'))
    const cfgFile = join(workDir, 'haproxy.cfg')
    writeFileSync(cfgFile, derived)
    const checked = checkConfig(cfgFile)
    assert.equal(checked.code, 0, `derived config:\n${derived}\n${checked.output}`)

    // -db: stay in the foreground, log to stdout (the config logs to stdout). -n: the production
    // `maxconn 100000` needs about 200,000 file descriptors, and HAProxy refuses to start when it cannot
    // raise its limit that high (strict-limits); test machines allow 20,000. The command-line limit
    // takes precedence over the file's and leaves the file as it is.
    const child = spawn(HAPROXY, ['-f', cfgFile, '-db', '-n', '1000'], { stdio: ['ignore', 'pipe', 'pipe'] })
    haproxy = child
    const killOnExit = () => child.kill('SIGKILL')
    process.once('exit', killOnExit)
    haproxyExited = new Promise((resolve) =>
      child.on('exit', (code) => {
        process.off('exit', killOnExit)
        resolve(code)
      })
    )
    child.stdout.on('data', (d: Buffer) => haproxyLog.push(d.toString()))
    child.stderr.on('data', (d: Buffer) => haproxyLog.push(d.toString()))
    const exitedEarly = haproxyExited.then((code) => {
      throw new Error(`haproxy exited (${code}) at start:\n${haproxyLog.join('')}`)
    })
    // HAProxy answers on its stats port and sees all six servers (3 nodes x TCP, WebSocket) up.
    await Promise.race([
      exitedEarly,
      eventually(
        async () => {
          const servers = await haproxyServers(statsPort).catch(() => [])
          return servers.length === 6 && servers.every((s) => s.status === 'UP')
        },
        20_000,
        'HAProxy up with every server UP'
      )
    ])
    exitedEarly.catch(() => undefined)
  })

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)))
    if (haproxy && haproxy.exitCode === null && haproxy.signalCode === null) haproxy.kill('SIGTERM')
    await within(haproxyExited ?? Promise.resolve(null), 10_000, 'haproxy exit').catch(() => haproxy?.kill('SIGKILL'))
    await Promise.all([...nodes.values()].map((n) => n.stop()))
    if (workDir) rmSync(workDir, { recursive: true, force: true })
  })

  it(`spreads ${TCP_CLIENTS} TCP clients over the three nodes (leastconn)`, async (t) => {
    await Promise.all(Array.from({ length: TCP_CLIENTS }, () => connect(`mqtt://127.0.0.1:${mqttPort}`)))
    const counts = await Promise.all(NODES.map((n) => connectedClients(nodes.get(n)!)))
    t.diagnostic(`clients per node: ${NODES.map((n, i) => `${n}=${counts[i]}`).join(' ')}`)
    assert.equal(
      counts.reduce((a, b) => a + b, 0),
      TCP_CLIENTS,
      'every client is on one of the nodes'
    )
    for (const [i, count] of counts.entries()) assert.ok(count > 0, `${NODES[i]} has clients`)
    // HAProxy agrees on where they are.
    const sessions = (await haproxyServers(statsPort)).filter((s) => s.backend === 'mqtt_brokers')
    assert.deepEqual(
      NODES.map((n) => sessions.find((s) => s.server === n)?.sessions),
      counts
    )
  })

  it('carries a WebSocket client (path /mqtt) through its WebSocket frontend', async () => {
    ws = await connect(`ws://127.0.0.1:${wsPort}/mqtt`)
    const sessions = (await haproxyServers(statsPort)).filter((s) => s.backend === 'ws_brokers')
    assert.equal(
      sessions.reduce((a, s) => a + s.sessions, 0),
      1,
      'the WebSocket connection went through the ws_brokers backend'
    )
  })

  it('delivers a message published on one node to subscribers on every node', async () => {
    await within(
      Promise.all(clients.map((c) => c.subscribeAsync(topic, { qos: 1 }))),
      10_000,
      'every client subscribed'
    )
    // Each node has subscribers (previous test), so the message crosses nodes through Redis.
    await publishAndExpectEveryone(clients[0]!, 'from a tcp client')
    await publishAndExpectEveryone(ws, 'from the websocket client')
  })

  it('takes a stopped node out of rotation; its clients reconnect through HAProxy to the others and keep receiving', async (t) => {
    const victim = nodes.get('parley-2')!
    const onVictim = await connectedClients(victim)
    assert.ok(onVictim > 0)
    const closesBefore = new Map(closes)

    // Graceful stop: /readyz turns 503, the listeners close, then the node closes its clients.
    assert.equal(await within(victim.stop('SIGTERM'), 20_000, 'parley-2 stops'), 0)
    nodes.delete('parley-2')
    await eventually(
      async () => {
        const servers = (await haproxyServers(statsPort)).filter((s) => s.server === 'parley-2')
        return servers.length === 2 && servers.every((s) => s.status.startsWith('DOWN'))
      },
      20_000,
      'HAProxy marks parley-2 DOWN in both backends'
    )
    await eventually(() => clients.every((c) => c.connected), 20_000, 'every client connected again')

    const dropped = clients.filter((c) => closes.get(c)! > closesBefore.get(c)!)
    t.diagnostic(`parley-2 had ${onVictim} clients; ${dropped.length} reconnected through HAProxy`)
    assert.equal(dropped.length, onVictim, 'exactly the clients of the stopped node were dropped')
    // The stopped node refuses connects before its health check has failed three times; `option
    // redispatch` retries those on another node, so each client's first reconnect succeeds. (Without
    // it, leastconn sends them back to the empty stopped node: measured 3 failed attempts each.)
    assert.deepEqual(
      dropped.map((c) => closes.get(c)! - closesBefore.get(c)!),
      dropped.map(() => 1),
      'each dropped client reconnected on its first attempt'
    )
    const survivors = [...nodes.values()]
    const counts = await Promise.all(survivors.map((n) => connectedClients(n)))
    assert.equal(
      counts.reduce((a, b) => a + b, 0),
      clients.length,
      'every client is on one of the two remaining nodes'
    )

    // mqtt.js resubscribes on reconnect; subscribing again waits for that SUBACK deterministically.
    await within(
      Promise.all(dropped.map((c) => c.subscribeAsync(topic, { qos: 1 }))),
      10_000,
      'reconnected clients subscribed'
    )
    const stayed = clients.find((c) => !dropped.includes(c))!
    await publishAndExpectEveryone(stayed, 'after failover, from a client that stayed')
    await publishAndExpectEveryone(dropped[0]!, 'after failover, from a client that moved')
  })
})
