// Admin routes of MQTT clients and sessions: clients list/show/kick, sessions (offline queues),
// subscriptions list/add/remove, retained list/clean.
import type { AdminApi } from './api.js'
import type { ClusterQuery } from './cluster-query.js'
import type { NodeAccess } from './node-access.js'

export function registerSessionRoutes(_api: AdminApi, _query: ClusterQuery, _node: NodeAccess): void {
  // routes are added here
}
