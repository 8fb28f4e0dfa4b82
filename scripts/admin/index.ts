// `parley admin`: every command group, each in its own file.
import type { Command } from 'commander'
import { registerClientsCommands } from './clients.js'
import { registerClusterCommands } from './cluster.js'
import { registerGroupsCommands } from './groups.js'
import { registerMessagesCommands } from './messages.js'
import { registerMetricsCommands } from './metrics.js'
import { registerPushCommands } from './push.js'
import { registerUsersCommands } from './users.js'

export function registerAdminCommands(admin: Command): void {
  registerClusterCommands(admin)
  registerClientsCommands(admin)
  registerUsersCommands(admin)
  registerGroupsCommands(admin)
  registerMessagesCommands(admin)
  registerPushCommands(admin)
  registerMetricsCommands(admin)
}
