// The real services started by scripts/run-tests.ts (scripts/services.ts), read from the environment.
import { randomBytes } from 'node:crypto'
import { MongoClient, type Db } from 'mongodb'
function required(name: string): string {
  const value = process.env[name]
  if (!value) {
    throw new Error(`${name} is not set: run the suite with \`npm test\`, which starts the real services (scripts/services.ts)`)
  }
  return value
}

/** The test Redis, on database `db` so that test files do not share keys. */
export function redisDb(db: number): string {
  const url = new URL(required('TEST_REDIS_URL'))
  url.pathname = `/${db}`
  return url.toString()
}

/** The test MongoDB-compatible server (FerretDB) URL. */
export function mongoUrl(): string {
  return required('TEST_MONGO_URL')
}

/** A fresh database on the test MongoDB-compatible server, and a way to drop it and disconnect. */
export async function mongoTestDb(prefix: string): Promise<{ db: Db; done: () => Promise<void> }> {
  const client = new MongoClient(mongoUrl(), { serverSelectionTimeoutMS: 5000 })
  const db = client.db(`${prefix}_${randomBytes(4).toString('hex')}`)
  return {
    db,
    done: async () => {
      await db.dropDatabase().catch(() => undefined)
      await client.close()
    }
  }
}

export function s3Settings(): { endpoint: string; accessKey: string; secretKey: string } {
  return {
    endpoint: required('TEST_S3_ENDPOINT'),
    accessKey: required('TEST_S3_ACCESS_KEY'),
    secretKey: required('TEST_S3_SECRET_KEY')
  }
}
