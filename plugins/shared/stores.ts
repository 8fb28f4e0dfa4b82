// What every plugin with a store shares: choosing the embedded or the MongoDB implementation,
// opening the embedded SQLite file, and initialising in the background (MongoDB may not be
// reachable when the node starts; /readyz reports the store until it is).
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import Database from 'better-sqlite3'
import type { Db } from 'mongodb'
import type { PluginContext } from '../../broker/plugin-api.js'

export type StoreChoice = 'auto' | 'embedded' | 'mongo'

/** MongoDB when `mongo.url` is set (auto) or asked for; else the embedded store in `<dataDir>/<file>`. */
export function chooseStore<S>(
  ctx: PluginContext<unknown>,
  choice: StoreChoice,
  make: { mongo: (db: Db) => S; embedded: (file: string) => S; file: string }
): S {
  if (choice === 'mongo' && !ctx.backends.mongo) throw new Error(`${ctx.name}: store is mongo but mongo.url is not set`)
  const db = choice !== 'embedded' ? ctx.backends.mongo : undefined
  return db ? make.mongo(db) : make.embedded(join(ctx.dataDir, make.file))
}

/** Opens an embedded SQLite database: WAL (readers never block the writer), durable across process crashes. */
export function openSqlite(file: string): Database.Database {
  if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true })
  const db = new Database(file)
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = NORMAL')
  cacheStatements(db)
  return db
}

/** Different SQL texts kept compiled at most (the stores have a few dozen, all constant). */
const MAX_CACHED_STATEMENTS = 500

/**
 * Makes `db.prepare` compile each SQL text once and hand out the same statement afterwards. The
 * stores prepare at each call, and compiling costs more than running: it was the top hotspot of
 * the stored-chat benchmark (10% of the broker's CPU in better-sqlite3's prepare). Safe because no
 * store changes a statement's mode (pluck, raw, expand) or iterates one while running it again.
 */
function cacheStatements(db: Database.Database): void {
  const prepare = db.prepare.bind(db)
  const cache = new Map<string, Database.Statement>()
  db.prepare = ((sql: string) => {
    let statement = cache.get(sql)
    if (!statement) {
      statement = prepare(sql)
      if (cache.size < MAX_CACHED_STATEMENTS) cache.set(sql, statement)
    }
    return statement
  }) as typeof db.prepare
}

/** The life cycle every embedded store shares: open the file, create its schema, close. */
export abstract class SqliteBacked {
  private handle: Database.Database | undefined

  constructor(
    private readonly file: string,
    private readonly schema: string
  ) {}

  protected get conn(): Database.Database {
    if (!this.handle) throw new Error(`${this.file} is not open: init() first`)
    return this.handle
  }

  async init(): Promise<void> {
    const db = openSqlite(this.file)
    db.exec(this.schema)
    this.migrate(db)
    this.handle = db
  }

  /** Brings a file written by an older version up to the schema (CREATE IF NOT EXISTS adds no columns). */
  protected migrate(_db: Database.Database): void {}

  /** Adds a column that files from older versions lack. */
  protected static addColumnIfMissing(db: Database.Database, table: string, column: string, definition: string): void {
    const columns = db.prepare<[], { name: string }>(`SELECT name FROM pragma_table_info('${table}')`).all()
    if (!columns.some((c) => c.name === column)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${definition}`)
  }

  async close(): Promise<void> {
    this.handle?.close()
    this.handle = undefined
  }
}

/**
 * Starts `store.init()` now and returns an accessor that resolves once it succeeded; a failed
 * init is retried by the next caller. The store is also a readiness check of the plugin.
 */
export function initInBackground<S extends { init(): Promise<void> }>(
  ctx: PluginContext<unknown>,
  store: S,
  name = 'store'
): () => Promise<S> {
  let ready: Promise<S> | undefined
  const initialised = (): Promise<S> => {
    ready ??= store.init().then(
      () => store,
      (err: unknown) => {
        ready = undefined
        throw err
      }
    )
    return ready
  }
  initialised().catch((err: unknown) => ctx.log.warn({ err }, 'store not ready yet; retried on use'))
  ctx.readiness(name, async () => {
    await initialised()
  })
  return initialised
}

/**
 * Runs an upsert again when it lost a race to create the same document (E11000): two upserts of
 * one _id at once may both try to insert. MongoDB retries some of these itself; FerretDB never does.
 */
export async function upsertRetrying<T>(upsert: () => Promise<T>, attempts = 5): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await upsert()
    } catch (err) {
      const code = (err as { code?: number }).code ?? (err as { writeErrors?: Array<{ code?: number }> }).writeErrors?.[0]?.code
      if (code !== 11000 || i >= attempts) throw err
    }
  }
}
