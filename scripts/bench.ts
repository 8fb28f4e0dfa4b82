// `npm run bench [scenario...]`: performance is measured here, never asserted in tests.
// Each scenario lives in scripts/bench/<name>.ts and exports `run(options)`; results print as JSON
// lines and a markdown table. With no argument every scenario runs.
import { readdirSync } from 'node:fs'
import { join } from 'node:path'

interface Scenario {
  description: string
  run(args: string[]): Promise<Record<string, unknown>>
}

const dir = join(import.meta.dirname, 'bench')
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && !f.startsWith('_'))
  .map((f) => f.slice(0, -3))
  .sort()

const [first, ...rest] = process.argv.slice(2)
if (first === '--help' || first === '-h') {
  process.stdout.write(`usage: npm run bench [scenario] [-- options]\nscenarios: ${available.join(', ')}\n`)
  process.exit(0)
}
if (first && !available.includes(first)) {
  process.stderr.write(`unknown scenario "${first}"; scenarios: ${available.join(', ')}\n`)
  process.exit(2)
}
for (const name of first ? [first] : available) {
  const scenario = (await import(join(dir, `${name}.ts`))) as Scenario
  process.stderr.write(`[bench] ${name}: ${scenario.description}\n`)
  const result = await scenario.run(first ? rest : [])
  process.stdout.write(`${JSON.stringify({ scenario: name, ...result })}\n`)
}
