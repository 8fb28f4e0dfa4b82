// Reads the effective configuration: defaults < config file < environment.
// Every problem is reported at once, with its path, where it came from and the expected form.
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { ConfigSchema, CONVENTIONAL_ENV, type Config } from '../schemas/config.js'

export interface ConfigProblem {
  /** Dotted path in the configuration, e.g. listeners.tcp.port */
  path: string
  /** Where the offending value came from: a file, an environment variable, or the defaults. */
  source: string
  message: string
}

export type ConfigResult = { ok: true; config: Config } | { ok: false; problems: ConfigProblem[] }

// The config file's location and the admin CLI's own variables (docs/operations.md) are not settings.
const NOT_SETTINGS = new Set(['PARLEY_CONFIG', 'PARLEY_ADMIN_KEY', 'PARLEY_ADMIN_URL', 'PARLEY_ADMIN_BOOTSTRAP_SECRET'])

type Tree = Record<string, unknown>

function setPath(tree: Tree, path: readonly string[], value: unknown): void {
  let node = tree
  path.slice(0, -1).forEach((key) => {
    const next = node[key]
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {}
    node = node[key] as Tree
  })
  node[path[path.length - 1]!] = value
}

/** PARLEY_LISTENERS__TCP__PORT -> ['listeners', 'tcp', 'port']; HEARTBEAT_INTERVAL_MS -> heartbeatIntervalMs */
export function envKeyToPath(key: string): string[] {
  return key
    .slice('PARLEY_'.length)
    .split('__')
    .map((segment) => segment.toLowerCase().replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase()))
}

/** The part of the configuration set by environment variables, and which variable set each path. */
export function configFromEnv(env: NodeJS.ProcessEnv): { tree: Tree; sources: Map<string, string> } {
  const tree: Tree = {}
  const sources = new Map<string, string>()
  for (const [key, path] of Object.entries(CONVENTIONAL_ENV)) {
    const value = env[key]
    if (value === undefined || value === '') continue
    setPath(tree, path, value)
    sources.set(path.join('.'), `env ${key}`)
  }
  for (const [key, value] of Object.entries(env)) {
    if (!key.startsWith('PARLEY_') || NOT_SETTINGS.has(key) || value === undefined) continue
    const path = envKeyToPath(key)
    if (path.some((p) => p === '')) {
      sources.set(key, `env ${key}`)
      setPath(tree, [key], value) // rejected by the schema as an unknown key, with its name
      continue
    }
    // Lists come as comma-separated values.
    const parsed = path.join('.') === 'plugins' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value
    setPath(tree, path, parsed)
    sources.set(path.join('.'), `env ${key}`)
  }
  return { tree, sources }
}

function isTree(v: unknown): v is Tree {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Deep merge where `over` wins; arrays are replaced, not concatenated. */
export function mergeConfig(base: Tree, over: Tree): Tree {
  const out: Tree = { ...base }
  for (const [k, v] of Object.entries(over)) {
    const b = out[k]
    out[k] = isTree(b) && isTree(v) ? mergeConfig(b, v) : v
  }
  return out
}

function sourceOf(path: string, sources: Map<string, string>, fileSource: string | undefined): string {
  // The most specific recorded source that covers this path.
  for (let p = path; p; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    const s = sources.get(p)
    if (s) return s
  }
  return fileSource ?? 'defaults'
}

function problemsFromZod(
  error: z.ZodError,
  sources: Map<string, string>,
  fileSource: string | undefined
): ConfigProblem[] {
  return error.issues.flatMap((issue) => {
    const base = issue.path.map(String)
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => {
        const path = [...base, key].join('.')
        return { path, source: sourceOf(path, sources, fileSource), message: 'unknown setting' }
      })
    }
    const path = base.join('.') || '(root)'
    return [{ path, source: sourceOf(path, sources, fileSource), message: issue.message }]
  })
}

/** Reads a YAML or JSON config file into a plain object. */
export function readConfigFile(file: string): { tree?: Tree; problem?: ConfigProblem } {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    return { problem: { path: '(file)', source: file, message: `cannot read: ${(err as Error).message}` } }
  }
  try {
    const parsed: unknown = parseYaml(text)
    if (parsed === null || parsed === undefined) return { tree: {} }
    if (!isTree(parsed)) return { problem: { path: '(root)', source: file, message: 'expected a mapping of settings' } }
    return { tree: parsed }
  } catch (err) {
    return { problem: { path: '(file)', source: file, message: `not valid YAML/JSON: ${(err as Error).message}` } }
  }
}

export function loadConfig(options: { file?: string; env?: NodeJS.ProcessEnv } = {}): ConfigResult {
  const env = options.env ?? process.env
  const file = options.file ?? (env.PARLEY_CONFIG || undefined)
  let fileTree: Tree = {}
  if (file) {
    const { tree, problem } = readConfigFile(file)
    if (problem) return { ok: false, problems: [problem] }
    fileTree = tree ?? {}
  }
  const fromEnv = configFromEnv(env)
  const merged = mergeConfig(fileTree, fromEnv.tree)
  // PARLEY_PLUGINS chooses which plugins run; a plugin the file also configures keeps its section.
  const envPlugins: unknown = fromEnv.tree.plugins
  const filePlugins: unknown = fileTree.plugins
  if (Array.isArray(envPlugins) && Array.isArray(filePlugins)) {
    const fileEntries = new Map<unknown, unknown>(filePlugins.filter(isTree).map((entry) => [entry.use, entry]))
    merged.plugins = envPlugins.map((name: unknown) => fileEntries.get(name) ?? name)
  }
  const result = ConfigSchema.safeParse(merged)
  if (result.success) return { ok: true, config: result.data }
  return { ok: false, problems: problemsFromZod(result.error, fromEnv.sources, file ? `file ${file}` : undefined) }
}

export function formatProblems(problems: ConfigProblem[]): string {
  const lines = problems.map((p) => `  - ${p.path} (${p.source}): ${p.message}`)
  return `Invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${lines.join('\n')}`
}

/** Dotted paths of the settings marked secret in the schema. */
export function secretPaths(): string[] {
  const json = z.toJSONSchema(ConfigSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchemaNode
  const out: string[] = []
  walkSchema(json, [], (path, node) => {
    if (node.secret === true) out.push(path.join('.'))
  })
  return out
}

export interface JsonSchemaNode {
  type?: string | string[]
  properties?: Record<string, JsonSchemaNode>
  anyOf?: JsonSchemaNode[]
  description?: string
  secret?: boolean
  [key: string]: unknown
}

/** Visits every leaf setting (a node without properties) of a JSON Schema object tree. */
export function walkSchema(
  node: JsonSchemaNode,
  path: string[],
  visit: (path: string[], node: JsonSchemaNode) => void
): void {
  if (node.properties) {
    for (const [k, child] of Object.entries(node.properties)) walkSchema(child, [...path, k], visit)
    return
  }
  visit(path, node)
}

/** Hides a secret: URLs keep scheme and host so operators can still tell where they point. */
export function redactValue(value: unknown): unknown {
  if (typeof value !== 'string') return value === undefined ? undefined : '[redacted]'
  try {
    const url = new URL(value)
    if (url.protocol && url.host) {
      if (url.username) url.username = '***'
      if (url.password) url.password = '***'
      if (url.search) url.search = '?***'
      return url.toString()
    }
  } catch {
    // not a URL
  }
  return '[redacted]'
}

/** A copy of the configuration with every secret replaced, safe to print or log. */
export function redactConfig(config: Config): Config {
  const copy = structuredClone(config) as unknown as Tree
  for (const path of secretPaths()) {
    const keys = path.split('.')
    let node: unknown = copy
    for (const k of keys.slice(0, -1)) node = isTree(node) ? node[k] : undefined
    const last = keys[keys.length - 1]!
    if (isTree(node) && node[last] !== undefined) node[last] = redactValue(node[last])
  }
  // Plugin sections are free-form: hide keys whose names say they are secret.
  const plugins = copy.plugins
  if (Array.isArray(plugins)) {
    for (const entry of plugins) if (isTree(entry) && isTree(entry.config)) redactByName(entry.config)
  }
  return copy as unknown as Config
}

const SECRET_NAME = /(secret|password|passphrase|token|private.?key|api.?key|credential)/i

function redactByName(tree: Tree): void {
  for (const [k, v] of Object.entries(tree)) {
    if (isTree(v)) redactByName(v)
    else if (SECRET_NAME.test(k)) tree[k] = redactValue(v)
  }
}
