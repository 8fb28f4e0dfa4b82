// parley admin push
import type { Command } from 'commander'

export function registerPushCommands(_admin: Command): void {
  // commands are added here
}
