// parley admin groups
import type { Command } from 'commander'

export function registerGroupsCommands(_admin: Command): void {
  // commands are added here
}
