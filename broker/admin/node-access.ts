// What the core admin routes may reach inside a node: its Aedes instance (clients, persistence),
// the cluster view, its configuration and metrics, and its stop. Kept to one interface so the
// routes stay testable and the node's internals stay private to node.ts.
import type { Aedes, Client } from 'aedes'
import type { Redis } from 'ioredis'
import type { Registry } from 'prom-client'
import type { Config } from '../../schemas/config.js'
import type { NodeRecord } from '../cluster-view.js'
import type { PluginHost } from '../plugin-host.js'

export interface NodeAccess {
  readonly brokerId: string
  readonly config: Config
  readonly registry: Registry
  readonly version: string
  aedes(): Aedes
  /** This node's connected (and connecting) clients by id. */
  clients(): Record<string, Client | undefined>
  /** Aedes's persistence (memory or Redis): sessions, subscriptions, retained messages, offline queues. */
  persistence(): AdminPersistence
  /** The persistence's Redis connection (a command connection), when the node runs over Redis. */
  persistenceRedis(): Redis | undefined
  host(): PluginHost
  nodes(): Promise<NodeRecord[]>
  /** Readiness of each backend on this node. */
  readiness(): Promise<{ ready: boolean; checks: Record<string, { ok: boolean; ms: number; error?: string }> }>
  /** Starts this node's graceful stop (drain, then exit): answers at once. */
  requestStop(reason: string): void
}

/** The parts of the aedes-persistence interface the admin routes use (memory and Redis alike). */
export interface AdminPersistence {
  subscriptionsByClient(client: { id: string }): Promise<Array<{ topic: string; qos: number }> | null>
  addSubscriptions(client: { id: string }, subs: Array<{ topic: string; qos: number }>): Promise<unknown>
  removeSubscriptions(client: { id: string }, topics: string[]): Promise<unknown>
  /** Drops every stored subscription of a client (with Redis, its offline queue too). */
  cleanSubscriptions(client: { id: string }): Promise<unknown>
  createRetainedStreamCombi(patterns: string[]): AsyncIterable<{ topic: string; payload: Buffer; qos: number }>
  storeRetained(packet: { topic: string; payload: Buffer; qos: number; retain: boolean; cmd: 'publish' }): Promise<unknown>
  outgoingStream(client: { id: string }): AsyncIterable<unknown>
}
