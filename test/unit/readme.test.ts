import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { z } from 'zod'
import { envKeyToPath, loadConfig, walkSchema, type JsonSchemaNode } from '../../broker/config.js'
import { ConfigSchema } from '../../schemas/config.js'
import { configTable, envName, renderReadme } from '../../scripts/config-docs.js'

const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8')

function leafPaths(): string[][] {
  const json = z.toJSONSchema(ConfigSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchemaNode
  const paths: string[][] = []
  walkSchema(json, [], (path) => paths.push(path))
  return paths
}

describe('README', () => {
  it('has the configuration table the schema generates (run `npm run docs:config` after changing the schema)', () => {
    assert.equal(renderReadme(readme), readme)
  })

  it('documents every setting with an environment variable that really sets it', () => {
    const table = configTable()
    for (const path of leafPaths()) {
      const env = envName(path)
      assert.ok(table.includes(`| \`${path.join('.')}\` | \`${env}\``), `${path.join('.')} is in the table`)
      assert.deepEqual(envKeyToPath(env), path, `${env} maps back to ${path.join('.')}`)
    }
    // And the variables work end to end, not only on paper.
    const result = loadConfig({ env: { PARLEY_MQTT__MAX_CLIENT_ID_LENGTH: '64', PARLEY_LISTENERS__WS__PATH: '/chat' } })
    assert.ok(result.ok)
    assert.equal(result.config.mqtt.maxClientIdLength, 64)
    assert.equal(result.config.listeners.ws.path, '/chat')
  })

  it('keeps the two-command quick start and the test command CI runs', () => {
    assert.match(readme, /^npm start {2,}#/m)
    assert.match(readme, /^npm test {2,}#/m)
    const ci = readFileSync(join(import.meta.dirname, '..', '..', '.ci', 'run'), 'utf8')
    assert.match(ci, /^npm ci\b/m)
    assert.match(ci, /^npm test\b/m)
  })
})
