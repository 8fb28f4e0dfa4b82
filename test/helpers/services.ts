// The real services started by scripts/run-tests.ts (scripts/services.ts), read from the environment.
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

export function s3Settings(): { endpoint: string; accessKey: string; secretKey: string } {
  return {
    endpoint: required('TEST_S3_ENDPOINT'),
    accessKey: required('TEST_S3_ACCESS_KEY'),
    secretKey: required('TEST_S3_SECRET_KEY')
  }
}
