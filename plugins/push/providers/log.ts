// The embedded default: no credentials, so pushes are written to the log instead of sent. What
// would be sent is logged at debug level (it may hold a preview); info shows only ids.
import type { Logger } from '../../../broker/logger.js'
import { apnsRequest, fcmRequest } from '../payload.js'
import type { Notice, PushProvider, Registration, SendOutcome } from '../types.js'

export class LogProvider implements PushProvider {
  readonly name = 'log' as const
  constructor(private readonly log: Logger) {}

  async send(registration: Registration, notice: Notice): Promise<SendOutcome> {
    const device = `${registration.user}:${registration.device}`
    this.log.info({ device, provider: registration.provider, type: notice.type, messageId: notice.messageId, count: notice.count, badge: notice.badge }, 'push (logged, not sent: no credentials for this provider)')
    this.log.debug({ device, request: registration.provider === 'apns' ? apnsRequest(notice) : fcmRequest(notice) }, 'push request')
    return { ok: true, id: `logged-${Date.now()}` }
  }

  async close(): Promise<void> {}
}
