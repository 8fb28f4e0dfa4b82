// Admin route of the metrics snapshot (parley admin metrics): the key counters of every node.
import type { AdminApi } from './api.js'
import type { ClusterQuery } from './cluster-query.js'
import type { NodeAccess } from './node-access.js'

export function registerMetricsRoutes(_api: AdminApi, _query: ClusterQuery, _node: NodeAccess): void {
  // routes are added here
}
