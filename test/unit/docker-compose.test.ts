// The container deployment: docker-compose.yml, the Dockerfile and the HAProxy config agree with each other,
// and every broker node's environment is a configuration the broker itself accepts.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, it } from 'node:test'
import { parse } from 'yaml'
import { formatProblems, loadConfig } from '../../broker/config.js'
import { AuthJwtConfig } from '../../plugins/auth-jwt/config.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
const read = (file: string) => readFileSync(root + file, 'utf8')

type Tree = Record<string, unknown>
const isTree = (v: unknown): v is Tree => typeof v === 'object' && v !== null && !Array.isArray(v)

/**
 * Compose's variable interpolation, with no variables set: ${VAR:-default} and ${VAR-default} give the default,
 * ${VAR}, $VAR and ${VAR:?message} give a placeholder, ${VAR:+alt} gives nothing, and $$ is a literal $.
 */
function interpolate(text: string, vars: Record<string, string> = {}): string {
  return text.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (match, braced: string | undefined, op: string | undefined, arg: string | undefined, bare: string | undefined) => {
      if (match === '$$') return '$'
      const name = (braced ?? bare)!
      const value = vars[name]
      const set = value !== undefined && (value !== '' || !op?.startsWith(':'))
      switch (op?.replace(':', '')) {
        case '-':
          return set ? value : interpolate(arg ?? '', vars)
        case '+':
          return set ? interpolate(arg ?? '', vars) : ''
        default:
          return set ? value : `placeholder-${name.toLowerCase()}`
      }
    }
  )
}

/** A service's environment as strings, whether written as a mapping or as a KEY=VALUE list. */
function environmentOf(service: Tree): Record<string, string> {
  const raw = service.environment
  const env: Record<string, string> = {}
  if (Array.isArray(raw)) {
    for (const entry of raw) {
      const text = String(entry)
      const eq = text.indexOf('=')
      if (eq > 0) env[text.slice(0, eq)] = interpolate(text.slice(eq + 1))
    }
  } else if (isTree(raw)) {
    for (const [key, value] of Object.entries(raw)) {
      // A key without a value is passed through from the host's environment: not set here.
      if (value === null || value === undefined) continue
      assert.ok(['string', 'number', 'boolean'].includes(typeof value), `environment ${key} is a scalar`)
      env[key] = interpolate(`${value as string | number | boolean}`)
    }
  }
  return env
}

const compose = parse(read('docker-compose.yml'), { merge: true }) as Tree
assert.ok(isTree(compose.services), 'docker-compose.yml has services')
const services = compose.services as Record<string, Tree>

function builtFromDockerfile(service: Tree): boolean {
  const build = service.build
  if (typeof build === 'string') return true // a context, with its default Dockerfile
  if (!isTree(build)) return false
  const dockerfile = typeof build.dockerfile === 'string' ? build.dockerfile : 'Dockerfile'
  return (build.context === undefined || build.context === '.' || build.context === './') && dockerfile.replace(/^\.\//, '') === 'Dockerfile'
}

const brokers = Object.entries(services).filter(([, s]) => builtFromDockerfile(s))

describe('docker-compose.yml', () => {
  it('runs three broker nodes built from the Dockerfile, with distinct node names', () => {
    assert.deepEqual(
      brokers.map(([name]) => name),
      ['parley-1', 'parley-2', 'parley-3']
    )
    const names = brokers.map(([, s]) => environmentOf(s).PARLEY_NODE_NAME)
    assert.ok(names.every((n) => typeof n === 'string' && n.length > 0), 'every node sets PARLEY_NODE_NAME')
    assert.equal(new Set(names).size, brokers.length, `node names are distinct: ${names.join(', ')}`)
  })

  for (const [name, service] of brokers) {
    it(`${name}: its environment is a valid broker configuration using every backend`, () => {
      const env = environmentOf(service)
      // The node reads PARLEY_CONFIG (mounted from deploy/parley.yaml) plus its environment.
      const mounted = (service.volumes as string[]).find((v) => v.endsWith(':/app/config/parley.yaml:ro'))
      assert.equal(env.PARLEY_CONFIG, '/app/config/parley.yaml')
      assert.ok(mounted, 'deploy/parley.yaml is mounted where PARLEY_CONFIG points')
      const result = loadConfig({ env: { ...env, PARLEY_CONFIG: root + mounted.split(':')[0]!.replace(/^\.\//, '') } })
      if (!result.ok) assert.fail(`${name} would refuse to start.\n${formatProblems(result.problems)}`)
      const { config } = result
      assert.equal(config.redis.url, 'redis://redis:6379', 'REDIS_URL is set, so the nodes cluster')
      assert.equal(config.mongo.url, 'mongodb://mongo:27017')
      assert.equal(config.mongo.database, 'parley')
      assert.equal(config.s3.endpoint, 'http://minio:9000')
      assert.ok(config.s3.accessKey && config.s3.secretKey, 'S3 credentials are set')
      assert.equal(config.nodeName, name)
      assert.equal(config.log.level, 'info')
      // The MinIO credentials the broker uses are the ones MinIO is started with.
      const minio = environmentOf(services.minio!)
      assert.equal(config.s3.accessKey, minio.MINIO_ROOT_USER)
      assert.equal(config.s3.secretKey, minio.MINIO_ROOT_PASSWORD)
      // Every node verifies tokens with the same secret, given as a compose secret.
      const auth = config.plugins.find((p) => typeof p !== 'string' && p.use === 'auth-jwt')
      assert.ok(auth && typeof auth !== 'string')
      const parsedAuth = AuthJwtConfig.parse(auth.config ?? {})
      assert.equal(parsedAuth.hs256.secretFile, '/run/secrets/parley_jwt')
      assert.deepEqual(service.secrets, ['parley_jwt'])
      assert.deepEqual(config.plugins.map((p) => (typeof p === 'string' ? p : p.use)), ['auth-jwt', 'limits', 'protocol', 'groups', 'messages', 'presence', 'media', 'push'])
    })

    it(`${name}: has a /readyz healthcheck and waits for healthy backends`, () => {
      assert.ok(isTree(service.healthcheck), `${name} has a healthcheck`)
      const test = service.healthcheck.test
      const command = Array.isArray(test) ? test.join(' ') : String(test)
      assert.match(command, /127\.0\.0\.1:9090\/readyz/)
      assert.ok(isTree(service.depends_on), `${name} lists its dependencies with conditions`)
      for (const dep of ['redis', 'mongo', 'minio']) {
        const entry = service.depends_on[dep]
        assert.ok(isTree(entry) && entry.condition === 'service_healthy', `${name} waits for ${dep} to be healthy`)
        assert.ok(isTree(services[dep]?.healthcheck), `${dep} has a healthcheck to wait for`)
      }
      assert.ok(
        Array.isArray(service.volumes) && service.volumes.some((v) => String(v).endsWith(':/app/data')),
        `${name} keeps /app/data on a volume`
      )
    })
  }

  it('refuses a broker environment with an invalid value (the validation above checks something)', () => {
    const [, first] = brokers[0]!
    const { PARLEY_CONFIG: _file, ...fromCompose } = environmentOf(first)
    const env = { ...fromCompose, PARLEY_LISTENERS__TCP__PORT: '99999' }
    const result = loadConfig({ env })
    assert.equal(result.ok, false, 'port 99999 is refused')
    if (result.ok) return
    assert.deepEqual(
      result.problems.map((p) => [p.path, p.source]),
      [['listeners.tcp.port', 'env PARLEY_LISTENERS__TCP__PORT']]
    )
    const noSecret = loadConfig({ env: { ...fromCompose, S3_SECRET_KEY: '' } })
    assert.equal(noSecret.ok, false, 'an S3 endpoint without its secret key is refused')
    if (!noSecret.ok) assert.deepEqual(noSecret.problems.map((p) => p.path), ['s3.secretKey'])
  })

  it('interpolates compose variables like compose does with none set', () => {
    assert.equal(interpolate('${A:-x}/${B-y}/${C}/$D/$$E/${F:+z}'), 'x/y/placeholder-c/placeholder-d/$E/')
    assert.equal(interpolate('${A:-x}', { A: '' }), 'x')
    assert.equal(interpolate('${A-x}', { A: '' }), '')
    assert.equal(interpolate('${A:-x}', { A: 'set' }), 'set')
  })
})

describe('HAProxy in front of the brokers', () => {
  const haproxy = services.haproxy
  const cfg = read('deploy/haproxy.cfg')
  const lines = cfg
    .split('\n')
    .map((l) => l.replace(/#.*$/, '').trim())
    .filter(Boolean)

  /** Sections of the config: the header line and the lines under it. */
  const sections: { header: string; body: string[] }[] = []
  for (const line of lines) {
    if (/^(global|defaults|frontend|backend|listen|resolvers|peers|userlist)\b/.test(line)) sections.push({ header: line, body: [] })
    else sections.at(-1)?.body.push(line)
  }
  const servers = sections.flatMap(({ header, body }) =>
    body
      .filter((l) => l.startsWith('server '))
      .map((l) => {
        const [, name, address, ...options] = l.split(/\s+/)
        return { section: header, name, address, options }
      })
  )

  it('is a service that mounts deploy/haproxy.cfg and publishes 1883 and 8080', () => {
    assert.ok(haproxy, 'docker-compose.yml has a haproxy service')
    assert.match(String(haproxy.image), /^haproxy:/)
    assert.ok(
      Array.isArray(haproxy.volumes) &&
        haproxy.volumes.some((v) => /^\.\/deploy\/haproxy\.cfg:\/usr\/local\/etc\/haproxy\/haproxy\.cfg/.test(String(v))),
      'the config file is mounted where the haproxy image reads it'
    )
    const ports = Array.isArray(haproxy.ports) ? haproxy.ports.map(String) : []
    for (const port of ['1883', '8080']) {
      assert.ok(ports.some((p) => p.endsWith(`:${port}`)), `port ${port} is published`)
    }
  })

  it('names every broker as a server on 1883 and on 8080, health-checked on /readyz at port 9090', () => {
    for (const [name] of brokers) {
      for (const port of ['1883', '8080']) {
        const server = servers.find((s) => s.address === `${name}:${port}`)
        assert.ok(server, `${name}:${port} is a server in deploy/haproxy.cfg`)
        assert.ok(server.options.includes('check'), `${name}:${port} is health-checked`)
        const checkPort = server.options[server.options.indexOf('port') + 1]
        assert.ok(server.options.includes('port') && checkPort === '9090', `${name}:${port} is checked on port 9090`)
      }
    }
    const backends = sections.filter((s) => s.body.some((l) => l.startsWith('server ')))
    assert.ok(backends.length >= 2)
    for (const backend of backends) {
      const body = backend.body.join('\n')
      assert.match(body, /option httpchk\b/, `${backend.header} uses HTTP health checks`)
      assert.match(body, /\/readyz\b/, `${backend.header} checks /readyz`)
    }
    assert.match(cfg, /balance\s+leastconn/)
  })
})

describe('Dockerfile', () => {
  const lines = read('Dockerfile')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
  const froms = lines.map((l, i) => (/^FROM\s/i.test(l) ? i : -1)).filter((i) => i >= 0)
  const finalStage = lines.slice(froms.at(-1))

  it('is multi-stage', () => {
    assert.ok(froms.length >= 2, `expected at least two FROM lines, found ${froms.length}`)
  })

  it('runs the final stage as the non-root node user', () => {
    const users = finalStage.filter((l) => /^USER\s/i.test(l)).map((l) => l.split(/\s+/)[1])
    assert.ok(users.length > 0, 'the final stage sets USER')
    assert.equal(users.at(-1), 'node')
  })

  it('starts the compiled bin, and probes /healthz without curl', () => {
    const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> }
    const cmd = finalStage.find((l) => /^CMD\s/i.test(l))
    assert.ok(cmd, 'the final stage has a CMD')
    assert.deepEqual(JSON.parse(cmd.slice(3).trim()), ['node', pkg.bin.parley, 'start'])
    const healthcheck = finalStage.find((l) => /^HEALTHCHECK\s/i.test(l))
    assert.ok(healthcheck, 'the final stage has a HEALTHCHECK')
    assert.match(healthcheck, /"node"/)
    assert.match(healthcheck, /127\.0\.0\.1:9090\/healthz/)
    for (const port of ['1883', '8883', '8080', '9090']) {
      assert.ok(finalStage.some((l) => /^EXPOSE\s/i.test(l) && l.split(/\s+/).includes(port)), `port ${port} is exposed`)
    }
  })

  it('copies every source directory the build compiles', () => {
    const build = JSON.parse(read('tsconfig.build.json')) as { include: string[] }
    const copied = lines.slice(0, froms.at(-1)).filter((l) => /^COPY\s/i.test(l))
    for (const dir of build.include) {
      assert.ok(
        copied.some((l) => l.split(/\s+/).some((w) => w.replace(/^\.\//, '').replace(/\/$/, '') === dir)),
        `the build stage copies ${dir}/`
      )
    }
    const ignored = read('.dockerignore').split('\n').map((l) => l.trim())
    for (const entry of ['node_modules', 'dist', '.git']) assert.ok(ignored.includes(entry), `.dockerignore lists ${entry}`)
  })
})
