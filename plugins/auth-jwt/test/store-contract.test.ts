// One contract for the ban and revocation store (SQLite and MongoDB), and the decision and cache
// that authenticate reads it through.
import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, it } from 'node:test'
import { mongoTestDb } from '../../../test/helpers/services.js'
import { AccessCache, refusalOf } from '../access.js'
import { MongoAccessStore, SqliteAccessStore, type AccessStore, type UserAccess } from '../store.js'

const cleanups: Array<() => Promise<void>> = []
after(async () => {
  for (const c of cleanups) await c()
})

const stores: Array<[string, () => Promise<AccessStore>]> = [
  ['SQLite', async () => new SqliteAccessStore(join(mkdtempSync(join(tmpdir(), 'parley-auth-store-')), 'auth.db'))],
  [
    'MongoDB',
    async () => {
      const { db, done } = await mongoTestDb('parley_auth_store')
      cleanups.push(done)
      return new MongoAccessStore(db)
    }
  ]
]

for (const [name, make] of stores) {
  describe(`auth-jwt access store contract: ${name}`, () => {
    it('bans, replaces a ban, lists bans in force, unbans once', async () => {
      const s = await make()
      await s.init()
      assert.deepEqual(await s.access('ann'), { ban: undefined, revocations: [] })
      assert.equal(await s.ban({ user: 'ann', since: 1000, reason: 'spam', by: 'ops' }), undefined, 'no ban before')
      assert.deepEqual((await s.access('ann')).ban, { user: 'ann', since: 1000, reason: 'spam', by: 'ops' })
      // Replacing: the new ban has an end and no reason; nothing of the old one is kept.
      const replaced = await s.ban({ user: 'ann', since: 2000, until: 9000, by: 'other' })
      assert.deepEqual(replaced, { user: 'ann', since: 1000, reason: 'spam', by: 'ops' })
      assert.deepEqual((await s.access('ann')).ban, { user: 'ann', since: 2000, until: 9000, by: 'other' })
      await s.ban({ user: 'bob', since: 2000, until: 3000, by: 'ops' })
      await s.ban({ user: 'cy', since: 2000, by: 'ops' })
      assert.deepEqual((await s.bans(5000)).map((b) => b.user), ['ann', 'cy'], "bob's ban is over")
      assert.equal(await s.unban('bob', 5000), undefined, 'an expired ban is not in force: nothing to lift')
      assert.deepEqual(await s.unban('ann', 5000), { user: 'ann', since: 2000, until: 9000, by: 'other' })
      assert.equal(await s.unban('ann', 5000), undefined, 'once')
      assert.equal((await s.access('ann')).ban, undefined)
      assert.equal(await s.ban({ user: 'bob', since: 6000, by: 'ops' }), undefined, 'an expired ban is not "replaced"')
      await s.close()
    })

    it('keeps the latest revocation of each device of a user', async () => {
      const s = await make()
      await s.init()
      await s.revoke({ user: 'dee', device: 'phone', revokedAt: 5000, by: 'ops' })
      await s.revoke({ user: 'dee', device: 'tablet', revokedAt: 6000, by: 'ops' })
      await s.revoke({ user: 'eve', device: 'phone', revokedAt: 7000, by: 'ops' })
      await s.revoke({ user: 'dee', device: 'phone', revokedAt: 8000, by: 'later' })
      await s.revoke({ user: 'dee', device: 'tablet', revokedAt: 1000, by: 'late-arriving' }) // never moves back
      const { revocations } = await s.access('dee')
      assert.deepEqual(
        revocations.map((r) => [r.device, r.revokedAt]),
        [
          ['phone', 8000],
          ['tablet', 6000]
        ]
      )
      assert.equal(revocations[0]!.by, 'later')
      assert.deepEqual((await s.access('eve')).revocations, [{ user: 'eve', device: 'phone', revokedAt: 7000, by: 'ops' }])
      await s.close()
    })
  })
}

describe('auth-jwt access decision', () => {
  const access = (a: Partial<UserAccess>): UserAccess => ({ revocations: [], ...a })
  it('refuses a banned user until the ban ends, on every device', () => {
    const ban = { user: 'ann', since: 0, until: 10_000, by: 'ops' }
    assert.equal(refusalOf(access({ ban }), 'phone', 1, 9_999)?.reason, 'banned')
    assert.equal(refusalOf(access({ ban }), 'phone', 1, 10_000), undefined, 'over')
    assert.equal(refusalOf(access({ ban: { ...ban, until: undefined } }), 'tablet', 1, 1e15)?.reason, 'banned', 'no end')
  })
  it('refuses tokens of a revoked device issued up to the second of the revocation, and tokens without iat', () => {
    const revocations = [{ user: 'ann', device: 'phone', revokedAt: 1_700_000_000_500, by: 'ops' }]
    assert.equal(refusalOf(access({ revocations }), 'phone', 1_699_999_999, 0)?.reason, 'revoked', 'before')
    assert.equal(refusalOf(access({ revocations }), 'phone', 1_700_000_000, 0)?.reason, 'revoked', 'the same second')
    assert.equal(refusalOf(access({ revocations }), 'phone', 1_700_000_001, 0), undefined, 'after')
    assert.equal(refusalOf(access({ revocations }), 'phone', undefined, 0)?.reason, 'revoked', 'no iat')
    assert.equal(refusalOf(access({ revocations }), 'tablet', 1, 0), undefined, 'another device')
  })
})

describe('auth-jwt access cache', () => {
  const none: UserAccess = { revocations: [] }
  const banned: UserAccess = { ban: { user: 'ann', since: 0, by: 'ops' }, revocations: [] }

  it('loads once per user within the TTL, shares a load in flight, and reloads after invalidate or the TTL', async () => {
    let now = 0
    let loads = 0
    let answer = none
    const cache = new AccessCache(async () => (loads++, answer), { ttlMs: 1000, maxUsers: 10, now: () => now })
    await Promise.all([cache.get('ann'), cache.get('ann'), cache.get('ann')])
    assert.equal(loads, 1)
    answer = banned
    assert.equal(await cache.get('ann'), none, 'cached')
    cache.invalidate('ann')
    assert.equal(await cache.get('ann'), banned, 'reloaded after invalidate')
    answer = none
    now = 999
    assert.equal(await cache.get('ann'), banned)
    now = 2000
    assert.equal(await cache.get('ann'), none, 'reloaded after the TTL')
    assert.equal(loads, 3)
  })

  it('does not keep a load that overlapped an invalidation', async () => {
    let release: (a: UserAccess) => void = () => undefined
    let loads = 0
    const cache = new AccessCache(
      () => {
        loads++
        return new Promise<UserAccess>((resolve) => (release = resolve))
      },
      { ttlMs: 60_000, maxUsers: 10 }
    )
    const first = cache.get('ann')
    cache.invalidate('ann') // a ban landed while the old state was being read
    const firstRelease = release
    const second = cache.get('ann')
    firstRelease(none)
    release(banned)
    assert.equal(await first, none, 'the overlapping load answers its own caller')
    assert.equal(await second, banned)
    assert.equal(await cache.get('ann'), banned, 'and only the later load was kept')
    assert.equal(loads, 2)
  })

  it('answers from an expired entry while the store is down, never for an invalidated user, and keeps at most maxUsers', async () => {
    let now = 0
    let down = false
    const stale: string[] = []
    const cache = new AccessCache(
      async (user) => {
        if (down) throw new Error('store down')
        return user === 'ann' ? banned : none
      },
      { ttlMs: 100, maxUsers: 2, now: () => now, onStale: (u) => stale.push(u) }
    )
    await cache.get('ann')
    await cache.get('bob')
    down = true
    now = 500
    assert.equal(await cache.get('ann'), banned, 'the last known answer')
    assert.deepEqual(stale, ['ann'])
    cache.invalidate('bob')
    await assert.rejects(cache.get('bob'), /store down/, 'fail closed for a changed user')
    down = false
    await cache.get('cy')
    await cache.get('dan')
    assert.equal(cache.size, 2)
  })
})
