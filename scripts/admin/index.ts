// `parley admin`: every command group, each in its own file.
import type { Command } from 'commander'
import { registerClusterCommands } from './cluster.js'

export function registerAdminCommands(admin: Command): void {
  registerClusterCommands(admin)
}
