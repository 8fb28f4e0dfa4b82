// parley admin push test | tokens (the push plugin's admin routes: plugins/push/admin.ts)
import type { Command } from 'commander'
import { ADMIN_EXIT } from './client.js'
import { action, requireId, show, withCommon } from './kit.js'
import { table, when } from './output.js'

interface TestResult {
  device: string
  provider: 'apns' | 'fcm'
  via: 'apns' | 'fcm' | 'log'
  ok: boolean
  id?: string
  status?: number
  reason?: string
  removed?: boolean
}

interface PushResult {
  at: number
  ok: boolean
  via: string
  type: string
  status?: number
  reason?: string
}

export interface PushDevice {
  device: string
  platform: string
  provider: 'apns' | 'fcm'
  via: 'apns' | 'fcm' | 'log'
  token: string
  tokenLength: number
  app?: string
  environment?: string
  locale?: string
  previews: boolean
  createdAt?: number
  updatedAt: number
  lastResult?: PushResult
}

/** One line per device, as `parley admin push test` printed before the admin API. */
export function testLine(user: string, r: TestResult): string {
  const via = r.via === r.provider ? r.provider : `${r.provider} (${r.via}: no ${r.provider} credentials configured)`
  const answer = r.ok ? `accepted${r.status ? ` ${r.status}` : ''}${r.id ? ` id=${r.id}` : ''}` : `refused${r.status ? ` ${r.status}` : ''} ${r.reason ?? ''}`.trim()
  return `${user}:${r.device}  ${via}  ${answer}${r.removed ? '  (dead token: registration removed)' : ''}`
}

/** "accepted 200 (message, 2026-01-01T10:00:00Z)", "refused 410 Unregistered (test, ...)". */
export function lastResultText(r: PushResult | undefined): string {
  if (!r) return '-'
  const answer = r.ok ? `accepted${r.status ? ` ${r.status}` : ''}` : `refused${r.status ? ` ${r.status}` : ''}${r.reason ? ` ${r.reason}` : ''}`
  return `${answer} (${r.type}${r.via === 'log' ? ', logged' : ''}, ${when(r.at)})`
}

/** The devices table (push tokens, and the push section of users show). */
export function devicesTable(devices: PushDevice[]): string {
  return table(
    ['device', 'platform', 'provider', 'token', 'app', 'created', 'updated', 'last result'],
    devices.map((d) => [
      d.device,
      d.platform,
      `${d.provider}${d.environment ? ` ${d.environment}` : ''}${d.via !== d.provider ? ` (via ${d.via})` : ''}`,
      d.token,
      d.app,
      when(d.createdAt),
      when(d.updatedAt),
      lastResultText(d.lastResult)
    ])
  )
}

export function registerPushCommands(admin: Command): void {
  const push = admin.command('push').description('push notifications: test sends, registered devices')

  withCommon(push.command('test'))
    .description("send a test notification to a user's registered devices (or one) now and print each provider's answer; exit 1 when a device refused it, 3 when there is no registration (operator scope)")
    .argument('<user>', 'the user')
    .option('-d, --device <id>', 'only this device')
    .action(
      action('push test', async (ctx, user: string, options: { device?: string }) => {
        requireId('user', user)
        if (options.device !== undefined) requireId('device', options.device)
        const answer = await ctx.client.request<{ user: string; results: TestResult[] }>('POST', '/push/test', {
          body: { user, ...(options.device !== undefined ? { device: options.device } : {}) }
        })
        show(ctx, answer, () => answer.results.map((r) => testLine(user, r)).join('\n'))
        if (!answer.results.every((r) => r.ok)) process.exitCode = ADMIN_EXIT.failure
      })
    )

  withCommon(push.command('tokens'))
    .description("a user's registered push devices: platform, provider, token (abbreviated), app, created, updated, and the last push's result (operator scope)")
    .argument('<user>', 'the user')
    .action(
      action('push tokens', async (ctx, user: string) => {
        requireId('user', user)
        const answer = await ctx.client.request<{ user: string; devices: PushDevice[] }>('GET', '/push/tokens', { query: { user } })
        if (!ctx.json && !answer.devices.length) {
          ctx.note(`${user} has no registered push devices`)
          return
        }
        show(ctx, answer, () => devicesTable(answer.devices))
      })
    )
}
