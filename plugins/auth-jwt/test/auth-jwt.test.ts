import assert from 'node:assert/strict'
import { mkdtempSync, statSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { SignJWT, exportJWK, exportSPKI, generateKeyPair, type CryptoKey, type JWK } from 'jose'
import mqtt from 'mqtt'
import { isolatedEnv, runParley } from '../../../test/helpers/broker-process.js'
import { connackCode, startNode, type TestNode } from '../../../test/helpers/node.js'
import { AuthJwtConfig } from '../config.js'
import { loadHs256Secret, mintToken, parseTtl } from '../keys.js'

/** CONNACK code of an attempt; MQTT 3.1.1 sends a password only with a username, empty when none is given. */
async function connack(url: string, clientId: string, token: string | undefined, username = ''): Promise<number | 'closed'> {
  return connackCode(url, { clientId, username: token === undefined ? undefined : username, password: token })
}

const sign = (claims: Record<string, unknown>, alg: string, key: CryptoKey | Uint8Array, header: Record<string, unknown> = {}) => {
  const jwt = new SignJWT(claims).setProtectedHeader({ alg, ...header }).setIssuedAt().setIssuer('parley').setAudience('parley')
  if (!('exp' in claims)) jwt.setExpirationTime('10m')
  return jwt.sign(key)
}

describe('auth-jwt with the generated HS256 secret', () => {
  let t: TestNode
  let dataDir: string
  const config = AuthJwtConfig.parse({})
  before(async () => {
    t = await startNode({ mqtt: { allowAnonymous: false }, plugins: ['auth-jwt'] })
    dataDir = t.node.config.dataDir
  })
  after(async () => t?.stop())

  it('generates a private secret once and keeps it', () => {
    const file = join(dataDir, 'jwt-secret')
    assert.equal(statSync(file).mode & 0o777, 0o600)
    const first = loadHs256Secret(config, dataDir)
    assert.deepEqual(loadHs256Secret(config, dataDir), first, 'reused, not regenerated')
    assert.ok(first!.length >= 32)
  })

  it('accepts a device token and checks username and client id against it', async () => {
    const token = await mintToken(config, dataDir, { userId: 'alice', deviceId: 'phone', ttlSeconds: 600 })
    assert.equal(await connack(t.mqttUrl, 'alice:phone', token), 0)
    assert.equal(await connack(t.mqttUrl, 'alice:phone', token, 'alice'), 0, 'username equal to sub')
    assert.equal(await connack(t.mqttUrl, 'alice:phone', token, 'bob'), 4, 'username must equal sub')
    assert.equal(await connack(t.mqttUrl, 'alice:tablet', token), 2, 'the did claim pins the device')
    assert.equal(await connack(t.mqttUrl, 'bob:phone', token), 2, 'another user')
    assert.equal(await connack(t.mqttUrl, 'alice', token), 2, 'no device part')
    const anyDevice = await mintToken(config, dataDir, { userId: 'alice', ttlSeconds: 600 })
    assert.equal(await connack(t.mqttUrl, 'alice:tablet', anyDevice), 0, 'a token without did works for any device of its user')
  })

  it('refuses missing, malformed, forged, expired, not-yet-valid and misaddressed tokens with CONNACK 4', async () => {
    const secret = loadHs256Secret(config, dataDir)!
    const other = new TextEncoder().encode('another-secret-that-is-long-enough-1234')
    const now = Math.floor(Date.now() / 1000)
    const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(JSON.stringify({ sub: 'alice', exp: now + 600, iss: 'parley', aud: 'parley' })).toString('base64url')}.`
    const cases: Array<[string, string | undefined]> = [
      ['no password', undefined],
      ['garbage', 'not-a-jwt'],
      ['forged signature', await sign({ sub: 'alice' }, 'HS256', other)],
      ['alg none', none],
      ['expired beyond the skew', await sign({ sub: 'alice', exp: now - 120 }, 'HS256', secret)],
      ['not yet valid', await sign({ sub: 'alice', nbf: now + 600 }, 'HS256', secret)],
      ['wrong issuer', await new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('evil').setAudience('parley').setExpirationTime('5m').sign(secret)],
      ['wrong audience', await new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('parley').setAudience('other').setExpirationTime('5m').sign(secret)],
      ['no expiry', await new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'HS256' }).setIssuer('parley').setAudience('parley').sign(secret)],
      ['bad subject', await sign({ sub: 'al ice' }, 'HS256', secret)]
    ]
    for (const [what, token] of cases) assert.equal(await connack(t.mqttUrl, 'alice:phone', token), 4, what)
    assert.equal(await connack(t.mqttUrl, 'alice:phone', await sign({ sub: 'alice', exp: now - 10 }, 'HS256', secret)), 0, 'within the 30 s skew')
  })

  it('closes the session when its token expires (plus the clock skew)', async () => {
    const short = await startNode({ mqtt: { allowAnonymous: false }, plugins: [{ use: 'auth-jwt', config: { clockSkewSeconds: 1 } }] })
    try {
      const secret = loadHs256Secret(config, short.node.config.dataDir)!
      const token = await sign({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 2 }, 'HS256', secret)
      const client = await mqtt.connectAsync(short.mqttUrl, { clientId: 'alice:watch', username: 'alice', password: token, reconnectPeriod: 0 }, false)
      await new Promise<void>((resolve) => client.once('close', () => resolve()))
      client.end(true)
      const metrics = await (await fetch(`http://127.0.0.1:${short.ops}/metrics`)).text()
      assert.match(metrics, /^parley_auth_token_expiries_total 1$/m)
    } finally {
      await short.stop()
    }
  })
})

describe('auth-jwt with public keys and a JWKS endpoint', () => {
  let t: TestNode
  let rsa: { privateKey: CryptoKey; publicKey: CryptoKey }
  let ec: { privateKey: CryptoKey; publicKey: CryptoKey }
  let rsaPem: string
  let jwks: Server
  let served: JWK[] = []
  let jwksUp = true
  const kids = { first: 'k1', second: 'k2' }
  let idp1: { privateKey: CryptoKey; publicKey: CryptoKey }
  let idp2: { privateKey: CryptoKey; publicKey: CryptoKey }

  before(async () => {
    rsa = await generateKeyPair('RS256', { extractable: true })
    ec = await generateKeyPair('ES256', { extractable: true })
    idp1 = await generateKeyPair('RS256', { extractable: true })
    idp2 = await generateKeyPair('ES256', { extractable: true })
    rsaPem = await exportSPKI(rsa.publicKey)
    served = [{ ...(await exportJWK(idp1.publicKey)), kid: kids.first, alg: 'RS256', use: 'sig' }]
    jwks = createServer((_req, res) => {
      if (!jwksUp) {
        res.writeHead(503).end()
        return
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: served }))
    })
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve))
    const port = (jwks.address() as { port: number }).port
    t = await startNode({
      mqtt: { allowAnonymous: false },
      plugins: [
        {
          use: 'auth-jwt',
          config: {
            hs256: { enabled: false },
            publicKeys: [
              { alg: 'RS256', pem: rsaPem },
              { alg: 'ES256', pem: await exportSPKI(ec.publicKey) }
            ],
            jwksUrl: `http://127.0.0.1:${port}/.well-known/jwks.json`,
            jwksCooldownMs: 0,
            jwksTimeoutMs: 1000
          }
        }
      ]
    })
  })
  after(async () => {
    await t?.stop()
    jwks?.close()
  })

  it('accepts RS256 and ES256 tokens signed by the configured keys', async () => {
    assert.equal(await connack(t.mqttUrl, 'alice:phone', await sign({ sub: 'alice' }, 'RS256', rsa.privateKey)), 0)
    assert.equal(await connack(t.mqttUrl, 'alice:phone', await sign({ sub: 'alice' }, 'ES256', ec.privateKey)), 0)
    const stranger = await generateKeyPair('RS256')
    assert.equal(await connack(t.mqttUrl, 'alice:phone', await sign({ sub: 'alice' }, 'RS256', stranger.privateKey)), 4)
  })

  it('refuses algorithm confusion: an HS256 token keyed with the public key', async () => {
    const confused = await sign({ sub: 'alice' }, 'HS256', new TextEncoder().encode(rsaPem))
    assert.equal(await connack(t.mqttUrl, 'alice:phone', confused), 4)
  })

  it('follows the identity provider\'s key rotation through the JWKS', async () => {
    assert.equal(await connack(t.mqttUrl, 'alice:phone', await sign({ sub: 'alice' }, 'RS256', idp1.privateKey, { kid: kids.first })), 0)
    const rotated = await sign({ sub: 'alice' }, 'ES256', idp2.privateKey, { kid: kids.second })
    served = [{ ...(await exportJWK(idp2.publicKey)), kid: kids.second, alg: 'ES256', use: 'sig' }]
    assert.equal(await connack(t.mqttUrl, 'alice:phone', rotated), 0, 'a new kid makes the node refetch the JWKS')
  })

  it('answers CONNACK 3 when the JWKS cannot be fetched for an unknown key', async () => {
    jwksUp = false
    try {
      const idp3 = await generateKeyPair('RS256')
      assert.equal(await connack(t.mqttUrl, 'alice:phone', await sign({ sub: 'alice' }, 'RS256', idp3.privateKey, { kid: 'k3' })), 3)
    } finally {
      jwksUp = true
    }
  })
})

describe('parley token', () => {
  it('mints a token the node accepts, and refuses bad input with exit code 2', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-token-'))
    const env = isolatedEnv(dir)
    const ok = await runParley(['token', 'carol', '--device', 'laptop', '--ttl', '15m'], env)
    assert.equal(ok.code, 0, ok.stderr)
    const token = ok.stdout.trim()
    assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/)
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>
    assert.equal(claims.sub, 'carol')
    assert.equal(claims.did, 'laptop')
    assert.equal((claims.exp as number) - (claims.iat as number), 900)
    const t = await startNode({ dataDir: dir, mqtt: { allowAnonymous: false }, plugins: ['auth-jwt'] })
    try {
      assert.equal(await connack(t.mqttUrl, 'carol:laptop', token), 0, 'the node reads the secret the CLI created')
    } finally {
      await t.stop()
    }
    const badUser = await runParley(['token', 'car ol'], env)
    assert.equal(badUser.code, 2)
    assert.match(badUser.stderr, /invalid user id "car ol"/)
    const badTtl = await runParley(['token', 'carol', '--ttl', 'forever'], env)
    assert.equal(badTtl.code, 2)
    assert.match(badTtl.stderr, /invalid duration "forever"/)
    assert.equal(parseTtl('7d'), 604800)
  })
})
