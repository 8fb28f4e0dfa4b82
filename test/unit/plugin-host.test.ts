import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import type { AedesPublishPacket, Client, PublishPacket, Subscription } from 'aedes'
import { createLogger } from '../../broker/logger.js'
import { ConnackCode, definePlugin, type ParleyPlugin, type PluginContext } from '../../broker/plugin-api.js'
import { PluginHost, PluginLoadError, importPlugins, orderPlugins, type LoadedPlugin } from '../../broker/plugin-host.js'
import { z } from 'zod'

const log = createLogger('silent')
const client = (id = 'c1') => ({ id }) as unknown as Client
const packet = (topic: string, payload = 'x') =>
  ({ cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: false, dup: false }) as PublishPacket
const loaded = (name: string, dependencies: string[] = []): LoadedPlugin => ({
  plugin: { name, dependencies, register: () => undefined },
  rawConfig: undefined,
  source: name
})

function newHost(opts: Partial<ConstructorParameters<typeof PluginHost>[0]> = {}) {
  const decisions: string[] = []
  const host = new PluginHost({
    log,
    hookTimeoutMs: 200,
    publishTimeoutMs: 400,
    allowAnonymous: true,
    maxRejectionsPerSecond: 10,
    onDecision: (hook, plugin, outcome) => decisions.push(`${hook}:${plugin}:${outcome}`),
    ...opts
  })
  return { host, decisions }
}

describe('plugin ordering', () => {
  it('puts dependencies first and otherwise keeps configuration order', () => {
    const order = orderPlugins([loaded('c', ['b']), loaded('a'), loaded('b', ['a']), loaded('d')])
    assert.deepEqual(order.map((p) => p.plugin.name), ['a', 'b', 'c', 'd'])
    const again = orderPlugins([loaded('z'), loaded('y'), loaded('x')])
    assert.deepEqual(again.map((p) => p.plugin.name), ['z', 'y', 'x'], 'no dependencies: configuration order')
  })

  it('refuses a missing dependency, naming both plugins', () => {
    assert.throws(() => orderPlugins([loaded('messages', ['auth'])]), {
      name: 'PluginLoadError',
      message: 'plugin "messages" depends on "auth", which is not loaded; add "auth" to plugins'
    })
  })

  it('refuses a dependency cycle and shows it', () => {
    assert.throws(() => orderPlugins([loaded('a', ['b']), loaded('b', ['c']), loaded('c', ['a'])]), {
      message: 'plugin dependency cycle: a -> b -> c -> a'
    })
  })

  it('refuses the same plugin twice', () => {
    assert.throws(() => orderPlugins([loaded('a'), loaded('a')]), /configured twice/)
  })
})

describe('plugin import', () => {
  it('loads built-ins by name and modules by path, and explains what is wrong', async () => {
    const builtin: ParleyPlugin = { name: 'built', register: () => undefined }
    const dir = mkdtempSync(join(tmpdir(), 'parley-plugin-'))
    writeFileSync(join(dir, 'good.mjs'), 'export default { name: "third-party", dependencies: [], register() {} }\n')
    writeFileSync(join(dir, 'bad.mjs'), 'export default { name: "Bad Name" }\n')
    const got = await importPlugins(['built', { use: './good.mjs', config: { a: 1 } }], { built: async () => builtin }, dir)
    assert.deepEqual(got.map((p) => [p.plugin.name, p.source, p.rawConfig]), [
      ['built', 'built', undefined],
      ['third-party', './good.mjs', { a: 1 }]
    ])
    await assert.rejects(importPlugins(['nope'], { built: async () => builtin }, dir), {
      message: 'unknown plugin "nope": not a built-in (built), not a file, and no installed package of that name'
    })
    await assert.rejects(importPlugins(['./bad.mjs'], {}, dir), (err: Error) => {
      assert.ok(err instanceof PluginLoadError)
      assert.match(err.message, /"\.\/bad\.mjs" does not default-export a Parley plugin/)
      assert.match(err.message, /name: expected a lowercase name/)
      assert.match(err.message, /register: expected a function/)
      return true
    })
    await assert.rejects(importPlugins(['./missing.mjs'], {}, dir), /unknown plugin "\.\/missing\.mjs": not a built-in/)
    writeFileSync(join(dir, 'throws.mjs'), 'throw new Error("plugin module exploded")\n')
    await assert.rejects(importPlugins(['./throws.mjs'], {}, dir), /cannot load plugin module "\.\/throws\.mjs": plugin module exploded/)
  })

  it('loads a plugin published as an npm package, resolved from the config file\'s directory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'parley-plugin-pkg-'))
    const pkg = join(dir, 'node_modules', '@acme', 'parley-audit')
    mkdirSync(pkg, { recursive: true })
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: '@acme/parley-audit', type: 'module', main: 'index.js' }))
    writeFileSync(join(pkg, 'index.js'), 'export default { name: "acme-audit", register() {} }\n')
    const got = await importPlugins(['@acme/parley-audit'], {}, dir)
    assert.equal(got[0]?.plugin.name, 'acme-audit')
  })

  it('validates each plugin\'s configuration section with its schema', async () => {
    const { host } = newHost()
    const plugin = definePlugin({
      name: 'strict',
      configSchema: z.object({ limit: z.number().int().positive() }).strict(),
      register: () => undefined
    })
    await assert.rejects(
      host.registerAll([{ plugin, rawConfig: { limit: -1 }, source: 'strict' }], () => ({}) as PluginContext),
      /invalid configuration for plugin "strict": plugins\.strict\.config\.limit: Too small/
    )
  })

  it('checks every plugin\'s configuration before registering any', async () => {
    const { host } = newHost()
    const registered: string[] = []
    const mk = (name: string): ParleyPlugin => ({
      name,
      configSchema: z.object({ n: z.number() }),
      register: () => void registered.push(name)
    })
    await assert.rejects(
      host.registerAll(
        [
          { plugin: mk('good'), rawConfig: { n: 1 }, source: 'good' },
          { plugin: mk('bad'), rawConfig: { n: 'one' }, source: 'bad' }
        ],
        () => ({}) as PluginContext
      ),
      /plugins\.bad\.config\.n/
    )
    assert.deepEqual(registered, [], 'nothing was registered')
  })

  it('registers in order and hands each plugin its parsed config', async () => {
    const { host } = newHost()
    const seen: Array<[string, unknown]> = []
    const mk = (name: string): ParleyPlugin => ({
      name,
      configSchema: z.object({ n: z.number().default(7) }),
      register: (ctx) => {
        seen.push([ctx.name, ctx.config])
        return { from: name }
      }
    })
    await host.registerAll(
      [
        { plugin: mk('first'), rawConfig: undefined, source: 'first' },
        { plugin: mk('second'), rawConfig: { n: 1 }, source: 'second' }
      ],
      (plugin, config) => ({ name: plugin.name, config }) as PluginContext
    )
    assert.deepEqual(seen, [['first', { n: 7 }], ['second', { n: 1 }]])
    assert.deepEqual(host.order, ['first', 'second'])
    assert.deepEqual(host.api('second'), { from: 'second' })
  })
})

describe('authenticate chain', () => {
  it('lets the first decisive plugin decide; later ones are not asked', async () => {
    const { host } = newHost()
    const calls: string[] = []
    host.add('a', 'authenticate', () => {
      calls.push('a')
      return undefined
    })
    host.add('b', 'authenticate', (_c, creds) => {
      calls.push('b')
      return { ok: true, principal: { subject: creds.username ?? '?', attributes: { role: 'user' } } }
    })
    host.add('c', 'authenticate', () => {
      calls.push('c')
      return { ok: false, code: ConnackCode.NotAuthorized, reason: 'never' }
    })
    const c = client()
    await host.runAuthenticate(c, { username: 'alice', password: Buffer.from('pw') })
    assert.deepEqual(calls, ['a', 'b'])
    assert.deepEqual(host.principal(c), { subject: 'alice', anonymous: false, attributes: { role: 'user' } })
  })

  it('refuses with the plugin\'s CONNACK code', async () => {
    const { host, decisions } = newHost()
    host.add('jwt', 'authenticate', () => ({ ok: false, code: ConnackCode.BadUsernameOrPassword, reason: 'expired token' }))
    await assert.rejects(host.runAuthenticate(client(), {}), { returnCode: 4, message: 'expired token' })
    assert.deepEqual(decisions, ['authenticate:jwt:deny'])
  })

  it('fails closed: a throw or a timeout refuses with CONNACK 3', async () => {
    const { host, decisions } = newHost()
    host.add('broken', 'authenticate', () => {
      throw new Error('database down')
    })
    host.add('lenient', 'authenticate', () => ({ ok: true, principal: { subject: 'x', attributes: {} } }))
    await assert.rejects(host.runAuthenticate(client(), {}), { returnCode: 3 })
    const slow = newHost()
    slow.host.add('slow', 'authenticate', () => new Promise(() => undefined))
    await assert.rejects(slow.host.runAuthenticate(client(), {}), { returnCode: 3 })
    assert.deepEqual(decisions, ['authenticate:broken:error'])
    assert.deepEqual(slow.decisions, ['authenticate:slow:timeout'])
  })

  it('authorizes the will like a publish, so a will cannot reach a forbidden topic', async () => {
    const { host } = newHost()
    host.add('acl', 'authorizePublish', (_c, p) => !p.topic.startsWith('users/bob/'))
    const ok = client('alice-phone')
    await host.runAuthenticate(ok, {}, packet('users/alice/status', 'offline'))
    assert.equal(host.principal(ok)?.subject, 'alice-phone')
    const sneaky = client('mallory')
    await assert.rejects(host.runAuthenticate(sneaky, {}, packet('users/bob/inbox', 'spoof')), {
      returnCode: 5,
      message: 'will topic not authorized: users/bob/inbox'
    })
    assert.equal(host.principal(sneaky), undefined, 'a refused client keeps no principal')
    await assert.rejects(host.runAuthenticate(client('x'), {}, packet('$parley/deliver', '{}')), { returnCode: 5 })
  })

  it('admits anonymous clients only when allowed', async () => {
    const open = newHost({ allowAnonymous: true })
    const c = client('dev-1')
    await open.host.runAuthenticate(c, {})
    assert.deepEqual(open.host.principal(c), { subject: 'dev-1', anonymous: true, attributes: {} })
    const closed = newHost({ allowAnonymous: false })
    await assert.rejects(closed.host.runAuthenticate(client(), {}), { returnCode: 5 })
  })
})

describe('authorize chains', () => {
  it('publish: runs every plugin in order, sees earlier rewrites, stops at the first denial', async () => {
    const { host, decisions } = newHost()
    const calls: string[] = []
    host.add('stamp', 'authorizePublish', (_c, p) => {
      calls.push('stamp')
      p.payload = Buffer.from(`${p.payload.toString()}+stamped`)
    })
    host.add('check', 'authorizePublish', (_c, p) => {
      calls.push(`check:${p.payload.toString()}`)
      return p.topic !== 'forbidden'
    })
    host.add('after', 'authorizePublish', () => {
      calls.push('after')
      return true
    })
    const p = packet('fine', 'm')
    await host.runAuthorizePublish(client(), p)
    assert.equal(p.payload.toString(), 'm+stamped')
    await assert.rejects(host.runAuthorizePublish(client(), packet('forbidden', 'm')), /denied by check/)
    assert.deepEqual(calls, ['stamp', 'check:m+stamped', 'after', 'stamp', 'check:m+stamped'])
    assert.deepEqual(decisions, ['authorizePublish:check:deny'])
  })

  it('publish: a rejection stops the chain and names its plugin; wills are flagged to plugins', async () => {
    const { host, decisions } = newHost()
    const seen: string[] = []
    host.add('limits', 'authorizePublish', (_c, p, context) => {
      seen.push(`limits:${context.will}`)
      return p.topic === 'big' ? { reject: 'payload_too_large', message: 'too big', retryAfterMs: 5 } : undefined
    })
    host.add('later', 'authorizePublish', () => void seen.push('later'))
    assert.deepEqual(await host.runAuthorizePublish(client(), packet('big')), {
      reject: 'payload_too_large',
      message: 'too big',
      retryAfterMs: 5,
      plugin: 'limits'
    })
    await host.runAuthenticate(client('w'), {}, packet('fine'))
    assert.deepEqual(seen, ['limits:false', 'limits:true', 'later'])
    assert.deepEqual(decisions, ['authorizePublish:limits:reject'])
  })

  it('publish: a throw or a timeout denies', async () => {
    const { host } = newHost()
    host.add('boom', 'authorizePublish', () => {
      throw new Error('store unavailable')
    })
    await assert.rejects(host.runAuthorizePublish(client(), packet('t')), /store unavailable/)
    const slow = newHost()
    slow.host.add('slow', 'authorizePublish', () => new Promise(() => undefined))
    await assert.rejects(slow.host.runAuthorizePublish(client(), packet('t')), /did not answer within 400 ms/)
  })

  it('publish: the check has publishTimeoutMs, longer than the other hooks (a slow store holds, not disconnects)', async () => {
    const { host, decisions } = newHost()
    // 300 ms: over hookTimeoutMs (200), under publishTimeoutMs (400)
    host.add('store', 'authorizePublish', () => new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 300)))
    assert.equal(await host.runAuthorizePublish(client(), packet('t')), undefined, 'answered, not timed out')
    host.add('store', 'authorizeSubscribe', () => new Promise<null>((resolve) => setTimeout(() => resolve(null), 300)))
    assert.equal(await host.runAuthorizeSubscribe(client(), { topic: 't', qos: 1 }), null)
    assert.deepEqual(decisions, ['authorizeSubscribe:store:timeout'], 'a subscribe check keeps the shorter limit')
  })

  it('publish and subscribe: reserved topics are refused before any plugin runs', async () => {
    const { host } = newHost()
    let asked = false
    host.add('p', 'authorizePublish', () => {
      asked = true
    })
    host.add('p', 'authorizeSubscribe', () => {
      asked = true
    })
    assert.deepEqual(await host.runAuthorizePublish(client(), packet('$SYS/x/heartbeat')), {
      reject: 'forbidden',
      message: '$SYS/ topics are reserved for the broker',
      plugin: 'core'
    })
    assert.equal((await host.runAuthorizePublish(client(), packet('$parley/deliver')))?.reject, 'forbidden')
    assert.equal(await host.runAuthorizeSubscribe(client(), { topic: '$SYS/#', qos: 0 }), null)
    assert.equal(asked, false)
  })

  it('subscribe: replace, keep, deny, and deny on throw', async () => {
    const { host, decisions } = newHost()
    host.add('downgrade', 'authorizeSubscribe', (_c, s) => ({ ...s, qos: 0 }) as Subscription)
    host.add('keep', 'authorizeSubscribe', () => undefined)
    host.add('deny', 'authorizeSubscribe', (_c, s) => (s.topic === 'no' ? null : undefined))
    host.add('throws', 'authorizeSubscribe', (_c, s) => {
      if (s.topic === 'boom') throw new Error('x')
    })
    assert.deepEqual(await host.runAuthorizeSubscribe(client(), { topic: 'a/b', qos: 1 }), { topic: 'a/b', qos: 0 })
    assert.equal(await host.runAuthorizeSubscribe(client(), { topic: 'no', qos: 1 }), null)
    assert.equal(await host.runAuthorizeSubscribe(client(), { topic: 'boom', qos: 1 }), null)
    assert.deepEqual(decisions, ['authorizeSubscribe:deny:deny', 'authorizeSubscribe:throws:error'])
  })

  it('forward: rewrite, drop, and drop on throw', () => {
    const { host } = newHost()
    host.add('rewrite', 'authorizeForward', (c, p) => ({ ...p, payload: Buffer.from(`for ${c.id}`) }))
    host.add('drop', 'authorizeForward', (c) => (c.id === 'muted' ? null : undefined))
    host.add('throws', 'authorizeForward', (c) => {
      if (c.id === 'boom') throw new Error('x')
    })
    const p = packet('t') as unknown as AedesPublishPacket
    assert.equal(host.runAuthorizeForward(client('bob'), p)?.payload.toString(), 'for bob')
    assert.equal(host.runAuthorizeForward(client('muted'), p), null)
    assert.equal(host.runAuthorizeForward(client('boom'), p), null)
  })
})

describe('notifications and shutdown', () => {
  it('a failing notification handler does not stop the others', async () => {
    const { host } = newHost()
    const seen: string[] = []
    host.add('a', 'clientReady', () => {
      throw new Error('a broke')
    })
    host.add('b', 'clientReady', (c) => {
      seen.push(c.id)
    })
    await host.notify('clientReady', client('x'))
    assert.deepEqual(seen, ['x'])
  })

  it('runs shutdown handlers in reverse load order, even past a failure', async () => {
    const { host } = newHost()
    const seen: string[] = []
    for (const name of ['store', 'messages', 'push']) {
      host.add(name, 'shutdown', () => {
        seen.push(name)
        if (name === 'messages') throw new Error('flush failed')
      })
    }
    await host.shutdown()
    assert.deepEqual(seen, ['push', 'messages', 'store'])
  })

  it('refuses an unknown hook name', () => {
    const { host } = newHost()
    assert.throws(() => host.add('p', 'onEverything' as 'shutdown', () => undefined), /unknown hook "onEverything"/)
  })
})
