// A real `parley start` process on the embedded default, reached by real MQTT clients.
import assert from 'node:assert/strict'
import { execFile, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { promisify } from 'node:util'
import { WebSocket } from 'ws'
import { BARE, eventually, isolatedEnv, runParley, startBroker, type BrokerProcess } from '../helpers/broker-process.js'
import { connectClient, nextMessage } from '../helpers/node.js'

const exec = promisify(execFile)

describe('bare broker process (the MQTT relay without plugins, anonymous)', () => {
  let broker: BrokerProcess
  before(async () => {
    broker = await startBroker({ env: BARE })
  })
  after(async () => {
    await broker.stop()
  })

  it('relays a message between two clients over TCP (QoS 0 and 1)', async () => {
    const sub = await connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`, { clientId: 'tcp-sub' })
    const pub = await connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`, { clientId: 'tcp-pub' })
    await sub.subscribeAsync('room/1/#', { qos: 1 })
    const got0 = nextMessage(sub)
    await pub.publishAsync('room/1/a', 'hello qos0', { qos: 0 })
    assert.deepEqual(await got0, { topic: 'room/1/a', payload: 'hello qos0' })
    const got1 = nextMessage(sub)
    // publishAsync resolves on PUBACK for QoS 1.
    await pub.publishAsync('room/1/b', 'hello qos1', { qos: 1 })
    assert.deepEqual(await got1, { topic: 'room/1/b', payload: 'hello qos1' })
    await Promise.all([sub.endAsync(), pub.endAsync()])
  })

  it('relays over WebSocket at /mqtt, to and from a TCP client', async () => {
    const wsSub = await connectClient(`ws://127.0.0.1:${broker.ports.ws}/mqtt`, { clientId: 'ws-sub' })
    const tcpPub = await connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`, { clientId: 'tcp-pub2' })
    await wsSub.subscribeAsync('ws/test', { qos: 1 })
    const got = nextMessage(wsSub)
    await tcpPub.publishAsync('ws/test', 'over websocket', { qos: 1 })
    assert.deepEqual(await got, { topic: 'ws/test', payload: 'over websocket' })

    const wsPub = await connectClient(`ws://127.0.0.1:${broker.ports.ws}/mqtt`, { clientId: 'ws-pub' })
    await tcpPub.subscribeAsync('ws/back')
    const back = nextMessage(tcpPub)
    await wsPub.publishAsync('ws/back', 'from websocket')
    assert.deepEqual(await back, { topic: 'ws/back', payload: 'from websocket' })
    await Promise.all([wsSub.endAsync(), tcpPub.endAsync(), wsPub.endAsync()])
  })

  it('refuses WebSocket upgrades on other paths and answers plain HTTP with 426', async () => {
    const res = await fetch(`http://127.0.0.1:${broker.ports.ws}/mqtt`)
    assert.equal(res.status, 426)
    const wrong = new WebSocket(`ws://127.0.0.1:${broker.ports.ws}/not-mqtt`, 'mqtt')
    const status = await new Promise<number | undefined>((resolve) => {
      wrong.once('unexpected-response', (_req, res) => resolve(res.statusCode))
      wrong.once('open', () => resolve(101))
    })
    assert.equal(status, 400, 'the upgrade is refused on a path other than /mqtt')
    wrong.on('error', () => undefined)
    wrong.terminate()
  })

  it('interoperates with mosquitto_pub and mosquitto_sub', async () => {
    const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(broker.ports.tcp), '-t', 'cli/#', '-C', '1', '-q', '1', '-v', '-i', 'mosq-sub'])
    let out = ''
    sub.stdout.on('data', (d: Buffer) => (out += d.toString()))
    const exited = new Promise<number | null>((resolve) => sub.on('exit', resolve))
    const watcher = await connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`, { clientId: 'watch' })
    // mosquitto_sub is subscribed once the broker counts its subscription; publish until it has one message.
    await eventually(async () => {
      await exec('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(broker.ports.tcp), '-t', 'cli/x', '-m', 'from mosquitto_pub', '-q', '1'])
      return out.length > 0
    }, 10_000, 'mosquitto_sub received a message')
    assert.equal(await exited, 0)
    assert.equal(out.trim().split('\n')[0], 'cli/x from mosquitto_pub')
    await watcher.endAsync()
  })

  it('keeps clients out of $SYS and the broker\'s reserved topics', async () => {
    const c = await connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`, { clientId: 'nosy' })
    // mqtt.js turns a SUBACK return code 0x80 into a rejection.
    for (const topic of ['$SYS/#', '$SYS/+/new/clients', '$parley/deliver/+']) {
      await assert.rejects(c.subscribeAsync(topic), /Subscribe error/, `${topic} is refused`)
    }
    const granted = await c.subscribeAsync('ok/topic', { qos: 1 })
    assert.deepEqual(granted.map((g) => [g.topic, g.qos]), [['ok/topic', 1]], 'the client is still connected and served')
    await c.endAsync()
  })

  it('serves /healthz, /readyz and Prometheus /metrics', async () => {
    const base = `http://127.0.0.1:${broker.ports.ops}`
    const health = (await (await fetch(`${base}/healthz`)).json()) as { status: string; brokerId: string }
    assert.equal(health.status, 'ok')
    assert.equal(health.brokerId, broker.brokerId)
    const ready = await fetch(`${base}/readyz`)
    assert.equal(ready.status, 200)
    assert.deepEqual(((await ready.json()) as { checks: object }).checks, {}, 'the embedded default has no backends to check')
    const metrics = await (await fetch(`${base}/metrics`)).text()
    assert.match(metrics, /^parley_mqtt_connections_total\{listener="tcp"\} [1-9]\d*$/m)
    assert.match(metrics, /^parley_mqtt_messages_received_total\{qos="1"\} [1-9]\d*$/m)
    assert.match(metrics, /^process_resident_memory_bytes \d+/m)
  })

  it('never writes a configured secret into its logs', async () => {
    const secretBroker = await startBroker({
      env: { PARLEY_S3__ACCESS_KEY: 'AKIA-visible-not', PARLEY_S3__SECRET_KEY: 'super-secret-value-42', PARLEY_S3__ENDPOINT: 'http://127.0.0.1:9' }
    })
    await secretBroker.stop()
    const all = JSON.stringify(secretBroker.logs) + secretBroker.stderr.join('\n')
    assert.ok(!all.includes('super-secret-value-42'), 'secret key not logged')
    assert.ok(!all.includes('AKIA-visible-not'), 'access key not logged')
    assert.ok(all.includes('[redacted]'))
  })
})

describe('slow and silent clients', () => {
  it('closes a socket that sends no CONNECT in time, and counts it', async () => {
    const broker = await startBroker({ env: { ...BARE, PARLEY_MQTT__CONNECT_TIMEOUT_MS: '1000' } })
    try {
      const { connect } = await import('node:net')
      const socket = connect({ host: '127.0.0.1', port: broker.ports.tcp! })
      socket.on('error', () => undefined)
      await new Promise<void>((resolve) => socket.once('close', () => resolve()))
      const metrics = await (await fetch(`http://127.0.0.1:${broker.ports.ops}/metrics`)).text()
      assert.match(metrics, /^parley_connect_timeouts_total 1$/m)
    } finally {
      await broker.stop()
    }
  })
})

describe('broker id', () => {
  it('is new at every start of the same node name', async () => {
    const a = await startBroker({ env: { PARLEY_NODE_NAME: 'same-node' } })
    await a.stop()
    const b = await startBroker({ env: { PARLEY_NODE_NAME: 'same-node' } })
    await b.stop()
    assert.match(a.brokerId, /^same-node-[0-9a-f]{12}$/)
    assert.match(b.brokerId, /^same-node-[0-9a-f]{12}$/)
    assert.notEqual(a.brokerId, b.brokerId)
  })
})

describe('graceful stop', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`on ${signal}: stops accepting, disconnects clients, exits 0`, async () => {
      const broker = await startBroker({ env: BARE })
      const client = await connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`, { clientId: `stop-${signal}` })
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
      const code = await broker.stop(signal)
      assert.equal(code, 0)
      await closed
      const msgs = broker.logs.map((l) => l.msg)
      for (const step of ['graceful stop requested', 'stopping: no new connections', 'closing clients', 'stopped']) {
        assert.ok(msgs.includes(step), `log has "${step}"`)
      }
      assert.ok(msgs.indexOf('stopping: no new connections') < msgs.indexOf('stopped'))
      await assert.rejects(connectClient(`mqtt://127.0.0.1:${broker.ports.tcp}`), 'nothing listens after the stop')
      client.end(true)
    })
  }
})

describe('command line', () => {
  it('prints its version and help, and refuses unknown commands with exit code 2', async () => {
    const env = isolatedEnv(mkdtempSync(join(tmpdir(), 'parley-cli-')))
    const version = await runParley(['--version'], env)
    assert.equal(version.code, 0)
    assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/)
    const help = await runParley(['start', '--help'], env)
    assert.equal(help.code, 0)
    assert.match(help.stdout, /--config <file>/)
    const unknown = await runParley(['launch'], env)
    assert.equal(unknown.code, 2)
    assert.match(unknown.stderr, /unknown command 'launch'/)
  })
})

describe('configuration errors', () => {
  it('refuses to start on invalid configuration and names every problem', async () => {
    const env = {
      ...isolatedEnv(mkdtempSync(join(tmpdir(), 'parley-bad-'))),
      PARLEY_LISTENERS__TCP__PORT: 'not-a-port',
      PARLEY_MQTT__HEARTBEAT_INTERVAL_MS: '5',
      PARLEY_NO_SUCH_SETTING: 'x',
      REDIS_URL: 'http://wrong-scheme'
    }
    const { code, stderr } = await runParley(['start'], env)
    assert.equal(code, 78)
    assert.match(stderr, /Invalid configuration \(4 problems\)/)
    assert.match(stderr, /listeners\.tcp\.port \(env PARLEY_LISTENERS__TCP__PORT\): expected an integer between 0 and 65535/)
    assert.match(stderr, /mqtt\.heartbeatIntervalMs \(env PARLEY_MQTT__HEARTBEAT_INTERVAL_MS\): expected an integer between 500 and 600000/)
    assert.match(stderr, /noSuchSetting \(env PARLEY_NO_SUCH_SETTING\): unknown setting/)
    assert.match(stderr, /redis\.url \(env REDIS_URL\): expected a redis:\/\/ or rediss:\/\/ URL/)
  })

  it('reports problems in a config file with the file as their source', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-cfg-'))
    const file = join(dir, 'parley.yaml')
    writeFileSync(file, 'listeners:\n  tls:\n    certFile: /nope/cert.pem\n  ws:\n    path: no-slash\n')
    const { code, stderr } = await runParley(['start', '--config', file], isolatedEnv(dir))
    assert.equal(code, 78)
    assert.match(stderr, new RegExp(`listeners\\.tls\\.keyFile \\(file ${file}\\): certFile and keyFile must be set together`))
    assert.match(stderr, /listeners\.ws\.path .*expected an absolute URL path/)
  })

  it('`parley config` prints the effective configuration with secrets redacted', async () => {
    const env = {
      ...isolatedEnv(mkdtempSync(join(tmpdir(), 'parley-cfg-'))),
      REDIS_URL: 'redis://user:hunter2@redis.internal:6379/0',
      MONGO_URL: 'mongodb://app:s3cr3t@mongo.internal:27017/?authSource=admin',
      S3_ENDPOINT: 'http://minio.internal:9000',
      S3_ACCESS_KEY: 'access-1',
      S3_SECRET_KEY: 'secret-1'
    }
    const { code, stdout } = await runParley(['config'], env)
    assert.equal(code, 0)
    const printed = JSON.parse(stdout) as { redis: { url: string }; mongo: { url: string }; s3: Record<string, string>; listeners: { tcp: { port: number } } }
    assert.equal(printed.redis.url, 'redis://***:***@redis.internal:6379/0')
    assert.equal(printed.mongo.url, 'mongodb://***:***@mongo.internal:27017/?***')
    assert.equal(printed.s3.secretKey, '[redacted]')
    assert.equal(printed.s3.accessKey, '[redacted]')
    assert.equal(printed.s3.endpoint, 'http://minio.internal:9000')
    assert.equal(printed.listeners.tcp.port, 0)
    for (const s of ['hunter2', 's3cr3t', 'secret-1', 'access-1']) assert.ok(!stdout.includes(s), `${s} is hidden`)
  })
})

describe('TLS listeners', () => {
  it('accepts MQTT over TLS and WebSocket over TLS with a configured certificate', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-tls-'))
    const cert = join(dir, 'cert.pem')
    const key = join(dir, 'key.pem')
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'
    ], { stdio: 'ignore' })
    const broker = await startBroker({
      env: {
        ...BARE,
        PARLEY_LISTENERS__TLS__HOST: '127.0.0.1',
        PARLEY_LISTENERS__TLS__PORT: '0',
        PARLEY_LISTENERS__TLS__CERT_FILE: cert,
        PARLEY_LISTENERS__TLS__KEY_FILE: key,
        PARLEY_LISTENERS__WS__CERT_FILE: cert,
        PARLEY_LISTENERS__WS__KEY_FILE: key
      }
    })
    try {
      const { readFileSync } = await import('node:fs')
      const ca = readFileSync(cert)
      const tlsSub = await connectClient(`mqtts://127.0.0.1:${broker.ports.tls}`, { ca, clientId: 'tls-sub' })
      const wssPub = await connectClient(`wss://127.0.0.1:${broker.ports.ws}/mqtt`, { ca, clientId: 'wss-pub' })
      await tlsSub.subscribeAsync('secure/#', { qos: 1 })
      const got = nextMessage(tlsSub)
      await wssPub.publishAsync('secure/x', 'encrypted both ways', { qos: 1 })
      assert.deepEqual(await got, { topic: 'secure/x', payload: 'encrypted both ways' })
      await assert.rejects(connectClient(`mqtts://127.0.0.1:${broker.ports.tls}`), 'an untrusted certificate is refused by the client')
      await Promise.all([tlsSub.endAsync(), wssPub.endAsync()])
    } finally {
      await broker.stop()
    }
  })
})
