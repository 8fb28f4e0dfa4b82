// parley admin clients
import type { Command } from 'commander'

export function registerClientsCommands(_admin: Command): void {
  // commands are added here
}
