// parley admin metrics
import type { Command } from 'commander'

export function registerMetricsCommands(_admin: Command): void {
  // commands are added here
}
