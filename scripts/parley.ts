#!/usr/bin/env node
// The `parley` command: start a node, show the effective configuration.
import { dirname, resolve } from 'node:path'
import { readFileSync } from 'node:fs'
import { Command, CommanderError } from 'commander'
import { formatProblems, loadConfig, redactConfig } from '../broker/config.js'
import { createLogger } from '../broker/logger.js'
import { BrokerNode } from '../broker/node.js'
import type { Config } from '../schemas/config.js'
import { mintDeviceToken } from '../plugins/auth-jwt/mint.js'
import { registerAdminCommands } from './admin/index.js'

/** Exit codes, documented in the README. */
export const EXIT = { ok: 0, failure: 1, usage: 2, config: 78 } as const

function configOrExit(file: string | undefined): { config: Config; baseDir: string } {
  const result = loadConfig({ file })
  if (!result.ok) {
    process.stderr.write(formatProblems(result.problems) + '\n')
    process.exit(EXIT.config)
  }
  const source = file ?? process.env.PARLEY_CONFIG
  return { config: result.config, baseDir: source ? dirname(resolve(source)) : process.cwd() }
}

async function start(options: { config?: string }): Promise<void> {
  const { config, baseDir } = configOrExit(options.config)
  const log = createLogger(config.log.level)
  const node = new BrokerNode({
    config,
    log,
    baseDir,
    version: packageVersion(),
    // Drained through the admin API: stop as on SIGTERM (drain, stop, exit 0).
    onStopRequested: () => onSignal('SIGTERM')
  })

  let signals = 0
  const onSignal = (signal: NodeJS.Signals) => {
    signals++
    if (signals > 1) {
      log.warn({ signal }, 'second signal: exiting now')
      process.exit(EXIT.failure)
    }
    log.info({ signal }, 'graceful stop requested')
    const timer = setTimeout(() => {
      log.error({ timeoutMs: config.shutdown.timeoutMs }, 'graceful stop timed out: exiting anyway')
      process.exit(EXIT.failure)
    }, config.shutdown.timeoutMs)
    timer.unref()
    node.stop().then(
      () => process.exit(EXIT.ok),
      (err: unknown) => {
        log.error({ err }, 'error while stopping')
        process.exit(EXIT.failure)
      }
    )
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)

  try {
    await node.start()
  } catch (err) {
    log.fatal({ err }, 'cannot start')
    await node.stop().catch(() => undefined)
    process.exit(EXIT.failure)
  }
}

/** The version from package.json (found from the sources and from dist/). */
function packageVersion(): string {
  for (const up of ['..', '../..']) {
    try {
      const pkg = JSON.parse(readFileSync(resolve(import.meta.dirname, up, 'package.json'), 'utf8')) as { name?: string; version?: string }
      if (pkg.name === 'parley' && pkg.version) return pkg.version
    } catch {
      // not there; try one level up
    }
  }
  return 'unknown'
}

export function buildProgram(): Command {
  const program = new Command()
    .name('parley')
    .description('Parley: an MQTT messaging broker for mobile chat')
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride()

  program
    .command('start')
    .description('run a broker node (embedded defaults unless configured otherwise)')
    .option('-c, --config <file>', 'YAML or JSON configuration file (also PARLEY_CONFIG)')
    .action(start)

  program
    .command('token')
    .description('mint a device token (HS256, the configured secret) for development and operations')
    .argument('<userId>', 'the user (token subject)')
    .option('-d, --device <id>', 'bind the token to this device id (claim did)')
    .option('-t, --ttl <duration>', 'lifetime, e.g. 90s, 15m, 1h, 7d', '1h')
    .option('-c, --config <file>', 'YAML or JSON configuration file (also PARLEY_CONFIG)')
    .action(async (userId: string, options: { device?: string; ttl: string; config?: string }) => {
      const { config } = configOrExit(options.config)
      try {
        const token = await mintDeviceToken(config, { userId, deviceId: options.device, ttl: options.ttl })
        process.stdout.write(token + '\n')
      } catch (err) {
        process.stderr.write(`parley token: ${(err as Error).message}\n`)
        process.exit(EXIT.usage)
      }
    })

  const admin = program
    .command('admin')
    .description('operate a running cluster through the admin API of a node (docs/operations.md)')
  registerAdminCommands(admin)

  program
    .command('config')
    .description('print the effective configuration, secrets redacted, and exit')
    .option('-c, --config <file>', 'YAML or JSON configuration file (also PARLEY_CONFIG)')
    .action((options: { config?: string }) => {
      const { config } = configOrExit(options.config)
      process.stdout.write(JSON.stringify(redactConfig(config), null, 2) + '\n')
    })

  return program
}

async function main(): Promise<void> {
  try {
    await buildProgram().parseAsync(process.argv)
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exit(err.exitCode === 0 ? EXIT.ok : EXIT.usage)
    }
    throw err
  }
}

await main()
