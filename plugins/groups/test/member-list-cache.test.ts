// The groups plugin's member-list cache: reused until its time is up or the group changes, and a
// read that raced with a change is not kept.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { MemberListCache } from '../member-list-cache.js'

describe('member-list cache', () => {
  it('reuses a list until the group is invalidated', async () => {
    const cache = new MemberListCache(60_000, 10)
    let reads = 0
    const load = async () => (reads++, ['alice', 'bob'])
    assert.deepEqual(await cache.get('g1', load), ['alice', 'bob'])
    assert.deepEqual(await cache.get('g1', load), ['alice', 'bob'])
    assert.equal(reads, 1)
    cache.invalidate('g1')
    await cache.get('g1', load)
    assert.equal(reads, 2)
  })

  it('does not keep a list read while the group changed', async () => {
    const cache = new MemberListCache(60_000, 10)
    let release!: () => void
    const slow = cache.get('g1', () => new Promise<string[]>((resolve) => (release = () => resolve(['alice']))))
    cache.invalidate('g1') // a member was added while the old list was being read
    release()
    assert.deepEqual(await slow, ['alice'], 'the caller still gets what was read')
    assert.deepEqual(await cache.get('g1', async () => ['alice', 'carol']), ['alice', 'carol'], 'the next read goes to the store')
  })

  it('keeps nothing with a time of 0, and at most maxGroups lists', async () => {
    const off = new MemberListCache(0, 10)
    let reads = 0
    await off.get('g1', async () => (reads++, []))
    await off.get('g1', async () => (reads++, []))
    assert.equal(reads, 2)
    assert.equal(off.size, 0)
    const small = new MemberListCache(60_000, 2)
    for (const g of ['a', 'b', 'c']) await small.get(g, async () => [g])
    assert.equal(small.size, 2)
    let again = 0
    await small.get('a', async () => (again++, ['a']))
    assert.equal(again, 1, 'the oldest was evicted')
  })
})
