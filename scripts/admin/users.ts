// parley admin users
import type { Command } from 'commander'

export function registerUsersCommands(_admin: Command): void {
  // commands are added here
}
