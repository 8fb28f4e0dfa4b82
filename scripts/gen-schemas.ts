// Writes a JSON Schema file for every payload of the protocol (schemas/protocol.ts) into
// schemas/json/, for client developers and their code generators.
//   tsx scripts/gen-schemas.ts          write the files
//   tsx scripts/gen-schemas.ts --check  exit 1 when they are stale
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { z } from 'zod'
import { PAYLOAD_SCHEMAS } from '../schemas/protocol.js'

export const JSON_DIR = join(import.meta.dirname, '..', 'schemas', 'json')

/** File name -> contents of every generated schema. */
export function renderSchemas(): Map<string, string> {
  const files = new Map<string, string>()
  for (const [name, schema] of Object.entries(PAYLOAD_SCHEMAS)) {
    // Input shape: what a sender may write (defaults make fields optional).
    const json = z.toJSONSchema(schema, { io: 'input', target: 'draft-2020-12' })
    const doc = { $id: `https://parley.invalid/schemas/${name}.schema.json`, title: name, ...json }
    files.set(`${name}.schema.json`, JSON.stringify(doc, null, 2) + '\n')
  }
  return files
}

/** Names of generated files that differ from, are missing from, or are extra in schemas/json/. */
export function staleSchemas(): string[] {
  const wanted = renderSchemas()
  let present: string[] = []
  try {
    present = readdirSync(JSON_DIR).filter((f) => f.endsWith('.schema.json'))
  } catch {
    // directory missing: everything is stale
  }
  const stale = [...wanted].filter(([f, text]) => {
    try {
      return readFileSync(join(JSON_DIR, f), 'utf8') !== text
    } catch {
      return true
    }
  }).map(([f]) => f)
  return [...stale, ...present.filter((f) => !wanted.has(f))]
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  if (process.argv.includes('--check')) {
    const stale = staleSchemas()
    if (stale.length) {
      process.stderr.write(`stale JSON Schemas (${stale.join(', ')}): run \`npm run schemas\`\n`)
      process.exit(1)
    }
  } else {
    rmSync(JSON_DIR, { recursive: true, force: true })
    mkdirSync(JSON_DIR, { recursive: true })
    for (const [f, text] of renderSchemas()) writeFileSync(join(JSON_DIR, f), text)
    process.stderr.write(`wrote ${renderSchemas().size} schemas to schemas/json/\n`)
  }
}
