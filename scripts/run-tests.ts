// `npm test` after lint and type-check: starts the real services (scripts/services.ts),
// then runs every *.test.ts under test/, plugins/ and sdk/ with Node's test runner.
//   --unit   only the tests that need no services (test/unit, plugins' and the SDK's unit tests)
import { spawn } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { join, relative } from 'node:path'
import { startServices, type RunningServices } from './services.js'

const root = join(import.meta.dirname, '..')
const unitOnly = process.argv.includes('--unit')

function testFiles(dir: string): string[] {
  return readdirSync(join(root, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.test.ts'))
    .map((e) => relative(root, join(e.parentPath, e.name)))
    .filter((f) => !f.includes('node_modules'))
    .sort()
}

const all = [...testFiles('test'), ...testFiles('plugins'), ...(existsSync(join(root, 'sdk')) ? testFiles('sdk') : [])]
const files = unitOnly ? all.filter((f) => f.startsWith('test/unit/') || f.startsWith('sdk/test/unit/') || /plugins\/[^/]+\/test\/unit\//.test(f)) : all

let services: RunningServices | undefined
if (!unitOnly) {
  const started = Date.now()
  services = await startServices()
  for (const line of services.report) process.stderr.write(`[services] ${line}\n`)
  process.stderr.write(`[services] ready in ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
}

// The fault tests (test/fault/) kill and restart nodes, Redis and FerretDB, and load the machine:
// they run after the rest, one file at a time, so none waits for another inside its time bound.
const isFault = (f: string) => f.startsWith('test/fault/')
const phases = [
  { files: files.filter((f) => !isFault(f)), concurrency: 2, timeoutMs: 180_000 },
  { files: files.filter(isFault), concurrency: 1, timeoutMs: 300_000 }
].filter((p) => p.files.length)

let code = 0
for (const phase of phases) {
  const phaseCode = await new Promise<number>((resolve) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', '--test', `--test-concurrency=${phase.concurrency}`, `--test-timeout=${phase.timeoutMs}`, ...phase.files],
      { cwd: root, stdio: 'inherit', env: { ...process.env, ...services?.env } }
    )
    child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)))
  })
  if (phaseCode !== 0) code = phaseCode
}

await services?.stop()
process.exit(code)
