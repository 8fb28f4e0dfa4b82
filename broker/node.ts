// One Parley broker node: Aedes, its listeners, the plugin host, the backends, and a
// bounded graceful stop. It knows nothing about chat; plugins bring that.
import { randomBytes } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { hostname } from 'node:os'
import { resolve } from 'node:path'
import { Aedes, type AedesOptions, type Client } from 'aedes'
import * as memoryPersistenceModule from 'aedes-persistence'
import redisPersistence from 'aedes-persistence-redis'
import type { FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import mqemitter from 'mqemitter'
import mqemitterRedis from 'mqemitter-redis'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { Config } from '../schemas/config.js'
import { tlsListenerEnabled } from '../schemas/config.js'
import { builtinPlugins } from '../plugins/index.js'
import { AdminApi } from './admin/api.js'
import { loadBootstrapSecret } from './admin/bootstrap.js'
import { ClusterQuery } from './admin/cluster-query.js'
import { registerCoreRoutes, UserFacets } from './admin/core-routes.js'
import { ApiKeyStore } from './admin/keys.js'
import type { AdminPersistence, NodeAccess } from './admin/node-access.js'
import { openBackends, newRedis, type BackendSet } from './backends.js'
import { ClusterView, type NodeRecord } from './cluster-view.js'
import { redactConfig } from './config.js'
import { listenerOf, startMqttListeners, type ListenerName, type MqttListener } from './listeners.js'
import type { Logger } from './logger.js'
import { limitOfflineQueues, memoryQueueLengths, redisQueueLengths, type QueueLengths, type QueueablePersistence } from './offline-queue.js'
import { createOpsServer, runChecks } from './ops-http.js'
import { routeByUser } from './routed-emitter.js'
import type { DeliveryRoute, HookName, ParleyPlugin, PluginContext, PluginMetrics, PublishOptions } from './plugin-api.js'
import { PluginHost, importPlugins, orderPlugins } from './plugin-host.js'

/**
 * Internal topic on which a node asks the node holding a client to deliver to it. One topic for
 * all clients: client ids may contain '/', so they travel in the packet, not in the topic.
 */
const DELIVER_TOPIC = '$parley/deliver'
/** Internal topics of plugins' cluster channels: $parley/cluster/<plugin>/<channel>. */
const CLUSTER_PREFIX = '$parley/cluster/'

type Packet = Parameters<Aedes['publish']>[0]

interface Persistence extends QueueablePersistence {
  // Only the promise form: with Aedes 1.x the callback form waits for a 'ready' event that never comes.
  destroy(): Promise<void>
}

// aedes-persistence is CommonJS whose module.exports is the factory; its types describe an ES default.
const aedesMemoryPersistence = ((memoryPersistenceModule as { default?: unknown }).default ??
  memoryPersistenceModule) as unknown as () => Persistence

interface AedesInternals {
  clients: Record<string, Client | undefined>
  mq: {
    on<P>(topic: string, fn: (packet: P, cb: () => void) => void, done?: () => void): void
    emit(packet: { topic: string; [field: string]: unknown }, cb?: (err?: Error) => void): void
  }
}

interface DeliverPacket {
  topic: string
  payload: Buffer
  origin: string
  clientId: string
  target: { topic: string; qos: 0 | 1; retain: boolean }
}

function isDeliverPacket(p: Partial<DeliverPacket>): p is DeliverPacket {
  return (
    typeof p.clientId === 'string' &&
    typeof p.origin === 'string' &&
    typeof p.target?.topic === 'string' &&
    (p.target.qos === 0 || p.target.qos === 1) &&
    p.payload !== undefined
  )
}

/** Label of a client whose connection came through no listener of ours (an embedder's own stream). */
type ListenerLabel = ListenerName | 'other'

/**
 * A counter by QoS for the per-message hot path: the path adds to plain numbers (`counts[qos]`),
 * and the counter takes the difference at each scrape, so a message costs an array increment
 * instead of prom-client's label hashing.
 */
function qosCounter(registry: Registry, name: string, help: string, counts: number[]): Counter<'qos'> {
  const reported = counts.map(() => 0)
  const counter = new Counter({
    name,
    help,
    labelNames: ['qos'],
    registers: [registry],
    collect() {
      for (let q = 0; q < counts.length; q++) {
        const delta = counts[q]! - reported[q]!
        if (delta > 0) {
          this.inc({ qos: String(q) }, delta)
          reported[q] = counts[q]!
        }
      }
    }
  })
  // QoS 0 and 1 exist from the start (rate() needs a first sample); QoS 2 appears when used.
  counter.inc({ qos: '0' }, 0)
  counter.inc({ qos: '1' }, 0)
  return counter
}

export interface ListenerAddress {
  name: string
  host: string
  port: number
}

/** A unique id per process start: a fixed id makes a restarted node lose and duplicate queued messages. */
export function newBrokerId(nodeName: string | undefined): string {
  const base = (nodeName ?? hostname()).replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 48) || 'parley'
  return `${base}-${randomBytes(6).toString('hex')}`
}

export interface BrokerNodeOptions {
  config: Config
  log: Logger
  /** Directory that relative plugin module paths resolve against. */
  baseDir?: string
  /** Extra plugin modules by name (tests, embedders). */
  extraBuiltins?: Readonly<Record<string, () => Promise<ParleyPlugin>>>
  /**
   * Called when an operator drains this node through the admin API; `parley start` stops the
   * process as on SIGTERM. Without it the node just stops.
   */
  onStopRequested?: (reason: string) => void
  /** The version reported by the admin API. */
  version?: string
}

export class BrokerNode {
  readonly brokerId: string
  readonly config: Config
  readonly log: Logger
  readonly registry = new Registry()
  private aedes: Aedes | undefined
  private host: PluginHost | undefined
  private ops: FastifyInstance | undefined
  private backends: BackendSet | undefined
  private persistence: Persistence | undefined
  private clusterRedis: Redis[] = []
  private listeners: MqttListener[] = []
  private accepting = false
  private stopping: Promise<void> | undefined
  private readonly extraChecks = new Map<string, () => Promise<void>>()
  /** Cluster channel handlers registered by plugins before Aedes (and its emitter) exists. */
  private readonly clusterHandlers: Array<{ topic: string; handler: (data: unknown, from: string) => void; plugin: string }> = []
  private opsAddress: ListenerAddress | undefined
  private clusterView: ClusterView | undefined
  private queueLengths: QueueLengths | undefined
  private readonly startedAt = Date.now()
  private adminApi: AdminApi | undefined
  private clusterQuery: ClusterQuery | undefined
  private adminKeys: ApiKeyStore | undefined
  private readonly userFacets = new UserFacets()

  constructor(private readonly opts: BrokerNodeOptions) {
    this.config = opts.config
    this.brokerId = newBrokerId(opts.config.nodeName)
    this.log = opts.log.child({ brokerId: this.brokerId })
  }

  /** Bound addresses of every listener (ports resolved when configured as 0). */
  addresses(): ListenerAddress[] {
    const mqtt = this.listeners.map(({ name, host, port }) => ({ name, host, port }))
    return this.opsAddress ? [...mqtt, this.opsAddress] : mqtt
  }

  get connectedClients(): number {
    return this.aedes?.connectedClients ?? 0
  }

  async start(): Promise<void> {
    const { config, log } = this
    log.info({ config: redactConfig(config) }, 'starting')
    mkdirSync(resolve(config.dataDir), { recursive: true })
    collectDefaultMetrics({ register: this.registry })
    const metrics = this.coreMetrics()

    this.backends = openBackends(config, log)
    const host = new PluginHost({
      log,
      hookTimeoutMs: config.mqtt.hookTimeoutMs,
      publishTimeoutMs: config.mqtt.publishTimeoutMs,
      allowAnonymous: config.mqtt.allowAnonymous,
      maxRejectionsPerSecond: config.mqtt.maxRejectionsPerSecond,
      onDecision: (hook, plugin, outcome) => metrics.hookDecisions.inc({ hook, plugin, outcome })
    })
    this.host = host

    const builtins = { ...builtinPlugins, ...this.opts.extraBuiltins }
    const loaded = orderPlugins(await importPlugins(config.plugins, builtins, this.opts.baseDir ?? process.cwd()))

    this.ops = createOpsServer({
      log,
      brokerId: this.brokerId,
      registry: this.registry,
      readiness: { accepting: () => this.accepting, checks: () => this.readinessChecks() }
    })

    this.clusterView = new ClusterView({
      // The shared connection of the backends: the view is written on heartbeats, not per message.
      redis: this.backends.backends.redis,
      keyPrefix: config.redis.keyPrefix,
      intervalMs: config.mqtt.heartbeatIntervalMs,
      log,
      self: () => this.nodeRecord()
    })
    const view = this.clusterView
    this.ops.get('/cluster', async () => {
      const nodes = await view.nodes()
      return { self: this.brokerId, nodes, clients: nodes.reduce((n, x) => n + x.clients, 0) }
    })
    this.startAdmin()

    await host.registerAll(loaded, (plugin, pluginConfig) => this.contextFor(plugin, pluginConfig))
    if (config.admin.enabled) this.adminApi!.mount(this.ops)

    if (config.listeners.ops.enabled) {
      await this.ops.listen({ host: config.listeners.ops.host, port: config.listeners.ops.port })
      const addr = this.ops.server.address()
      const port = typeof addr === 'object' && addr ? addr.port : config.listeners.ops.port
      this.opsAddress = { name: 'ops', host: config.listeners.ops.host, port }
      log.info({ listener: 'ops', host: config.listeners.ops.host, port }, 'listening')
    } else {
      await this.ops.ready()
    }

    this.aedes = await Aedes.createBroker(this.aedesOptions(host, metrics))
    this.wireEvents(this.aedes, host, metrics)
    await this.listenForDeliveries(this.aedes)
    await this.listenOnClusterChannels(this.aedes)
    await this.clusterQuery!.start((this.aedes as unknown as AedesInternals).mq)

    this.listeners = await startMqttListeners(config, this.aedes.handle, log)
    this.accepting = true
    this.clusterView.start()
    log.info({ plugins: host.order, cluster: Boolean(config.redis.url) }, 'ready')
  }

  /**
   * The admin API (broker/admin/): key store, cluster-wide queries, core routes. Plugins add their
   * routes during register(); the API is served once they have (mount).
   */
  private startAdmin(): void {
    const { config, log } = this
    const keys = new ApiKeyStore({ mongo: this.backends!.backends.mongo, dataDir: resolve(config.dataDir) })
    this.adminKeys = keys
    // MongoDB may be unreachable at start: the key store initialises in the background, and the
    // admin API answers 503 (unavailable) until it has.
    const keysReady = keys.init()
    keysReady.catch((err: unknown) => log.warn({ err }, 'admin key store not initialised'))
    this.adminApi = new AdminApi({
      log: log.child({ component: 'admin' }),
      keys,
      bootstrapSecret: config.admin.enabled ? loadBootstrapSecret(config, { create: true }) : undefined,
      keysReady: () => keysReady
    })
    this.clusterQuery = new ClusterQuery({
      brokerId: this.brokerId,
      log,
      timeoutMs: config.admin.queryTimeoutMs,
      nodes: async () => (await this.clusterView!.nodes()).map((n) => n.brokerId)
    })
    registerCoreRoutes(this.adminApi, this.clusterQuery, this.nodeAccess(), keys, this.userFacets)
  }

  private nodeAccess(): NodeAccess {
    const internals = () => this.requireAedes() as unknown as AedesInternals
    return {
      brokerId: this.brokerId,
      config: this.config,
      registry: this.registry,
      version: this.opts.version ?? 'unknown',
      aedes: () => this.requireAedes(),
      clients: () => internals().clients,
      persistence: () => {
        if (!this.persistence) throw new Error('the broker is not started yet')
        return this.persistence as unknown as AdminPersistence
      },
      persistenceRedis: () => this.clusterRedis[2],
      host: () => this.host!,
      nodes: () => this.clusterView!.nodes(),
      readiness: async () => {
        const checks = await runChecks(this.readinessChecks())
        return { ready: this.accepting && Object.values(checks).every((c) => c.ok), checks }
      },
      requestStop: (reason) => {
        this.log.warn({ reason }, 'drain requested through the admin API')
        // After this answer has gone out.
        setImmediate(() => {
          if (this.opts.onStopRequested) this.opts.onStopRequested(reason)
          else void this.stop()
        })
      }
    }
  }

  private aedesOptions(host: PluginHost, metrics: ReturnType<BrokerNode['coreMetrics']>): AedesOptions {
    const { config } = this
    const m = config.mqtt
    const hooks = host.aedesHooks()
    // Messages out are counted where Aedes decides to write a PUBLISH to a client (live, forwarded
    // or from its offline queue; after its duplicate check), at the QoS Aedes then writes: 0 for a
    // QoS 0 publish, else the lower of the packet's and the client's subscription (Aedes looks the
    // subscription up by the topic itself). This hook runs once per delivery anyway: no extra work.
    const forward = hooks.authorizeForward
    const sentByQos = metrics.sentByQos
    hooks.authorizeForward = (client, packet) => {
      const out = forward ? forward(client, packet) : packet
      if (out) {
        let qos: number = packet.qos === 0 ? 0 : out.qos
        const sub = (client as unknown as { subscriptions?: Record<string, { qos?: number } | undefined> }).subscriptions?.[out.topic]
        if (sub && (sub.qos ?? 0) < qos) qos = sub.qos ?? 0
        sentByQos[qos] = (sentByQos[qos] ?? 0) + 1
      }
      return out
    }
    let mq: unknown
    if (config.redis.url) {
      // Dedicated connections: a subscriber connection cannot run other commands.
      const sub = newRedis(config.redis.url, 'mq-sub', this.log)
      // Auto-pipelining sends the PUBLISHes of one tick in one write, in order (one socket write
      // per message was 24% of a node's CPU on Redis; +12-15% relay throughput, measured by the
      // cluster benchmark).
      const pub = newRedis(config.redis.url, 'mq-pub', this.log, { enableAutoPipelining: true })
      const store = newRedis(config.redis.url, 'persistence', this.log)
      // Order matters: nodeAccess().persistenceRedis is the third.
      this.clusterRedis = [sub, pub, store]
      // One exact Redis channel per user tree instead of a pattern per subscription (routed-emitter.ts).
      const redisMq = routeByUser(mqemitterRedis({ subConn: sub, pubConn: pub }))
      // mqemitter-redis re-emits connection errors here; unhandled they would kill the process.
      // The connections themselves log outages (newRedis) and reconnect.
      redisMq.state.on('error', (err: Error) => this.log.debug({ err: err.message }, 'cluster emitter error'))
      mq = redisMq
      this.persistence = redisPersistence({ conn: store }) as unknown as Persistence
      this.queueLengths = redisQueueLengths(store)
    } else {
      mq = mqemitter({ concurrency: m.concurrency, matchEmptyLevels: true })
      this.persistence = aedesMemoryPersistence()
      this.queueLengths = memoryQueueLengths()
    }
    const notQueued = new Counter({
      name: 'parley_offline_queue_dropped_total',
      help: 'Messages not queued for a persistent session because its queue held mqtt.maxQueuedMessages',
      registers: [this.registry]
    })
    limitOfflineQueues(this.persistence, m.maxQueuedMessages, this.queueLengths, (ids) => {
      notQueued.inc(ids.length)
      this.log.debug({ clients: ids.length }, 'offline queue full: message not queued')
    })
    return {
      id: this.brokerId,
      mq,
      persistence: this.persistence,
      heartbeatInterval: m.heartbeatIntervalMs,
      connectTimeout: m.connectTimeoutMs,
      maxClientsIdLength: m.maxClientIdLength,
      concurrency: m.concurrency,
      maxTopicLevels: m.maxTopicLevels,
      ...hooks
    }
  }

  /**
   * The core's metrics (docs/grafana/README.md lists them). No series carries the node: Prometheus
   * adds `instance` to every series it scrapes, and parley_node_info maps an instance to its broker
   * id, node name and version (join on instance).
   */
  private coreMetrics() {
    const r = this.registry
    const aedes = () => this.aedes
    const { config } = this
    // Plain numbers on the per-message paths (qosCounter); index = QoS.
    const receivedByQos = [0, 0, 0]
    const sentByQos = [0, 0, 0]
    const listeners: ListenerName[] = [
      ...(config.listeners.tcp.enabled ? (['tcp'] as const) : []),
      ...(tlsListenerEnabled(config) ? (['tls'] as const) : []),
      ...(config.listeners.ws.enabled ? (['ws'] as const) : [])
    ]
    const clientsBy: Partial<Record<ListenerLabel, number>> = Object.fromEntries(listeners.map((l) => [l, 0]))
    const connectionsBy = new Counter({
      name: 'parley_mqtt_connections_total',
      help: 'MQTT clients that completed CONNECT (authenticated), by listener (tcp, tls, ws)',
      labelNames: ['listener'],
      registers: [r]
    })
    for (const l of listeners) connectionsBy.inc({ listener: l }, 0)
    new Gauge({
      name: 'parley_node_info',
      help: 'Always 1: which broker id, node name and version this scrape target (instance) is',
      labelNames: ['broker_id', 'node_name', 'version'],
      registers: [r]
    }).set({ broker_id: this.brokerId, node_name: config.nodeName ?? hostname(), version: this.opts.version ?? 'unknown' }, 1)
    return {
      receivedByQos,
      sentByQos,
      clientsBy,
      connectionsBy,
      received: qosCounter(r, 'parley_mqtt_messages_received_total', 'PUBLISH packets accepted from clients (after the publish checks), by QoS', receivedByQos),
      sent: qosCounter(r, 'parley_mqtt_messages_sent_total', 'PUBLISH packets handed to clients (live, forwarded or from the offline queue), by QoS as written', sentByQos),
      clients: new Gauge({
        name: 'parley_mqtt_clients',
        help: 'MQTT clients connected to this node now, by listener (tcp, tls, ws)',
        labelNames: ['listener'],
        registers: [r],
        collect() {
          for (const [listener, n] of Object.entries(clientsBy)) this.set({ listener }, n)
        }
      }),
      clientErrors: new Counter({ name: 'parley_client_errors_total', help: 'Client and connection errors (protocol errors, resets)', registers: [r] }),
      connectTimeouts: new Counter({
        name: 'parley_connect_timeouts_total',
        help: 'Sockets closed because no CONNECT arrived within mqtt.connectTimeoutMs',
        registers: [r]
      }),
      keepaliveTimeouts: new Counter({
        name: 'parley_keepalive_timeouts_total',
        help: 'Clients closed because they were silent for 1.5x their keepalive',
        registers: [r]
      }),
      hookDecisions: new Counter({
        name: 'parley_hook_denials_total',
        help: 'Plugin hook decisions against a client: deny (closed), reject (acknowledged), error and timeout (fail closed)',
        labelNames: ['hook', 'plugin', 'outcome'],
        registers: [r]
      }),
      connected: new Gauge({
        name: 'parley_connected_clients',
        help: 'MQTT clients connected to this node',
        registers: [r],
        collect() {
          this.set(aedes()?.connectedClients ?? 0)
        }
      })
    }
  }

  private wireEvents(aedes: Aedes, host: PluginHost, metrics: ReturnType<BrokerNode['coreMetrics']>): void {
    const log = this.log
    // The listener each counted client was added under: 'client' and 'clientDisconnect' come in
    // pairs for a registered client (Aedes's own connectedClients moves at the same places).
    const counted = new WeakMap<Client, ListenerLabel>()
    aedes.on('client', (client) => {
      const listener: ListenerLabel = listenerOf(client.conn) ?? 'other'
      counted.set(client, listener)
      metrics.clientsBy[listener] = (metrics.clientsBy[listener] ?? 0) + 1
      metrics.connectionsBy.inc({ listener })
    })
    aedes.on('clientReady', (client) => {
      if (client.clean) this.queueLengths?.cleared(client.id)
      void host.notify('clientReady', client)
    })
    aedes.on('clientDisconnect', (client) => {
      const listener = counted.get(client)
      if (listener !== undefined) {
        counted.delete(client)
        metrics.clientsBy[listener] = Math.max(0, (metrics.clientsBy[listener] ?? 1) - 1)
      }
      // The principal outlives the connection (it is weakly held): Aedes checks the will again
      // while closing, after this event.
      void host.notify('clientDisconnect', client)
    })
    aedes.on('ack', (packet, client) => {
      if (packet && !client.clean) this.queueLengths?.acked(client.id)
      if (host.hasHandlers('deliveryAck')) void host.notify('deliveryAck', client, packet)
    })
    aedes.on('subscribe', (subs, client) => {
      if (host.hasHandlers('subscribed')) void host.notify('subscribed', client, subs)
    })
    aedes.on('unsubscribe', (topics, client) => {
      if (host.hasHandlers('unsubscribed')) void host.notify('unsubscribed', client, topics)
    })
    aedes.on('publish', (packet, client) => {
      if (client) metrics.receivedByQos[packet.qos] = (metrics.receivedByQos[packet.qos] ?? 0) + 1
    })
    aedes.on('clientError', (client, err) => {
      metrics.clientErrors.inc()
      log.debug({ clientId: client.id, err: err.message }, 'client error')
    })
    aedes.on('connectionError', (client, err) => {
      metrics.clientErrors.inc()
      if (err.message === 'connect did not arrive in time') metrics.connectTimeouts.inc()
      log.debug({ clientId: client.id, err: err.message }, 'connection error')
    })
    aedes.on('keepaliveTimeout', (client) => {
      metrics.keepaliveTimeouts.inc()
      log.debug({ clientId: client.id }, 'keepalive timeout')
    })
    // Without a listener an 'error' event would crash the process.
    aedes.on('error' as 'closed', (err?: unknown) => log.error({ err }, 'broker error'))
  }

  /** Every node listens for deliveries to its own clients that other nodes asked for. */
  private async listenForDeliveries(aedes: Aedes): Promise<void> {
    const internals = aedes as unknown as AedesInternals
    await new Promise<void>((resolve) => {
      internals.mq.on<Partial<DeliverPacket>>(
        DELIVER_TOPIC,
        (packet, cb) => {
          cb()
          if (!isDeliverPacket(packet)) {
            this.log.warn('malformed internal delivery ignored')
            return
          }
          if (packet.origin === this.brokerId) return
          const client = internals.clients[packet.clientId]
          if (!client || client.closed) return
          const target = { ...packet.target, payload: Buffer.from(packet.payload) }
          this.deliverLocally(client, target).catch((err: Error) =>
            this.log.warn({ clientId: packet.clientId, err: err.message }, 'forwarded delivery failed')
          )
        },
        resolve
      )
    })
  }

  private async listenOnClusterChannels(aedes: Aedes): Promise<void> {
    const internals = aedes as unknown as AedesInternals
    for (const { topic, handler, plugin } of this.clusterHandlers) {
      await new Promise<void>((resolve) =>
        internals.mq.on<{ payload: Buffer; origin?: string }>(
          topic,
          (packet, cb) => {
            cb()
            const failed = (err: unknown) => this.log.error({ plugin, topic, err }, 'cluster channel handler failed')
            try {
              const result: unknown = handler(JSON.parse(Buffer.from(packet.payload).toString('utf8')) as unknown, String(packet.origin ?? ''))
              if (result instanceof Promise) result.catch(failed)
            } catch (err) {
              failed(err)
            }
          },
          resolve
        )
      )
    }
  }

  private clusterChannel(plugin: string): PluginContext['cluster'] {
    const topicOf = (channel: string) => {
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(channel)) throw new Error(`invalid cluster channel name "${channel}"`)
      return `${CLUSTER_PREFIX}${plugin}/${channel}`
    }
    return {
      broadcast: async (channel, data) => {
        if (data === undefined) throw new Error('cluster broadcast needs JSON-serialisable data, not undefined')
        const internals = this.requireAedes() as unknown as AedesInternals
        const packet = { topic: topicOf(channel), payload: Buffer.from(JSON.stringify(data)), origin: this.brokerId }
        await new Promise<void>((resolve, reject) => internals.mq.emit(packet, (err) => (err ? reject(err) : resolve())))
      },
      subscribe: (channel, handler) => {
        if (this.aedes) throw new Error('cluster channels must be subscribed during register()')
        this.clusterHandlers.push({ topic: topicOf(channel), handler, plugin })
      }
    }
  }

  /**
   * Sends to a client of this node. A client still in its CONNECT handshake is registered before
   * its CONNACK is written, so wait for 'connected': a PUBLISH before CONNACK breaks clients.
   */
  private async deliverLocally(
    client: Client,
    message: { topic: string; payload: Buffer; qos: 0 | 1; retain: boolean }
  ): Promise<void> {
    if (!client.connected) {
      const timeoutMs = this.config.mqtt.connectTimeoutMs
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          client.off('connected', onConnected)
          reject(new Error(`client did not finish connecting within ${timeoutMs} ms`))
        }, timeoutMs)
        const onConnected = () => {
          clearTimeout(timer)
          resolve()
        }
        client.once('connected', onConnected)
      })
    }
    await new Promise<void>((resolve, reject) =>
      client.publish({ cmd: 'publish', ...message, dup: false }, (err) => (err ? reject(err) : resolve()))
    )
  }

  private requireAedes(): Aedes {
    if (!this.aedes) throw new Error('the broker is not started yet')
    return this.aedes
  }

  async publish(message: PublishOptions): Promise<void> {
    const aedes = this.requireAedes()
    const packet = {
      cmd: 'publish',
      topic: message.topic,
      payload: typeof message.payload === 'string' ? Buffer.from(message.payload) : message.payload,
      qos: message.qos ?? 0,
      retain: message.retain ?? false,
      dup: false
    } as Packet
    await new Promise<void>((resolve, reject) => aedes.publish(packet, (err) => (err ? reject(err) : resolve())))
  }

  async deliver(clientId: string, message: PublishOptions): Promise<DeliveryRoute> {
    const aedes = this.requireAedes()
    const internals = aedes as unknown as AedesInternals
    const payload = typeof message.payload === 'string' ? Buffer.from(message.payload) : message.payload
    const qos = message.qos ?? 0
    const local = internals.clients[clientId]
    if (local && !local.closed) {
      await this.deliverLocally(local, { topic: message.topic, payload, qos, retain: message.retain ?? false })
      return 'local'
    }
    await new Promise<void>((resolve, reject) =>
      internals.mq.emit(
        {
          topic: DELIVER_TOPIC,
          payload,
          origin: this.brokerId,
          clientId,
          target: { topic: message.topic, qos, retain: message.retain ?? false }
        },
        (err) => (err ? reject(err) : resolve())
      )
    )
    return 'forwarded'
  }

  private pluginMetrics(): PluginMetrics {
    const registers = [this.registry]
    const prefixed = (name: string) => (name.startsWith('parley_') ? name : `parley_${name}`)
    return {
      registry: this.registry,
      counter: (c) => new Counter({ ...c, name: prefixed(c.name), registers }),
      gauge: (c) => new Gauge({ ...c, name: prefixed(c.name), registers }),
      histogram: (c) => new Histogram({ ...c, name: prefixed(c.name), registers })
    }
  }

  private contextFor(plugin: ParleyPlugin, pluginConfig: unknown): PluginContext {
    const host = this.host!
    const declared = new Set(plugin.dependencies ?? [])
    return {
      name: plugin.name,
      config: pluginConfig,
      log: this.log.child({ plugin: plugin.name }),
      brokerId: this.brokerId,
      hookTimeoutMs: this.config.mqtt.hookTimeoutMs,
      publishTimeoutMs: this.config.mqtt.publishTimeoutMs,
      dataDir: resolve(this.config.dataDir),
      backends: this.backends!.backends,
      metrics: this.pluginMetrics(),
      hook: (name: HookName, handler) => host.add(plugin.name, name, handler),
      publish: (message) => this.publish(message),
      deliver: (clientId, message) => this.deliver(clientId, message),
      route: (options) => {
        this.ops!.route(options)
      },
      cluster: this.clusterChannel(plugin.name),
      admin: {
        route: (route) => this.adminApi!.route(route),
        handle: (name, handler) => this.clusterQuery!.handle(`${plugin.name}.${name}`, handler),
        ask: (name, args, options) => this.clusterQuery!.ask(`${plugin.name}.${name}`, args, options),
        userFacet: (name, describe) => this.userFacets.add(name, describe)
      },
      readiness: (name, check) => {
        this.extraChecks.set(`${plugin.name}:${name}`, check)
      },
      principal: (client) => host.principal(client),
      dependency: (name) => {
        if (!declared.has(name)) {
          throw new Error(`plugin "${plugin.name}" uses "${name}" without declaring it as a dependency`)
        }
        return host.api(name) as never
      }
    }
  }

  private readinessChecks(): Map<string, () => Promise<void>> {
    const checks = new Map(this.backends?.checks ?? [])
    if (this.config.redis.url) {
      checks.set('cluster', async () => {
        const down = this.clusterRedis.filter((c) => c.status !== 'ready')
        if (down.length) throw new Error(`${down.length} cluster connection(s) not ready`)
        if (!this.aedes) throw new Error('broker not started')
      })
    }
    for (const [k, v] of this.extraChecks) checks.set(k, v)
    return checks
  }

  private nodeRecord(): NodeRecord {
    return {
      brokerId: this.brokerId,
      nodeName: this.config.nodeName ?? hostname(),
      host: hostname(),
      pid: process.pid,
      startedAt: this.startedAt,
      lastHeartbeat: Date.now(),
      clients: this.connectedClients,
      accepting: this.accepting,
      listeners: this.addresses()
    }
  }

  /**
   * Rolling restarts: disconnects this node's clients at shutdown.drainRatePerSecond, so they
   * reconnect through the load balancer to the other nodes in a spread-out stream rather than a
   * storm; returns when none is left or the drain time is over (the rest are closed with Aedes).
   * MQTT 3.1.1 has no "move to another server" packet: closing the connection is the request.
   */
  private async drain(aedes: Aedes): Promise<void> {
    const { drainMs, drainRatePerSecond, timeoutMs } = this.config.shutdown
    const deadline = Date.now() + Math.min(drainMs, timeoutMs / 2)
    const internals = aedes as unknown as AedesInternals
    const tickMs = 100
    const perTick = Math.max(1, Math.round((drainRatePerSecond * tickMs) / 1000))
    let moved = 0
    while (Date.now() < deadline) {
      const open = Object.values(internals.clients).filter((c): c is Client => Boolean(c && !c.closed))
      if (!open.length) break
      for (const client of open.slice(0, perTick)) client.close()
      moved += Math.min(perTick, open.length)
      if (open.length <= perTick) break
      await new Promise((r) => setTimeout(r, tickMs))
    }
    if (moved) this.log.info({ moved, left: aedes.connectedClients }, 'drained')
  }

  /** Graceful stop. Idempotent: a second call returns the first call's promise. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop()
    return this.stopping
  }

  private async doStop(): Promise<void> {
    const log = this.log
    this.accepting = false
    log.info('stopping: no new connections')
    for (const l of this.listeners) l.stopAccepting()
    await this.clusterView?.report().catch(() => undefined) // operators see "not accepting" at once
    const aedes = this.aedes
    if (aedes) await this.drain(aedes)
    await this.clusterView?.leave().catch((err: unknown) => log.debug({ err }, 'cluster record not removed'))
    if (aedes) {
      log.info({ clients: aedes.connectedClients }, 'closing clients')
      await new Promise<void>((resolve) => aedes.close(() => resolve()))
    }
    log.debug('stop: aedes closed')
    await Promise.allSettled(this.listeners.map((l) => l.close()))
    log.debug('stop: listeners closed')
    // clientDisconnect handlers of the clients just closed finish before plugins shut down.
    await this.host?.settle()
    await this.host?.shutdown()
    log.debug('stop: plugins shut down')
    const persistence = this.persistence
    if (persistence) await persistence.destroy().catch((err: unknown) => log.warn({ err }, 'persistence destroy failed'))
    log.debug('stop: persistence destroyed')
    for (const c of this.clusterRedis) c.disconnect()
    await this.adminKeys?.close().catch(() => undefined)
    await this.backends?.close()
    log.debug('stop: backends closed')
    await this.ops?.close()
    log.info('stopped')
  }
}
