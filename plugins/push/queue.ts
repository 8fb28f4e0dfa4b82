// The durable queue of pending pushes: one job per (device, conversation), due at a time; messages
// that arrive while a job waits coalesce into it (count, newest message). Any node's worker claims
// due jobs; a claim is invisible to the others until its visibility runs out, so a node that dies
// mid-send leaves its jobs to the others (they are returned to the queue by the next claim).
// A device that connects cancels its pending jobs and leaves a mark: a message stored before that
// mark is never pushed to it (it has the message, or will sync it).
//
// Redis (a cluster): sorted set `due` (job key by due time) + a hash per job; `claim` renames the
// job's hash to a claim hash and records it in the sorted set `inflight` (by visibility deadline),
// in one Lua script whose ZREM decides which node owns the job. Embedded (one node): SQLite, one row
// per job (a partial unique index keeps one pending row per key), claims in transactions.
// Both are held to one contract (test/queue-contract.test.ts).
import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import { SqliteBacked } from '../shared/stores.js'
import type { ClaimedJob, JobMessage, PushJob } from './types.js'

export interface NewJob {
  user: string
  device: string
  conversation: string
  message: JobMessage
}

export interface PushQueue {
  init(): Promise<void>
  /**
   * Adds a message to the device's pending job for its conversation (creating it, due at `dueAt`).
   * False when it was not added: the device connected after the message was stored, or the job has
   * that message already.
   */
  enqueue(job: NewJob, dueAt: number): Promise<boolean>
  /** The device connected at `now`: its pending jobs are dropped and older messages will not be queued. */
  cancelDevice(user: string, device: string, now: number): Promise<number>
  /** When the device last connected (within the mark's lifetime), or undefined. */
  connectedAt(user: string, device: string): Promise<number | undefined>
  /** Claims up to `limit` due jobs for `visibilityMs`, first returning claims whose visibility ran out. */
  claim(now: number, limit: number, visibilityMs: number): Promise<ClaimedJob[]>
  /** Keeps a claim invisible longer (a slow send); false when the claim was lost. */
  extend(claim: string, visibleUntil: number): Promise<boolean>
  /** Done with a claim (sent, or given up); false when the claim had been lost already. */
  ack(claim: string): Promise<boolean>
  /** Puts a claimed job back, due at `dueAt`, merging with a pending job of the same key. */
  retry(claim: string, dueAt: number, attempts: number): Promise<boolean>
  /** Jobs waiting and jobs claimed (metrics). */
  depth(): Promise<{ pending: number; claimed: number }>
  close(): Promise<void>
}

const jobKeyOf = (user: string, device: string, conversation: string) => `${user}:${device}|${conversation}`
const deviceKeyOf = (user: string, device: string) => `${user}:${device}`

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

// KEYS: job, due, mark, device set. ARGV: jobKey, dueAt, msgId, msgTs, user, device, conversation, lastJson, seq
const ENQUEUE = `
local mark = redis.call('GET', KEYS[3])
if mark and tonumber(mark) >= tonumber(ARGV[4]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'lastId') == ARGV[3] then return 0 end
  redis.call('HINCRBY', KEYS[1], 'count', 1)
  if tonumber(ARGV[9]) > tonumber(redis.call('HGET', KEYS[1], 'lastSeq') or '0') then
    redis.call('HSET', KEYS[1], 'lastId', ARGV[3], 'lastSeq', ARGV[9], 'last', ARGV[8])
  end
else
  redis.call('HSET', KEYS[1], 'user', ARGV[5], 'device', ARGV[6], 'conversation', ARGV[7], 'count', 1,
    'firstTs', ARGV[4], 'attempts', 0, 'lastId', ARGV[3], 'lastSeq', ARGV[9], 'last', ARGV[8])
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
`

// KEYS: due, job, claim, inflight, device set. ARGV: jobKey, visibleUntil, claimId
const CLAIM = `
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('SREM', KEYS[5], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
redis.call('RENAME', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[3], 'jobKey', ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
return redis.call('HGETALL', KEYS[3])
`

// KEYS: inflight, claim, job, due, device set. ARGV: claimId, jobKey, dueAt, attempts ('' = one more), expiredBy ('' = any)
// Returns a claim to the queue (a retry, or a claim whose visibility ran out), merging it into a
// newer pending job of the same key when there is one.
const RETURN = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
if ARGV[5] ~= '' and tonumber(score) > tonumber(ARGV[5]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local attempts = ARGV[4]
if attempts == '' then attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0') + 1 end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'count', redis.call('HGET', KEYS[2], 'count'))
  local first = redis.call('HGET', KEYS[2], 'firstTs')
  if tonumber(first) < tonumber(redis.call('HGET', KEYS[3], 'firstTs')) then redis.call('HSET', KEYS[3], 'firstTs', first) end
  redis.call('HSET', KEYS[3], 'attempts', attempts)
  redis.call('DEL', KEYS[2])
  local s = redis.call('ZSCORE', KEYS[4], ARGV[2])
  if (not s) or tonumber(s) < tonumber(ARGV[3]) then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2]) end
else
  redis.call('HDEL', KEYS[2], 'jobKey')
  redis.call('HSET', KEYS[2], 'attempts', attempts)
  redis.call('RENAME', KEYS[2], KEYS[3])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
end
redis.call('SADD', KEYS[5], ARGV[2])
return 1
`

// KEYS: inflight, claim. ARGV: claimId
const ACK = `
local owned = redis.call('ZREM', KEYS[1], ARGV[1])
if owned == 1 then redis.call('DEL', KEYS[2]) end
return owned
`

// KEYS: inflight. ARGV: claimId, visibleUntil
const EXTEND = `
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
  return 1
end
return 0
`

// KEYS: due, job, device set. ARGV: jobKey
const CANCEL_JOB = `
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) return 1 end
redis.call('DEL', KEYS[2])
return 0
`

function toJob(fields: string[]): PushJob & { jobKey: string } {
  const h: Record<string, string> = {}
  for (let i = 0; i + 1 < fields.length; i += 2) h[fields[i]!] = fields[i + 1]!
  return {
    jobKey: h.jobKey ?? '',
    user: h.user ?? '',
    device: h.device ?? '',
    conversation: h.conversation ?? '',
    count: Number(h.count ?? 1),
    firstTs: Number(h.firstTs ?? 0),
    attempts: Number(h.attempts ?? 0),
    last: JSON.parse(h.last ?? '{}') as JobMessage
  }
}

export class RedisPushQueue implements PushQueue {
  private readonly k: (name: string) => string

  /** Lua scripts name every key they touch (KEYS); in a Redis Cluster they would need one hash tag. */
  constructor(
    private readonly redis: Redis,
    prefix: string,
    private readonly markTtlMs: number
  ) {
    this.k = (name) => `${prefix}push:${name}`
  }

  async init(): Promise<void> {}

  async enqueue(job: NewJob, dueAt: number): Promise<boolean> {
    const jk = jobKeyOf(job.user, job.device, job.conversation)
    const dk = deviceKeyOf(job.user, job.device)
    const m = job.message
    const added = await this.redis.eval(
      ENQUEUE,
      4,
      this.k(`job:${jk}`),
      this.k('due'),
      this.k(`mark:${dk}`),
      this.k(`dev:${dk}`),
      jk,
      dueAt,
      m.id,
      m.ts,
      job.user,
      job.device,
      job.conversation,
      JSON.stringify(m),
      m.seq
    )
    return Number(added) === 1
  }

  async cancelDevice(user: string, device: string, now: number): Promise<number> {
    const dk = deviceKeyOf(user, device)
    await this.redis.set(this.k(`mark:${dk}`), now, 'PX', this.markTtlMs)
    let cancelled = 0
    for (const jk of await this.redis.smembers(this.k(`dev:${dk}`))) {
      cancelled += Number(await this.redis.eval(CANCEL_JOB, 3, this.k('due'), this.k(`job:${jk}`), this.k(`dev:${dk}`), jk))
    }
    return cancelled
  }

  async connectedAt(user: string, device: string): Promise<number | undefined> {
    const v = await this.redis.get(this.k(`mark:${deviceKeyOf(user, device)}`))
    return v === null ? undefined : Number(v)
  }

  private async returnClaim(claim: string, dueAt: number, attempts: number | '', expiredBy: number | ''): Promise<boolean> {
    const jk = await this.redis.hget(this.k(`claim:${claim}`), 'jobKey')
    if (jk === null) {
      // Nothing left to return (acked meanwhile, or an orphan): forget the claim.
      if (expiredBy !== '') await this.redis.zrem(this.k('inflight'), claim)
      return false
    }
    const [user = '', rest = ''] = jk.split('|')[0]!.split(':')
    const done = await this.redis.eval(
      RETURN,
      5,
      this.k('inflight'),
      this.k(`claim:${claim}`),
      this.k(`job:${jk}`),
      this.k('due'),
      this.k(`dev:${deviceKeyOf(user, rest)}`),
      claim,
      jk,
      dueAt,
      attempts,
      expiredBy
    )
    return Number(done) === 1
  }

  async claim(now: number, limit: number, visibilityMs: number): Promise<ClaimedJob[]> {
    for (const claim of await this.redis.zrangebyscore(this.k('inflight'), '-inf', now, 'LIMIT', 0, limit)) {
      await this.returnClaim(claim, now, '', now)
    }
    const out: ClaimedJob[] = []
    for (const jk of await this.redis.zrangebyscore(this.k('due'), '-inf', now, 'LIMIT', 0, limit)) {
      const claim = randomBytes(8).toString('hex')
      const [user = '', device = ''] = jk.split('|')[0]!.split(':')
      const fields = (await this.redis.eval(
        CLAIM,
        5,
        this.k('due'),
        this.k(`job:${jk}`),
        this.k(`claim:${claim}`),
        this.k('inflight'),
        this.k(`dev:${deviceKeyOf(user, device)}`),
        jk,
        now + visibilityMs,
        claim
      )) as string[] | null
      if (!fields) continue // another node took it
      const { jobKey: _jk, ...job } = toJob(fields)
      out.push({ ...job, claim })
    }
    return out
  }

  async extend(claim: string, visibleUntil: number): Promise<boolean> {
    return Number(await this.redis.eval(EXTEND, 1, this.k('inflight'), claim, visibleUntil)) === 1
  }

  async ack(claim: string): Promise<boolean> {
    return Number(await this.redis.eval(ACK, 2, this.k('inflight'), this.k(`claim:${claim}`), claim)) === 1
  }

  async retry(claim: string, dueAt: number, attempts: number): Promise<boolean> {
    return this.returnClaim(claim, dueAt, attempts, '')
  }

  async depth(): Promise<{ pending: number; claimed: number }> {
    const [pending, claimed] = await Promise.all([this.redis.zcard(this.k('due')), this.redis.zcard(this.k('inflight'))])
    return { pending, claimed }
  }

  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------------------------
// Embedded (SQLite, one node)
// ---------------------------------------------------------------------------------------------

interface JobRow {
  id: number
  job_key: string
  user_id: string
  device_id: string
  conversation: string
  count: number
  first_ts: number
  attempts: number
  last_seq: number
  last: string
  due: number
  claim: string | null
  visible_until: number | null
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS push_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_key TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL, conversation TEXT NOT NULL,
    count INTEGER NOT NULL, first_ts INTEGER NOT NULL, attempts INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, last TEXT NOT NULL,
    due INTEGER NOT NULL, claim TEXT, visible_until INTEGER
  );
  CREATE UNIQUE INDEX IF NOT EXISTS push_jobs_pending ON push_jobs (job_key) WHERE claim IS NULL;
  CREATE INDEX IF NOT EXISTS push_jobs_due ON push_jobs (due) WHERE claim IS NULL;
  CREATE INDEX IF NOT EXISTS push_jobs_visible ON push_jobs (visible_until) WHERE claim IS NOT NULL;
  CREATE UNIQUE INDEX IF NOT EXISTS push_jobs_claim ON push_jobs (claim) WHERE claim IS NOT NULL;
  CREATE INDEX IF NOT EXISTS push_jobs_device ON push_jobs (user_id, device_id);
  CREATE TABLE IF NOT EXISTS push_marks (device_key TEXT PRIMARY KEY, ts INTEGER NOT NULL);
  -- Every connect prunes expired marks (cancelDevice): without this index that is a scan of every
  -- device connected within markTtlMs, the top cost of a connect storm.
  CREATE INDEX IF NOT EXISTS push_marks_ts ON push_marks (ts);
`

const fromJobRow = (r: JobRow): PushJob => ({
  user: r.user_id,
  device: r.device_id,
  conversation: r.conversation,
  count: r.count,
  firstTs: r.first_ts,
  attempts: r.attempts,
  last: JSON.parse(r.last) as JobMessage
})

export class SqlitePushQueue extends SqliteBacked implements PushQueue {
  constructor(
    file: string,
    private readonly markTtlMs: number
  ) {
    super(file, SCHEMA)
  }

  async enqueue(job: NewJob, dueAt: number): Promise<boolean> {
    const db = this.conn
    const jk = jobKeyOf(job.user, job.device, job.conversation)
    const m = job.message
    return db.transaction((): boolean => {
      const mark = db.prepare<[string, number], { ts: number }>('SELECT ts FROM push_marks WHERE device_key = ? AND ts > ?').get(deviceKeyOf(job.user, job.device), Date.now() - this.markTtlMs)
      if (mark && mark.ts >= m.ts) return false
      const pending = db.prepare<[string], JobRow>('SELECT * FROM push_jobs WHERE job_key = ? AND claim IS NULL').get(jk)
      if (pending) {
        if ((JSON.parse(pending.last) as JobMessage).id === m.id) return false
        if (m.seq > pending.last_seq) db.prepare('UPDATE push_jobs SET count = count + 1, last_seq = ?, last = ? WHERE id = ?').run(m.seq, JSON.stringify(m), pending.id)
        else db.prepare('UPDATE push_jobs SET count = count + 1 WHERE id = ?').run(pending.id)
        return true
      }
      db.prepare(
        `INSERT INTO push_jobs (job_key, user_id, device_id, conversation, count, first_ts, attempts, last_seq, last, due)
         VALUES (?, ?, ?, ?, 1, ?, 0, ?, ?, ?)`
      ).run(jk, job.user, job.device, job.conversation, m.ts, m.seq, JSON.stringify(m), dueAt)
      return true
    })()
  }

  async cancelDevice(user: string, device: string, now: number): Promise<number> {
    const db = this.conn
    return db.transaction((): number => {
      db.prepare('INSERT INTO push_marks (device_key, ts) VALUES (?, ?) ON CONFLICT (device_key) DO UPDATE SET ts = MAX(ts, excluded.ts)').run(deviceKeyOf(user, device), now)
      db.prepare('DELETE FROM push_marks WHERE ts < ?').run(now - this.markTtlMs)
      return db.prepare('DELETE FROM push_jobs WHERE user_id = ? AND device_id = ? AND claim IS NULL').run(user, device).changes
    })()
  }

  async connectedAt(user: string, device: string): Promise<number | undefined> {
    return this.conn.prepare<[string, number], { ts: number }>('SELECT ts FROM push_marks WHERE device_key = ? AND ts > ?').get(deviceKeyOf(user, device), Date.now() - this.markTtlMs)?.ts
  }

  /** Returns a claimed row to the queue, merging it into a pending row of the same key. */
  private returnRow(row: JobRow, dueAt: number, attempts: number): void {
    const db = this.conn
    const pending = db.prepare<[string], JobRow>('SELECT * FROM push_jobs WHERE job_key = ? AND claim IS NULL').get(row.job_key)
    if (pending) {
      db.prepare('UPDATE push_jobs SET count = count + ?, first_ts = MIN(first_ts, ?), attempts = ?, due = MAX(due, ?) WHERE id = ?').run(row.count, row.first_ts, attempts, dueAt, pending.id)
      db.prepare('DELETE FROM push_jobs WHERE id = ?').run(row.id)
    } else {
      db.prepare('UPDATE push_jobs SET claim = NULL, visible_until = NULL, due = ?, attempts = ? WHERE id = ?').run(dueAt, attempts, row.id)
    }
  }

  async claim(now: number, limit: number, visibilityMs: number): Promise<ClaimedJob[]> {
    const db = this.conn
    return db.transaction((): ClaimedJob[] => {
      for (const row of db.prepare<[number, number], JobRow>('SELECT * FROM push_jobs WHERE claim IS NOT NULL AND visible_until <= ? LIMIT ?').all(now, limit)) {
        this.returnRow(row, now, row.attempts + 1)
      }
      const rows = db.prepare<[number, number], JobRow>('SELECT * FROM push_jobs WHERE claim IS NULL AND due <= ? ORDER BY due LIMIT ?').all(now, limit)
      const take = db.prepare('UPDATE push_jobs SET claim = ?, visible_until = ? WHERE id = ? AND claim IS NULL')
      return rows.map((row) => {
        const claim = `${row.id}-${randomBytes(6).toString('hex')}`
        take.run(claim, now + visibilityMs, row.id)
        return { ...fromJobRow(row), claim }
      })
    })()
  }

  async extend(claim: string, visibleUntil: number): Promise<boolean> {
    return this.conn.prepare('UPDATE push_jobs SET visible_until = ? WHERE claim = ?').run(visibleUntil, claim).changes > 0
  }

  async ack(claim: string): Promise<boolean> {
    return this.conn.prepare('DELETE FROM push_jobs WHERE claim = ?').run(claim).changes > 0
  }

  async retry(claim: string, dueAt: number, attempts: number): Promise<boolean> {
    const db = this.conn
    return db.transaction((): boolean => {
      const row = db.prepare<[string], JobRow>('SELECT * FROM push_jobs WHERE claim = ?').get(claim)
      if (!row) return false
      this.returnRow(row, dueAt, attempts)
      return true
    })()
  }

  async depth(): Promise<{ pending: number; claimed: number }> {
    const row = this.conn
      .prepare<[], { pending: number | null; claimed: number | null }>(
        'SELECT SUM(claim IS NULL) AS pending, SUM(claim IS NOT NULL) AS claimed FROM push_jobs'
      )
      .get()
    return { pending: row?.pending ?? 0, claimed: row?.claimed ?? 0 }
  }
}
