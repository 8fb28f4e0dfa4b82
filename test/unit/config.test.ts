import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { configFromEnv, envKeyToPath, formatProblems, loadConfig, redactConfig, secretPaths } from '../../broker/config.js'
import { ConfigSchema, tlsListenerEnabled } from '../../schemas/config.js'

const ok = (result: ReturnType<typeof loadConfig>) => {
  if (!result.ok) assert.fail(formatProblems(result.problems))
  return result.config
}

describe('configuration', () => {
  it('defaults to the embedded mode: no backends, standard ports', () => {
    const config = ok(loadConfig({ env: {} }))
    assert.equal(config.listeners.tcp.port, 1883)
    assert.equal(config.listeners.tls.port, 8883)
    assert.equal(config.listeners.ws.port, 8080)
    assert.equal(config.listeners.ws.path, '/mqtt')
    assert.equal(config.listeners.ops.port, 9090)
    assert.equal(config.redis.url, undefined)
    assert.equal(config.mongo.url, undefined)
    assert.equal(config.s3.endpoint, undefined)
    assert.equal(tlsListenerEnabled(config), false, 'TLS is off without a certificate')
    assert.deepEqual(config.plugins, ['auth-jwt', 'limits', 'protocol', 'groups', 'messages', 'presence', 'media', 'push'], 'secure by default: tokens, limits, topic tree')
    assert.equal(config.mqtt.allowAnonymous, false)
  })

  it('maps PARLEY_* variables to nested camelCase settings', () => {
    assert.deepEqual(envKeyToPath('PARLEY_LISTENERS__TCP__PORT'), ['listeners', 'tcp', 'port'])
    assert.deepEqual(envKeyToPath('PARLEY_MQTT__HEARTBEAT_INTERVAL_MS'), ['mqtt', 'heartbeatIntervalMs'])
    assert.deepEqual(envKeyToPath('PARLEY_DATA_DIR'), ['dataDir'])
    const config = ok(
      loadConfig({
        env: {
          PARLEY_LISTENERS__TCP__PORT: '1999',
          PARLEY_LISTENERS__WS__ENABLED: 'false',
          PARLEY_MQTT__ALLOW_ANONYMOUS: 'yes',
          PARLEY_PLUGINS: 'a-plugin, ./local/plugin.js',
          REDIS_URL: 'redis://127.0.0.1:6379',
          MONGO_URL: 'mongodb://127.0.0.1:27017',
          S3_ENDPOINT: 'http://127.0.0.1:9000',
          S3_ACCESS_KEY: 'a',
          S3_SECRET_KEY: 'b',
          LOG_LEVEL: 'debug'
        }
      })
    )
    assert.equal(config.listeners.tcp.port, 1999)
    assert.equal(config.listeners.ws.enabled, false)
    assert.equal(config.mqtt.allowAnonymous, true)
    assert.deepEqual(config.plugins, ['a-plugin', './local/plugin.js'])
    assert.equal(config.redis.url, 'redis://127.0.0.1:6379')
    assert.equal(config.mongo.url, 'mongodb://127.0.0.1:27017')
    assert.equal(config.s3.endpoint, 'http://127.0.0.1:9000')
    assert.equal(config.log.level, 'debug')
  })

  it('lets the environment override the config file, and merges the rest', () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-config-'))
    const file = join(dir, 'parley.yaml')
    writeFileSync(file, 'listeners:\n  tcp:\n    port: 2883\n    host: 127.0.0.1\nmqtt:\n  heartbeatIntervalMs: 5000\n')
    const config = ok(loadConfig({ file, env: { PARLEY_LISTENERS__TCP__PORT: '3883' } }))
    assert.equal(config.listeners.tcp.port, 3883, 'env wins')
    assert.equal(config.listeners.tcp.host, '127.0.0.1', 'file value kept')
    assert.equal(config.mqtt.heartbeatIntervalMs, 5000)
    const json = join(dir, 'parley.json')
    writeFileSync(json, JSON.stringify({ plugins: [{ use: 'x', config: { a: 1 } }] }))
    assert.deepEqual(ok(loadConfig({ file: json, env: {} })).plugins, [{ use: 'x', config: { a: 1 } }])
  })

  it('lets PARLEY_PLUGINS choose the plugins while the file keeps their settings', () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-config-'))
    const file = join(dir, 'plugins.yaml')
    writeFileSync(file, 'plugins:\n  - use: guard\n    config: { limit: 3 }\n  - other\n')
    const config = ok(loadConfig({ file, env: { PARLEY_PLUGINS: 'extra,guard' } }))
    assert.deepEqual(config.plugins, ['extra', { use: 'guard', config: { limit: 3 } }])
  })

  it('takes the file from PARLEY_CONFIG without treating it as a setting', () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-config-'))
    const file = join(dir, 'p.yaml')
    writeFileSync(file, 'nodeName: from-file\n')
    assert.equal(ok(loadConfig({ env: { PARLEY_CONFIG: file } })).nodeName, 'from-file')
  })

  it('reports every problem at once with its path, its source and the expected form', () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-config-'))
    const file = join(dir, 'bad.yaml')
    writeFileSync(file, 'listeners:\n  ws:\n    port: 1883\nlog:\n  level: loud\n')
    const result = loadConfig({
      file,
      env: { PARLEY_MQTT__CONNECT_TIMEOUT_MS: 'soon', PARLEY_LISTNERS__TCP__PORT: '1', S3_ENDPOINT: 'http://x:9000' }
    })
    assert.equal(result.ok, false)
    if (result.ok) return
    const byPath = new Map(result.problems.map((p) => [p.path, p]))
    assert.match(byPath.get('mqtt.connectTimeoutMs')!.message, /expected an integer between 1000 and 120000/)
    assert.equal(byPath.get('mqtt.connectTimeoutMs')!.source, 'env PARLEY_MQTT__CONNECT_TIMEOUT_MS')
    assert.equal(byPath.get('listners')!.message, 'unknown setting', 'a typo is caught, not ignored')
    assert.match(byPath.get('log.level')!.message, /expected one of/)
    assert.equal(byPath.get('log.level')!.source, `file ${file}`)
    assert.equal(result.problems.length, 3)
    assert.match(formatProblems(result.problems), /^Invalid configuration \(3 problems\):\n {2}- /)

    // Checks across settings run once every single setting is valid.
    const cross = loadConfig({ file, env: { S3_ENDPOINT: 'http://x:9000', PARLEY_LOG__LEVEL: 'info' } })
    assert.equal(cross.ok, false)
    if (cross.ok) return
    const crossPaths = new Map(cross.problems.map((p) => [p.path, p]))
    assert.match(crossPaths.get('s3.accessKey')!.message, /needs both accessKey and secretKey/)
    assert.match(crossPaths.get('listeners.ws.port')!.message, /port 1883 is already used by the tcp listener/)
    assert.equal(crossPaths.get('listeners.ws.port')!.source, `file ${file}`)
  })

  it('reports an unreadable or malformed file as one problem', () => {
    const missing = loadConfig({ file: '/nonexistent/parley.yaml', env: {} })
    assert.equal(missing.ok, false)
    if (!missing.ok) assert.match(missing.problems[0]!.message, /cannot read/)
    const dir = mkdtempSync(join(tmpdir(), 'parley-config-'))
    const file = join(dir, 'list.yaml')
    writeFileSync(file, '- just\n- a list\n')
    const list = loadConfig({ file, env: {} })
    assert.equal(list.ok, false)
    if (!list.ok) assert.match(list.problems[0]!.message, /expected a mapping/)
    writeFileSync(file, 'a: [unclosed\n')
    const broken = loadConfig({ file, env: {} })
    assert.equal(broken.ok, false)
    if (!broken.ok) assert.match(broken.problems[0]!.message, /not valid YAML/)
  })

  it('requires TLS certificate and key together', () => {
    const result = ConfigSchema.safeParse({ listeners: { tls: { keyFile: '/k.pem' } } })
    assert.equal(result.success, false)
    assert.deepEqual(result.error?.issues[0]?.path, ['listeners', 'tls', 'certFile'])
    const enabled = ConfigSchema.parse({ listeners: { tls: { certFile: '/c.pem', keyFile: '/k.pem' } } })
    assert.equal(tlsListenerEnabled(enabled), true, 'a certificate turns the TLS listener on')
  })

  it('marks every credential in the schema as secret', () => {
    const paths = secretPaths()
    for (const p of ['redis.url', 'mongo.url', 's3.accessKey', 's3.secretKey', 'listeners.tls.passphrase', 'listeners.ws.passphrase']) {
      assert.ok(paths.includes(p), `${p} is secret`)
    }
  })

  it('redacts secrets, keeping where a URL points', () => {
    const config = ConfigSchema.parse({
      redis: { url: 'rediss://default:pw@cache.example:6380' },
      mongo: { url: 'mongodb://127.0.0.1:27017/parley' },
      s3: { endpoint: 'https://s3.example', accessKey: 'AK', secretKey: 'SK' },
      plugins: [{ use: 'push', config: { apnsKeyId: 'K1', privateKey: '-----BEGIN', nested: { apiKey: 'zzz' } } }]
    })
    const red = redactConfig(config)
    assert.equal(red.redis.url, 'rediss://***:***@cache.example:6380')
    assert.equal(red.mongo.url, 'mongodb://127.0.0.1:27017/parley', 'a URL without credentials stays readable')
    assert.equal(red.s3.accessKey, '[redacted]')
    assert.equal(red.s3.secretKey, '[redacted]')
    const plugin = red.plugins[0] as unknown as { config: { apnsKeyId: string; privateKey: string; nested: { apiKey: string } } }
    assert.equal(plugin.config.apnsKeyId, 'K1')
    assert.equal(plugin.config.privateKey, '[redacted]')
    assert.equal(plugin.config.nested.apiKey, '[redacted]')
    assert.equal(config.s3.secretKey, 'SK', 'the original is untouched')
  })

  it('records which variable set each path', () => {
    const { sources } = configFromEnv({ REDIS_URL: 'redis://x', PARLEY_LOG__LEVEL: 'warn', HOME: '/root' })
    assert.equal(sources.get('redis.url'), 'env REDIS_URL')
    assert.equal(sources.get('log.level'), 'env PARLEY_LOG__LEVEL')
    assert.equal(sources.size, 2, 'unrelated variables are ignored')
  })
})
