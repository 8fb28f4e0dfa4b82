// `npm run bench [scenario...]`: performance is measured here, never asserted in tests.
// Each scenario lives in scripts/bench/<name>.ts and exports `run(options)`; results print as JSON
// lines on stdout and, for scenarios that export `markdown(result)`, a markdown table on stderr.
// With no argument every scenario runs (in `order`, then by name). `--write-docs` (anywhere in the
// arguments) also writes docs/benchmarks.md with the machine information and those tables.
import { readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { benchmarksDoc, machineInfo } from './bench/_relay.js'

interface Scenario {
  description: string
  order?: number
  run(args: string[]): Promise<Record<string, unknown>>
  markdown?(result: Record<string, unknown>): string
}

const dir = join(import.meta.dirname, 'bench')
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .sort()

const argv = process.argv.slice(2)
const writeDocs = argv.includes('--write-docs')
const [first, ...rest] = argv.filter((a) => a !== '--write-docs')
if (first === '--help' || first === '-h') {
  process.stdout.write(`usage: npm run bench [scenario[,scenario...]] [-- options] [--write-docs]\nscenarios: ${available.join(', ')}\n`)
  process.exit(0)
}
// A comma-separated list runs several scenarios (e.g. relay-p2p,relay-fanout,relay-latency).
const chosen = first ? first.split(',') : available
const unknown = chosen.filter((name) => !available.includes(name))
if (unknown.length) {
  process.stderr.write(`unknown scenario "${unknown.join(', ')}"; scenarios: ${available.join(', ')}\n`)
  process.exit(2)
}
const scenarios: Array<[string, Scenario]> = []
for (const name of chosen) scenarios.push([name, (await import(join(dir, `${name}.ts`))) as Scenario])
// Stable sort: scenarios that reuse another's results (relay-latency uses relay-p2p's maxima) run after it.
scenarios.sort((a, b) => (a[1].order ?? 0) - (b[1].order ?? 0))

const info = machineInfo()
const sections: Array<{ name: string; markdown: string }> = []
for (const [name, scenario] of scenarios) {
  process.stderr.write(`[bench] ${name}: ${scenario.description}\n`)
  const result = await scenario.run(first ? rest : [])
  process.stdout.write(`${JSON.stringify({ scenario: name, ...result })}\n`)
  if (scenario.markdown) {
    const markdown = scenario.markdown(result)
    sections.push({ name, markdown })
    process.stderr.write(`\n${markdown}\n\n`)
  }
}
if (writeDocs) {
  const command = `npm run bench${first ? ` ${first}` : ''} -- --write-docs${rest.length ? ` ${rest.join(' ')}` : ''}`
  writeFileSync(join(import.meta.dirname, '..', 'docs', 'benchmarks.md'), benchmarksDoc(info, command, sections, machineInfo()))
  process.stderr.write('[bench] wrote docs/benchmarks.md\n')
}
