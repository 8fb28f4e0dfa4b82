// parley admin messages
import type { Command } from 'commander'

export function registerMessagesCommands(_admin: Command): void {
  // commands are added here
}
