// Loads plugins in dependency order and runs their hook chains for Aedes.
// Rules (docs/plugins.md): handlers run in load order; authentication and authorization
// fail closed (a throw, a timeout or an explicit no denies); notifications never block MQTT.
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { isAbsolute, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { AedesOptions, AedesPublishPacket, Client, ConnectPacket, PublishPacket, Subscription } from 'aedes'
import { z } from 'zod'
import type { Logger } from './logger.js'
import {
  ConnackCode,
  type HookHandlers,
  type PublishContext,
  type PublishRejection,
  type HookName,
  type ParleyPlugin,
  type PluginContext,
  type Principal
} from './plugin-api.js'
import type { PluginEntry } from '../schemas/config.js'

/** Topic prefixes only the broker itself may use. */
export const RESERVED_PREFIXES = ['$SYS/', '$parley/'] as const

/**
 * Where a rejected publish goes: Aedes acknowledges and routes every authorized publish, so a
 * rejected one is re-addressed to a topic no client can subscribe to ($SYS, where '#' never reaches).
 */
export const REJECTED_TOPIC = '$SYS/parley/rejected'

export class PluginLoadError extends Error {
  override name = 'PluginLoadError'
}

/** A plugin with the configuration section it was given. */
export interface LoadedPlugin {
  plugin: ParleyPlugin
  rawConfig: Record<string, unknown> | undefined
  /** Where it came from: a built-in name or a module path. */
  source: string
}

const PluginShape = z.object({
  name: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, { error: 'expected a lowercase name of letters, digits and -' })
    .refine((n) => n !== 'core', { error: '"core" is reserved for the broker itself' }),
  dependencies: z.array(z.string()).optional(),
  register: z.custom<(...args: unknown[]) => unknown>((v) => typeof v === 'function', { error: 'expected a function' })
})

/**
 * Where a third-party plugin lives: a file path (relative to baseDir, the config file's directory)
 * or an npm package installed where the config file is. Undefined when neither exists.
 */
function resolvePluginModule(use: string, baseDir: string): string | undefined {
  if (use.startsWith('.') || isAbsolute(use)) {
    const file = resolve(baseDir, use)
    return existsSync(file) ? pathToFileURL(file).href : undefined
  }
  try {
    return pathToFileURL(createRequire(join(baseDir, 'package.json')).resolve(use)).href
  } catch {
    return undefined
  }
}

/** Imports every configured plugin: built-in names first, then files and installed packages. */
export async function importPlugins(
  entries: readonly PluginEntry[],
  builtins: Readonly<Record<string, () => Promise<ParleyPlugin>>>,
  baseDir: string
): Promise<LoadedPlugin[]> {
  const loaded: LoadedPlugin[] = []
  for (const entry of entries) {
    const use = typeof entry === 'string' ? entry : entry.use
    const rawConfig = typeof entry === 'string' ? undefined : entry.config
    let candidate: unknown
    const builtin = builtins[use]
    if (builtin) {
      candidate = await builtin()
    } else {
      const url = resolvePluginModule(use, baseDir)
      if (!url) {
        const known = Object.keys(builtins).sort().join(', ') || '(none)'
        throw new PluginLoadError(
          `unknown plugin "${use}": not a built-in (${known}), not a file, and no installed package of that name`
        )
      }
      try {
        const mod = (await import(url)) as { default?: unknown }
        candidate = mod.default
      } catch (err) {
        throw new PluginLoadError(`cannot load plugin module "${use}": ${(err as Error).message}`)
      }
    }
    const shape = PluginShape.safeParse(candidate)
    if (!shape.success) {
      const why = shape.error.issues.map((i) => `${i.path.join('.') || 'export'}: ${i.message}`).join('; ')
      throw new PluginLoadError(`"${use}" does not default-export a Parley plugin (${why})`)
    }
    loaded.push({ plugin: candidate as ParleyPlugin, rawConfig, source: use })
  }
  return loaded
}

/**
 * Orders plugins so that each comes after its dependencies. Among plugins free to go,
 * configuration order wins, so the order is deterministic. Refuses duplicates,
 * missing dependencies and cycles with a message that names them.
 */
export function orderPlugins(plugins: readonly LoadedPlugin[]): LoadedPlugin[] {
  const byName = new Map<string, LoadedPlugin>()
  for (const p of plugins) {
    if (byName.has(p.plugin.name)) throw new PluginLoadError(`plugin "${p.plugin.name}" is configured twice`)
    byName.set(p.plugin.name, p)
  }
  for (const p of plugins) {
    for (const dep of p.plugin.dependencies ?? []) {
      if (!byName.has(dep)) {
        throw new PluginLoadError(`plugin "${p.plugin.name}" depends on "${dep}", which is not loaded; add "${dep}" to plugins`)
      }
    }
  }
  const ordered: LoadedPlugin[] = []
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (p: LoadedPlugin, trail: string[]): void => {
    const name = p.plugin.name
    if (state.get(name) === 'done') return
    if (state.get(name) === 'visiting') {
      const cycle = [...trail.slice(trail.indexOf(name)), name].join(' -> ')
      throw new PluginLoadError(`plugin dependency cycle: ${cycle}`)
    }
    state.set(name, 'visiting')
    for (const dep of p.plugin.dependencies ?? []) visit(byName.get(dep)!, [...trail, name])
    state.set(name, 'done')
    ordered.push(p)
  }
  for (const p of plugins) visit(p, [])
  return ordered
}

class HookTimeout extends Error {
  override name = 'HookTimeout'
}

async function withTimeout<T>(work: Awaitable<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      Promise.resolve(work),
      new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new HookTimeout(`${what} did not answer within ${ms} ms`)), ms)
      })
    ])
  } finally {
    clearTimeout(timer)
  }
}
type Awaitable<T> = T | Promise<T>

interface Registered<K extends HookName> {
  plugin: string
  handler: HookHandlers[K]
}

export interface PluginHostOptions {
  log: Logger
  hookTimeoutMs: number
  /** The time limit of authorizePublish handlers (they may store the message: a slow store holds the publisher). */
  publishTimeoutMs: number
  allowAnonymous: boolean
  /** Rejected publishes per client and second before the client is disconnected instead of answered. */
  maxRejectionsPerSecond: number
  /** Counts decisions for metrics: hook, plugin, outcome. */
  onDecision?: (hook: HookName, plugin: string, outcome: 'deny' | 'reject' | 'error' | 'timeout') => void
}

type AuthError = Error & { returnCode: number }

function authError(code: number, message: string): AuthError {
  return Object.assign(new Error(message), { returnCode: code })
}

function isReserved(topic: string): boolean {
  return RESERVED_PREFIXES.some((p) => topic.startsWith(p))
}

export class PluginHost {
  private readonly handlers: { [K in HookName]: Registered<K>[] } = {
    connect: [],
    authenticate: [],
    authorizePublish: [],
    publishRejected: [],
    authorizeSubscribe: [],
    authorizeForward: [],
    published: [],
    clientReady: [],
    clientDisconnect: [],
    deliveryAck: [],
    subscribed: [],
    unsubscribed: [],
    shutdown: []
  }
  private readonly principals = new WeakMap<Client, Principal>()
  private readonly rejections = new WeakMap<Client, { second: number; count: number; closing: boolean }>()
  /** Notification hooks still running, so a stop can wait for them before shutdown hooks. */
  private readonly pending = new Set<Promise<void>>()
  private readonly apis = new Map<string, unknown>()
  readonly order: string[] = []

  constructor(private readonly opts: PluginHostOptions) {}

  add<K extends HookName>(plugin: string, name: K, handler: HookHandlers[K]): void {
    if (!(name in this.handlers)) throw new PluginLoadError(`plugin "${plugin}" registered an unknown hook "${String(name)}"`)
    ;(this.handlers[name] as Registered<K>[]).push({ plugin, handler })
  }

  principal(client: Client): Principal | undefined {
    return this.principals.get(client)
  }

  api(name: string): unknown {
    return this.apis.get(name)
  }

  /**
   * Registers the plugins in the given order. `makeContext` builds each plugin's context
   * (the node supplies publishing, routes, metrics and backends).
   */
  async registerAll(
    plugins: readonly LoadedPlugin[],
    makeContext: (plugin: ParleyPlugin, config: unknown) => PluginContext
  ): Promise<void> {
    // Every plugin's configuration is checked before any plugin registers.
    const configs = plugins.map(({ plugin, rawConfig }) => {
      if (!plugin.configSchema) return rawConfig ?? {}
      const parsed = plugin.configSchema.safeParse(rawConfig ?? {})
      if (!parsed.success) {
        const why = parsed.error.issues
          .map((i) => `plugins.${plugin.name}.config${i.path.length ? '.' + i.path.join('.') : ''}: ${i.message}`)
          .join('; ')
        throw new PluginLoadError(`invalid configuration for plugin "${plugin.name}": ${why}`)
      }
      return parsed.data
    })
    for (const [i, { plugin }] of plugins.entries()) {
      const config = configs[i]
      const api = await plugin.register(makeContext(plugin, config))
      this.apis.set(plugin.name, api)
      this.order.push(plugin.name)
      this.opts.log.info({ plugin: plugin.name }, 'plugin registered')
    }
  }

  /** The Aedes hook functions that run the chains. */
  aedesHooks(): Pick<
    AedesOptions,
    'preConnect' | 'authenticate' | 'authorizePublish' | 'authorizeSubscribe' | 'authorizeForward' | 'published'
  > {
    return {
      preConnect: (client, packet, done) => {
        this.runConnect(client, packet).then(
          () => done(null, true),
          (err: Error) => done(err, false)
        )
      },
      authenticate: (client, username, password, done) => {
        // Aedes has stored the CONNECT's will on the client before it authenticates.
        const will = (client as Client & { _will?: PublishPacket | null })._will ?? undefined
        this.runAuthenticate(client, { username, password }, will).then(
          () => done(null, true),
          (err: AuthError) => done(err, false)
        )
      },
      authorizePublish: (client, packet, done) => {
        // Without a client this is the will of a client whose node died: it was authorized at CONNECT.
        if (!client) return done(null)
        this.runAuthorizePublish(client, packet).then(
          (rejection) => {
            if (!rejection) return done(null)
            // Answering every rejection would let a client make the broker flood it (and the
            // cluster) with errors: past the budget it is disconnected, without a PUBACK.
            const budget = this.rejectionBudget(client)
            if (budget !== 'ok') {
              if (budget === 'spent') {
                this.opts.onDecision?.('authorizePublish', rejection.plugin, 'deny')
                this.opts.log.warn({ clientId: client.id, max: this.opts.maxRejectionsPerSecond }, 'too many rejected publishes: disconnecting')
              }
              return done(new Error('too many rejected publishes'))
            }
            const original = { ...packet }
            packet.topic = REJECTED_TOPIC
            packet.retain = false
            void this.notify('publishRejected', client, original, rejection)
            done(null)
          },
          (err: Error) => done(err)
        )
      },
      authorizeSubscribe: (client, sub, done) => {
        this.runAuthorizeSubscribe(client, sub).then(
          (granted) => done(null, granted),
          () => done(null, null)
        )
      },
      authorizeForward: (client, packet) => this.runAuthorizeForward(client, packet),
      published: (packet, client, done) => {
        // Notification only: never hold up or fail the publish.
        done()
        // Aedes passes null for the broker's own publishes, whatever its types say.
        if (this.handlers.published.length) void this.notify('published', packet, client)
      }
    }
  }

  /** Runs one handler of a decision hook within the timeout; a throw or a timeout is counted, logged and rethrown. */
  private async ask<T>(hook: HookName, plugin: string, work: () => Awaitable<T>): Promise<T> {
    try {
      const timeoutMs = hook === 'authorizePublish' ? this.opts.publishTimeoutMs : this.opts.hookTimeoutMs
      return await withTimeout(work(), timeoutMs, `${plugin}.${hook}`)
    } catch (err) {
      this.fail(hook, plugin, err)
      throw err
    }
  }

  private fail(hook: HookName, plugin: string, err: unknown): void {
    const outcome = err instanceof HookTimeout ? 'timeout' : 'error'
    this.opts.onDecision?.(hook, plugin, outcome)
    this.opts.log.warn({ hook, plugin, err }, `plugin hook ${outcome}: denied (fail closed)`)
  }

  async runConnect(client: Client, packet: ConnectPacket): Promise<void> {
    for (const { plugin, handler } of this.handlers.connect) {
      try {
        await withTimeout(handler(client, packet), this.opts.hookTimeoutMs, `${plugin}.connect`)
      } catch (err) {
        this.opts.onDecision?.('connect', plugin, 'deny')
        this.opts.log.debug({ hook: 'connect', plugin, clientId: packet.clientId, reason: (err as Error).message }, 'connection refused')
        throw err
      }
    }
  }

  /**
   * Establishes the principal, then authorizes the will (if any) like a publish, so a will can
   * never reach a topic its client could not publish to (wills of dead nodes are sent without a client).
   */
  async runAuthenticate(
    client: Client,
    credentials: { username?: string | undefined; password?: Buffer | undefined },
    will?: PublishPacket
  ): Promise<void> {
    await this.establishPrincipal(client, credentials)
    if (!will) return
    const refusal = await this.runAuthorizePublish(client, will, { will: true }).then(
      (rejection) => rejection?.message,
      (err: Error) => err.message
    )
    if (refusal !== undefined) {
      this.principals.delete(client)
      this.opts.log.info({ clientId: client.id, topic: will.topic, reason: refusal }, 'connection refused: will not authorized')
      throw authError(ConnackCode.NotAuthorized, `will topic not authorized: ${will.topic}`)
    }
  }

  private async establishPrincipal(
    client: Client,
    credentials: { username?: string | undefined; password?: Buffer | undefined }
  ): Promise<void> {
    const creds = { username: credentials.username, password: credentials.password }
    for (const { plugin, handler } of this.handlers.authenticate) {
      const result = await this.ask('authenticate', plugin, () => handler(client, creds)).catch(() => {
        throw authError(ConnackCode.ServerUnavailable, 'authentication failed')
      })
      if (result === undefined) continue
      if (result.ok) {
        this.principals.set(client, { ...result.principal, anonymous: false })
        return
      }
      this.opts.onDecision?.('authenticate', plugin, 'deny')
      this.opts.log.info({ plugin, clientId: client.id, code: result.code, reason: result.reason }, 'connection refused')
      throw authError(result.code, result.reason)
    }
    if (!this.opts.allowAnonymous) {
      this.opts.log.info({ clientId: client.id }, 'connection refused: no plugin authenticated it and anonymous access is off')
      throw authError(ConnackCode.NotAuthorized, 'not authorized')
    }
    this.principals.set(client, { subject: client.id, anonymous: true, attributes: {} })
  }

  /**
   * Takes one rejection from the client's budget for this second: 'ok', or 'spent' the first time
   * it runs out ('again' after that: Aedes handles a whole socket read at once, so more of the
   * flood may still arrive before the connection is gone).
   */
  private rejectionBudget(client: Client): 'ok' | 'spent' | 'again' {
    const second = Math.floor(Date.now() / 1000)
    const used = this.rejections.get(client)
    if (used?.closing) return 'again'
    const count = used?.second === second ? used.count + 1 : 1
    const spent = count > this.opts.maxRejectionsPerSecond
    this.rejections.set(client, { second, count, closing: spent })
    return spent ? 'spent' : 'ok'
  }

  /** Resolves with a rejection (acknowledge, deliver nowhere), or undefined to go on; rejects to close the client. */
  async runAuthorizePublish(
    client: Client,
    packet: PublishPacket,
    context: PublishContext = { will: false }
  ): Promise<(PublishRejection & { plugin: string }) | undefined> {
    if (isReserved(packet.topic)) {
      return { reject: 'forbidden', message: `${packet.topic.split('/')[0]}/ topics are reserved for the broker`, plugin: 'core' }
    }
    for (const { plugin, handler } of this.handlers.authorizePublish) {
      const answer = await this.ask('authorizePublish', plugin, () => handler(client, packet, context))
      if (answer === false) {
        this.opts.onDecision?.('authorizePublish', plugin, 'deny')
        throw new Error(`publish to ${packet.topic} denied by ${plugin}`)
      }
      if (typeof answer === 'object' && answer !== null) {
        if (typeof answer.reject !== 'string' || typeof answer.message !== 'string') {
          // A malformed answer is a plugin bug: fail closed like a throw.
          this.fail('authorizePublish', plugin, new Error('authorizePublish returned an object without reject and message'))
          throw new Error(`invalid authorizePublish answer from ${plugin}`)
        }
        this.opts.onDecision?.('authorizePublish', plugin, 'reject')
        return { ...answer, plugin }
      }
    }
    return undefined
  }

  async runAuthorizeSubscribe(client: Client, subscription: Subscription): Promise<Subscription | null> {
    // Clients never see the broker's internal or $SYS traffic (it names other clients).
    if (isReserved(subscription.topic)) return null
    let current = subscription
    for (const { plugin, handler } of this.handlers.authorizeSubscribe) {
      let answer
      try {
        answer = await this.ask('authorizeSubscribe', plugin, () => handler(client, current))
      } catch {
        return null
      }
      if (answer === null) {
        this.opts.onDecision?.('authorizeSubscribe', plugin, 'deny')
        return null
      }
      if (answer) current = answer
    }
    return current
  }

  runAuthorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    let current = packet
    for (const { plugin, handler } of this.handlers.authorizeForward) {
      let answer
      try {
        answer = handler(client, current)
      } catch (err) {
        this.fail('authorizeForward', plugin, err)
        return null
      }
      if (answer === null) return null
      if (answer) current = answer
    }
    return current
  }

  /** Runs a notification hook: every handler, in order; errors are logged and never propagate. */
  notify<K extends Exclude<HookName, 'authorizeForward'>>(name: K, ...args: Parameters<HookHandlers[K]>): Promise<void> {
    const run = this.runNotification(name, ...args)
    this.pending.add(run)
    void run.finally(() => this.pending.delete(run))
    return run
  }

  /** Resolves when every notification hook started so far has finished. */
  async settle(): Promise<void> {
    while (this.pending.size) await Promise.allSettled([...this.pending])
  }

  private async runNotification<K extends Exclude<HookName, 'authorizeForward'>>(
    name: K,
    ...args: Parameters<HookHandlers[K]>
  ): Promise<void> {
    for (const { plugin, handler } of this.handlers[name] as Registered<K>[]) {
      try {
        await (handler as (...a: Parameters<HookHandlers[K]>) => unknown)(...args)
      } catch (err) {
        this.opts.log.error({ hook: name, plugin, err }, 'plugin hook failed')
      }
    }
  }

  hasHandlers(name: HookName): boolean {
    return this.handlers[name].length > 0
  }

  /** Runs shutdown handlers in reverse load order, so dependants close before what they use. */
  async shutdown(): Promise<void> {
    for (const { plugin, handler } of [...this.handlers.shutdown].reverse()) {
      try {
        await handler()
      } catch (err) {
        this.opts.log.error({ hook: 'shutdown', plugin, err }, 'plugin shutdown failed')
      }
    }
  }
}
