// Built-in plugins by name. Each is imported only when configured.
import type { ParleyPlugin } from '../broker/plugin-api.js'

type Loader = () => Promise<ParleyPlugin>

const load =
  (importer: () => Promise<{ default: unknown }>): Loader =>
  async () =>
    (await importer()).default as ParleyPlugin

export const builtinPlugins: Readonly<Record<string, Loader>> = {
  'auth-jwt': load(() => import('./auth-jwt/index.js')),
  limits: load(() => import('./limits/index.js')),
  protocol: load(() => import('./protocol/index.js')),
  groups: load(() => import('./groups/index.js')),
  messages: load(() => import('./messages/index.js')),
  presence: load(() => import('./presence/index.js')),
  push: load(() => import('./push/index.js')),
  media: load(() => import('./media/index.js')),
  'example-topic-guard': load(() => import('./example-topic-guard/index.js'))
}
