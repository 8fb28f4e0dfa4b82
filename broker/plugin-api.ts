// The typed contract between the broker core and its plugins.
// Modelled on Fastify (a plugin has a name, declared dependencies and a register function)
// and on EMQX / VerneMQ / Mosquitto hook lists (a flat list of events a plugin takes part in).
import type {
  AedesPublishPacket,
  Client,
  ConnectPacket,
  PublishPacket,
  PubrelPacket,
  Subscription
} from 'aedes'
import type { RouteOptions } from 'fastify'
import type { Redis } from 'ioredis'
import type { Client as MinioClient } from 'minio'
import type { Db } from 'mongodb'
import type { Counter, CounterConfiguration, Gauge, GaugeConfiguration, Histogram, HistogramConfiguration, Registry } from 'prom-client'
import type { z } from 'zod'
import type { AdminRoute } from './admin/api.js'
import type { GatherResult } from './admin/cluster-query.js'
import type { Logger } from './logger.js'

/** What a plugin declares on the admin API (docs/operations.md). */
export interface AdminContext {
  /** Adds a route below /admin/v1 (during register()). */
  route<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType, R extends z.ZodType>(route: AdminRoute<P, Q, B, R>): void
  /** Answers the cluster-wide admin query `name` (scoped to this plugin) on this node (during register()). */
  handle(name: string, handler: (args: unknown) => Promise<unknown>): void
  /** Asks every live node (or only `node`) the query `name` of this plugin; waits at most admin.queryTimeoutMs. */
  ask<T>(name: string, args: unknown, options?: { node?: string }): Promise<GatherResult<T>>
  /**
   * Adds a section to `GET /admin/v1/users/:user` (parley admin users show): what this plugin knows
   * about the user (its groups, presence, push devices...). Called once per request, on the node
   * answering; a throw shows as { error } in that section.
   */
  userFacet(name: string, describe: (user: string) => Promise<unknown>): void
}

export type Awaitable<T> = T | Promise<T>

/** CONNACK return codes of MQTT 3.1.1 that a plugin may answer with. */
export const ConnackCode = {
  IdentifierRejected: 2,
  ServerUnavailable: 3,
  BadUsernameOrPassword: 4,
  NotAuthorized: 5
} as const
export type ConnackCode = (typeof ConnackCode)[keyof typeof ConnackCode]

/**
 * Acknowledge a client's publish but deliver it nowhere, and tell the client why
 * (through the publishRejected hook). For permanent refusals: the client must not retry.
 */
export interface PublishRejection {
  /** A stable, documented code, e.g. `forbidden`, `invalid_payload`, `rate_limited`. */
  reject: string
  /** A human explanation. */
  message: string
  /** For temporary refusals (rate limits): when the client may try again. */
  retryAfterMs?: number
}

export interface PublishContext {
  /**
   * True when the packet is the client's will being checked at CONNECT: decide whether it may be
   * published later, but act on nothing (no side effects, no rate accounting).
   */
  will: boolean
}

/** Who a connection is, as established by the authenticate chain. */
export interface Principal {
  /** Stable subject (for chat: the user id). */
  subject: string
  /** True when no plugin vouched for the client and anonymous access let it in. */
  anonymous: boolean
  /** Facts the authenticating plugin wants later hooks to see (device id, roles, expiry...). */
  attributes: Readonly<Record<string, unknown>>
}

export type AuthenticateResult =
  | { ok: true; principal: Omit<Principal, 'anonymous'> }
  | { ok: false; code: ConnackCode; reason: string }

export interface Credentials {
  username: string | undefined
  password: Buffer | undefined
}

/**
 * Every hook a plugin may take part in, with what it may change.
 * Handlers of one hook run one after another in plugin load order (see docs/plugins.md).
 */
export interface HookHandlers {
  /** A CONNECT arrived, before authentication. Throw to drop the socket without CONNACK (cheap refusals). */
  connect: (client: Client, packet: ConnectPacket) => Awaitable<void>
  /**
   * Decide who the client is. The first handler that returns a result decides; undefined passes to the next.
   * A throw refuses with CONNACK 3 (server unavailable): fail closed.
   */
  authenticate: (client: Client, credentials: Credentials) => Awaitable<AuthenticateResult | undefined>
  /**
   * May the client publish this packet? Two answers besides passing (undefined/true):
   * - a PublishRejection: the publish is acknowledged (PUBACK) but delivered nowhere, and
   *   publishRejected runs so the client can be told why; the right answer for permanent errors;
   * - false, or a throw: Aedes closes the client, the only refusal MQTT 3.1.1 has; the client
   *   retries after reconnecting, so use it for transient failures (a store that is down);
   * The handler may rewrite packet.payload; the next handlers see the rewrite.
   */
  authorizePublish: (client: Client, packet: PublishPacket, context: PublishContext) => Awaitable<boolean | void | PublishRejection>
  /** A publish was rejected with a PublishRejection; `packet` has its original topic. Errors are logged only. */
  publishRejected: (client: Client, packet: PublishPacket, rejection: PublishRejection & { plugin: string }) => Awaitable<void>
  /**
   * May the client subscribe? Return null to deny (SUBACK 0x80), a subscription to replace it
   * (e.g. a lower QoS), or undefined to keep it. A throw denies.
   */
  authorizeSubscribe: (client: Client, subscription: Subscription) => Awaitable<Subscription | null | void>
  /**
   * Synchronous, once per recipient of every message: return null to drop it for this client,
   * a packet to send instead, or undefined to keep it. A throw drops.
   */
  authorizeForward: (client: Client, packet: AedesPublishPacket) => AedesPublishPacket | null | void
  /** A message was handed to the emitter (after QoS 1 PUBACK bookkeeping). Errors are logged only. */
  published: (packet: AedesPublishPacket, client: Client | null) => Awaitable<void>
  /** CONNACK was sent and the offline queue flushed. */
  clientReady: (client: Client) => Awaitable<void>
  /** The client's connection ended (any reason, including takeover). */
  clientDisconnect: (client: Client) => Awaitable<void>
  /** A subscriber acknowledged a QoS 1/2 delivery (PUBACK / PUBCOMP). */
  deliveryAck: (client: Client, packet: PublishPacket | PubrelPacket | undefined) => Awaitable<void>
  /** A SUBSCRIBE was answered. Refused filters are included with qos 128. */
  subscribed: (client: Client, subscriptions: Subscription[]) => Awaitable<void>
  /** Topics were unsubscribed. */
  unsubscribed: (client: Client, topics: string[]) => Awaitable<void>
  /** The node is stopping and clients are gone: flush and close what the plugin owns. Runs in reverse load order. */
  shutdown: () => Awaitable<void>
}
export type HookName = keyof HookHandlers

/** Connections to the real backends, present only when configured. */
export interface Backends {
  /** A general-purpose Redis connection (separate from the MQTT emitter's and persistence's). */
  redis?: Redis
  /** Prefix for every key a plugin writes to that Redis (config redis.keyPrefix). */
  redisKeyPrefix: string
  /** The configured MongoDB database. */
  mongo?: Db
  /** The S3 / MinIO client and the configured bucket. */
  s3?: {
    client: MinioClient
    bucket: string
    /** Signs URLs for devices when they reach the store at another address (s3.publicEndpoint). */
    presignClient?: MinioClient
  }
}

export interface PluginMetrics {
  registry: Registry
  /** Metric names are prefixed with `parley_` and labelled with nothing implicit. */
  counter<L extends string>(config: CounterConfiguration<L>): Counter<L>
  gauge<L extends string>(config: GaugeConfiguration<L>): Gauge<L>
  histogram<L extends string>(config: HistogramConfiguration<L>): Histogram<L>
}

/** Where deliver() handed the packet. */
export type DeliveryRoute = 'local' | 'forwarded'

export interface PublishOptions {
  topic: string
  payload: Buffer | string
  qos?: 0 | 1
  retain?: boolean
}

export interface ClusterChannel {
  /** Sends JSON-serialisable data to every node's subscribers of this channel. Only after start. */
  broadcast(channel: string, data: unknown): Promise<void>
  /** Receives what any node broadcasts on this channel. Register during register(). */
  subscribe(channel: string, handler: (data: unknown, fromBrokerId: string) => void): void
}

/**
 * The APIs plugins expose to the plugins that depend on them. A plugin adds its own by
 * declaration merging: `declare module '../../broker/plugin-api.js' { interface PluginApis { myname: MyApi } }`.
 */
// eslint-disable-next-line @typescript-eslint/no-empty-object-type
export interface PluginApis {}

export interface PluginContext<Config = unknown> {
  readonly name: string
  /** This plugin's section of the configuration, validated by its schema. */
  readonly config: Config
  readonly log: Logger
  /** How long a decision hook (connect, authenticate, authorizeSubscribe) may take before it is denied. */
  readonly hookTimeoutMs: number
  /**
   * How long authorizePublish may take before the publisher is disconnected without a PUBACK. It is
   * longer than hookTimeoutMs because a publish check may store the message: while the store is
   * slow, publishers wait (their sockets are not read) instead of being disconnected and resending.
   */
  readonly publishTimeoutMs: number
  /** The unique id of this broker process (changes at every start). */
  readonly brokerId: string
  /** Directory where embedded stores keep their files. */
  readonly dataDir: string
  readonly backends: Backends
  readonly metrics: PluginMetrics
  /** Take part in a hook. Handlers run in plugin load order, then registration order. */
  hook<K extends HookName>(name: K, handler: HookHandlers[K]): void
  /** Publish a message as the broker (no client): it goes through the cluster like any publish. */
  publish(message: PublishOptions): Promise<void>
  /** Send a message to one client wherever it is connected in the cluster; no offline queueing. */
  deliver(clientId: string, message: PublishOptions): Promise<DeliveryRoute>
  /** Add a route to the operations HTTP listener (Fastify route options). */
  route(options: RouteOptions): void
  /** Messages between the nodes of the cluster (every node, this one included), scoped to this plugin. */
  readonly cluster: ClusterChannel
  /** The admin API: routes and cluster-wide queries. */
  readonly admin: AdminContext
  /** Add a readiness check: /readyz fails while it throws. */
  readiness(name: string, check: () => Promise<void>): void
  /** Who a connected client is (set by the authenticate chain). */
  principal(client: Client): Principal | undefined
  /** The API of a plugin this one declared as a dependency. */
  dependency<K extends keyof PluginApis>(name: K): PluginApis[K]
}

export interface ParleyPlugin<Schema extends z.ZodType = z.ZodType, Api = unknown> {
  /** Unique name; also the key of its configuration section. */
  name: string
  /** Names of plugins that must be loaded (and registered) before this one. */
  dependencies?: readonly string[]
  /** Schema of the plugin's configuration; its defaults apply when the section is absent. */
  configSchema?: Schema
  /** Wire the plugin into the node. What it returns is its API for dependants. */
  register(ctx: PluginContext<z.output<Schema>>): Awaitable<Api | void>
}

/** Identity helper that keeps a plugin's types precise. */
export function definePlugin<Schema extends z.ZodType, Api = unknown>(
  plugin: ParleyPlugin<Schema, Api>
): ParleyPlugin<Schema, Api> {
  return plugin
}
