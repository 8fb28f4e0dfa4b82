// What every `parley admin` command shares: the common options (--url, --key, --config, --json,
// --timeout), the client they make, and one way to end (output, or a message and an exit code).
import type { Command } from 'commander'
import { formatProblems, loadConfig } from '../../broker/config.js'
import { loadBootstrapSecret } from '../../broker/admin/bootstrap.js'
import type { Config } from '../../schemas/config.js'
import { ADMIN_EXIT, AdminClient, CliError, opsUrl } from './client.js'

export interface CommonOptions {
  url?: string
  key?: string
  config?: string
  json?: boolean
  timeout?: string
}

export interface AdminRun {
  client: AdminClient
  json: boolean
  config: Config
  /** Prints to stdout. */
  out(text: string): void
  /** Prints progress or notes to stderr (never in the way of --json output). */
  note(text: string): void
}

/** Adds the common options to a command that talks to a node. */
export function withCommon(cmd: Command): Command {
  return cmd
    .option('-u, --url <url>', "the node's operations listener (default: PARLEY_ADMIN_URL, else listeners.ops of the configuration)")
    .option('-k, --key <key>', 'admin API key (default: PARLEY_ADMIN_KEY)')
    .option('-c, --config <file>', 'YAML or JSON configuration file (also PARLEY_CONFIG)')
    .option('--json', 'print the API answer as JSON, for scripts')
    .option('--timeout <ms>', 'how long to wait for the node', '30000')
}

function loadOrThrow(file: string | undefined): Config {
  const result = loadConfig({ file })
  if (!result.ok) throw new CliError(ADMIN_EXIT.config, `invalid configuration:\n${formatProblems(result.problems)}`)
  return result.config
}

/**
 * Wraps a command's action: builds the client from the common options, runs it, and turns a
 * CliError into its message on stderr and its exit code. `bootstrap` lets the bootstrap secret
 * stand in for a key (key management only).
 */
export function action<Args extends unknown[]>(
  name: string,
  run: (ctx: AdminRun, ...args: Args) => Promise<void>,
  options: { bootstrap?: boolean } = {}
): (...args: unknown[]) => Promise<void> {
  return async (...raw: unknown[]) => {
    const cmd = raw[raw.length - 1] as Command
    const opts = cmd.optsWithGlobals<CommonOptions>()
    try {
      const config = loadOrThrow(opts.config)
      const timeoutMs = Number(opts.timeout ?? 30000)
      if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new CliError(ADMIN_EXIT.usage, '--timeout: expected a positive number of milliseconds')
      let key = opts.key ?? process.env.PARLEY_ADMIN_KEY
      if (!key && options.bootstrap) key = process.env.PARLEY_ADMIN_BOOTSTRAP_SECRET ?? loadBootstrapSecret(config, { create: false })
      const client = new AdminClient(opts.url ?? process.env.PARLEY_ADMIN_URL ?? opsUrl(config), key, timeoutMs)
      const ctx: AdminRun = {
        client,
        json: Boolean(opts.json),
        config,
        out: (text) => process.stdout.write(text.endsWith('\n') ? text : `${text}\n`),
        note: (text) => process.stderr.write(text.endsWith('\n') ? text : `${text}\n`)
      }
      // Commander passes positional arguments first, then the options object and the command.
      await run(ctx, ...(raw.slice(0, -1) as Args))
    } catch (err) {
      if (err instanceof CliError) {
        process.stderr.write(`parley admin ${name}: ${err.message}\n`)
        process.exitCode = err.exitCode
        return
      }
      process.stderr.write(`parley admin ${name}: ${(err as Error).stack ?? String(err)}\n`)
      process.exitCode = ADMIN_EXIT.failure
    }
  }
}

/** Checks a positional id locally, before any request: ids are 1-64 characters of A-Z a-z 0-9 _ -. */
export function requireId(what: string, value: string): string {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(value)) throw new CliError(ADMIN_EXIT.usage, `${what} "${value}": expected 1-64 characters of A-Z a-z 0-9 _ -`)
  return value
}

/** Prints JSON or the human rendering. */
export function show(ctx: AdminRun, data: unknown, human: () => string): void {
  ctx.out(ctx.json ? JSON.stringify(data, null, 2) : human())
}
