// Client message ids. The server deduplicates sends by (user, cmid) across all of the user's
// devices and conversations (docs/protocol.md "Idempotent send"), so a cmid must be unique per
// user for good: a reused one silently "succeeds" with the old message. 128 random bits make a
// collision between devices negligible without any coordination.
//
// crypto.getRandomValues is the one source of strong randomness that browsers, Node 20
// (globalThis.crypto) and React Native (with a polyfill such as react-native-get-random-values)
// share. Math.random is not acceptable: its state is small and, on some engines, shared and
// predictable, which would make cmids collide across devices.

interface RandomSource {
  getRandomValues<T extends ArrayBufferView | null>(array: T): T
}

/** A fresh cmid: 32 lowercase hex digits (an `Id`: 1-64 characters of A-Z a-z 0-9 _ -). */
export function newCmid(): string {
  const source = (globalThis as { crypto?: RandomSource }).crypto
  if (!source || typeof source.getRandomValues !== 'function') {
    throw new Error('crypto.getRandomValues is not available: on React Native, install a polyfill (e.g. react-native-get-random-values)')
  }
  const bytes = source.getRandomValues(new Uint8Array(16))
  let out = ''
  for (const b of bytes) out += b.toString(16).padStart(2, '0')
  return out
}
